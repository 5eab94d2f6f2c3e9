"""Long texts as windows: a model over one window of tokens, applied to each window of a document and pooled.

With `data.text.stride`, a long text becomes W overlapping windows of T tokens (data/text.py), so the token
inputs are (B, W, T). `WindowPooled` wraps the model built for one window (token inputs (B, T)): it runs the
windows a row uses (a row's used windows come first; window 0 always counts, so an empty text is one empty
window), repeating the row's other inputs (numeric columns) for each window, and pools the outputs per row -
the mean or the max of the windows' logits (or values). Training, evaluation, predict, export and serving all
call the same module, so a document is scored the same way everywhere.

The inner model's hooks (layer-wise learning rates, gradual unfreezing, partial saving, LoRA merging, padding
trim) are the wrapper's too: the loop, run directories and export see one model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

HOOKS = ("parameter_groups", "on_epoch_start", "parameter_counts", "saved_state", "load_saved_state",
         "base_reference", "padding_invariant")
WINDOWED = ("tokens", "attention_mask")


class WindowPooled(nn.Module):
    def __init__(self, inner: nn.Module, names: list[str], pool: str):
        super().__init__()
        if pool not in ("mean", "max"):
            raise ValueError(f"pool must be 'mean' or 'max', got {pool!r}")
        self.inner, self.names, self.pool = inner, list(names), pool
        self.mask_at = self.names.index("attention_mask")
        self.windowed = [n in WINDOWED for n in self.names]

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self._modules["inner"]
            if name in HOOKS:
                return getattr(inner, name)
            if name == "merged" and callable(getattr(inner, "merged", None)):
                return lambda: WindowPooled(inner.merged(), self.names, self.pool)
            raise

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        mask = inputs[self.mask_at]  # (B, W, T)
        rows, windows, steps = mask.shape
        used = (mask.sum(-1) > 0) | (torch.arange(windows, device=mask.device) == 0)  # (B, W)
        flat = [x.reshape(rows * windows, steps) if w else x.repeat_interleave(windows, dim=0)
                for x, w in zip(inputs, self.windowed)]
        if torch.compiler.is_exporting() or torch.jit.is_tracing():  # one static graph: every window runs
            out = self.inner(*flat)
        else:  # only the windows rows use
            picked = used.reshape(-1).nonzero().squeeze(1)
            part = self.inner(*(x.index_select(0, picked) for x in flat))
            out = part.new_zeros((rows * windows, *part.shape[1:])).index_copy(0, picked, part)
        out = out.reshape(rows, windows, *out.shape[1:])
        keep = used.reshape(rows, windows, *([1] * (out.dim() - 2)))
        if self.pool == "max":
            return out.masked_fill(~keep, float("-inf")).amax(dim=1)
        return torch.where(keep, out, torch.zeros_like(out)).sum(dim=1) / keep.sum(dim=1).to(out.dtype)
