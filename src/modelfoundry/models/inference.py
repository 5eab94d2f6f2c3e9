"""Batched inference: named model inputs -> class probabilities or (standardised) regression values."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from modelfoundry.artifacts.inputs import padding_trim, rows_of

BATCH = 4096
TOKENS = 32768  # token positions per batch for text models: attention memory grows with rows x length^2


def predict_outputs(model: nn.Module, inputs: Mapping[str, np.ndarray], task: str) -> np.ndarray:
    """(N, K) class probabilities for classification, (N,) model-scale predictions for regression.

    `inputs` are the model's named inputs in its spec's order (what the preprocessing gives); they are
    passed to the model as arguments in that order.
    """
    out = model_outputs(model, inputs)
    if task == "classification":
        return torch.softmax(out, dim=1).numpy().astype(np.float64)
    return out.squeeze(-1).numpy().astype(np.float64)


@torch.inference_mode()
def model_outputs(model: nn.Module, inputs: Mapping[str, np.ndarray]) -> torch.Tensor:
    """The model's raw outputs (logits or standardised values), (N, n_outputs) float32 on the CPU, in eval mode
    on the model's device, BATCH rows at a time. Text goes TOKENS token positions at a time; a model whose
    outputs padding does not change (`padding_invariant`) gets its rows in order of length, each batch cut to
    its longest text, and the outputs back in the rows' order.
    """
    model.eval()
    first = next(model.parameters(), None)  # an eager-int8 model keeps its weights packed, not as parameters
    device = first.device if first is not None else torch.device("cpu")
    arrays = [torch.from_numpy(np.require(a, dtype=np.float32 if a.dtype.kind == "f" else None, requirements=["C"]))
              for a in inputs.values()]
    n = rows_of(inputs)
    trim = padding_trim(list(inputs)) if getattr(model, "padding_invariant", False) else None
    mask = inputs.get("attention_mask")
    size = BATCH if mask is None else max(1, min(BATCH, TOKENS // max(1, int(np.prod(mask.shape[1:])))))
    order = None
    if trim is not None and mask is not None and n > size:  # similar lengths together: less padding to cut
        order = torch.from_numpy(np.argsort(mask.reshape(n, -1).sum(1), kind="stable"))
        arrays = [a.index_select(0, order) for a in arrays]
    outs = []
    for i in range(0, n, size):
        batch = tuple(a[i:i + size] for a in arrays)
        outs.append(model(*(x.to(device) for x in (trim(batch) if trim else batch))).float().cpu())
    out = torch.cat(outs) if outs else torch.empty(0, 1)
    if order is not None:
        out = torch.empty_like(out).index_copy_(0, order, out)
    return out
