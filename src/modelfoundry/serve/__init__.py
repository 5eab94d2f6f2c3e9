"""Serving stage: an HTTP inference server (FastAPI) over ONNX Runtime or PyTorch backends."""
