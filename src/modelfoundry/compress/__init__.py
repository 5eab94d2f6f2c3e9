"""Compression: quantization, pruning and distillation under an accuracy guard."""
