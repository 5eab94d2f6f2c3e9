"""Batched inference: raw model outputs -> class probabilities or (standardised) regression values."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

BATCH = 4096


@torch.inference_mode()
def predict_outputs(model: nn.Module, X: np.ndarray, task: str) -> np.ndarray:
    """(N, K) class probabilities for classification, (N,) model-scale predictions for regression."""
    model.eval()
    first = next(model.parameters(), None)  # an eager-int8 model keeps its weights packed, not as parameters
    device = first.device if first is not None else torch.device("cpu")
    x = torch.from_numpy(np.require(X, dtype=np.float32, requirements=["C"]))
    outs = [model(x[i:i + BATCH].to(device)).float().cpu() for i in range(0, len(x), BATCH)]
    out = torch.cat(outs) if outs else torch.empty(0, 1)
    if task == "classification":
        return torch.softmax(out, dim=1).numpy().astype(np.float64)
    return out.squeeze(-1).numpy().astype(np.float64)
