"""Batched inference: named model inputs -> class probabilities or (standardised) regression values."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from modelfoundry.artifacts.inputs import padding_trim, rows_of

BATCH = 4096


@torch.inference_mode()
def predict_outputs(model: nn.Module, inputs: Mapping[str, np.ndarray], task: str) -> np.ndarray:
    """(N, K) class probabilities for classification, (N,) model-scale predictions for regression.

    `inputs` are the model's named inputs in its spec's order (what the preprocessing gives); they are
    passed to the model as arguments in that order.
    """
    model.eval()
    first = next(model.parameters(), None)  # an eager-int8 model keeps its weights packed, not as parameters
    device = first.device if first is not None else torch.device("cpu")
    arrays = [torch.from_numpy(np.require(a, dtype=np.float32 if a.dtype.kind == "f" else None, requirements=["C"]))
              for a in inputs.values()]
    n = rows_of(inputs)
    trim = padding_trim(list(inputs)) if getattr(model, "padding_invariant", False) else None
    outs = []
    for i in range(0, n, BATCH):
        batch = tuple(a[i:i + BATCH] for a in arrays)
        outs.append(model(*(x.to(device) for x in (trim(batch) if trim else batch))).float().cpu())
    out = torch.cat(outs) if outs else torch.empty(0, 1)
    if task == "classification":
        return torch.softmax(out, dim=1).numpy().astype(np.float64)
    return out.squeeze(-1).numpy().astype(np.float64)
