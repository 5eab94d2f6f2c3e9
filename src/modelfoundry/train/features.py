"""Features of a frozen encoder, computed once: a model whose encoder training never changes (a pretrained
encoder with `finetune: freeze` and no gradual unfreezing) says so with `frozen_features()`, and its encoder's
pooled outputs are computed once per split (batched, without gradients, in eval mode, each batch cut to its
longest text), so every epoch trains only the part above it (dropout + head) on them. That part shares the
model's parameters: the model saved, checkpointed, evaluated, exported and served is the whole one, unchanged.

The features are also cached on disk ($FOUNDRY_CACHE_DIR/features, beside the tokenization cache), keyed by the
token ids and masks themselves, the base weights' sha256 and the pooling: a second run, a tuning trial or a
resume on the same tokens skips the encoder. Entries are written atomically; an unreadable one is a miss.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modelfoundry.artifacts.inputs import padding_trim
from modelfoundry.storage import cache_root, write_bytes_atomic

BATCH = 256  # rows per encoder call: large enough to keep the cores busy, small enough for long texts
FORMAT = 1


def cache_dir() -> Path:
    """$FOUNDRY_CACHE_DIR/features (beside the tokenization cache, see data/cache.py)."""
    return cache_root() / "features"


def frozen_inputs(model: nn.Module, X: Mapping[str, Mapping[str, np.ndarray]], device: torch.device,
                  cache: bool = True) -> tuple[nn.Module, dict[str, dict[str, np.ndarray]], dict[str, Any]] | None:
    """(the module to train, its inputs per split, a report) when `model` has a frozen encoder; else None.

    The module to train takes `pooled` (N, D) float32 and then the model's side inputs (numeric columns), in
    that order; the report says whether every split came from the disk cache (`hit`) and the seconds spent.
    """
    hook = getattr(model, "frozen_features", None)
    frozen = hook() if callable(hook) else None
    if frozen is None:
        return None
    started, hits, out = time.perf_counter(), [], {}
    was_training = model.training
    model.eval()
    try:
        for split, inputs in X.items():
            arrays = list(inputs.values())
            tokens, mask = arrays[frozen.tokens], arrays[frozen.mask]
            key = _key(frozen.identity, tokens, mask)
            pooled = _load(key) if cache else None
            hits.append(pooled is not None)
            if pooled is None:
                pooled = _encode(frozen.pooled, tokens, mask, device)
                if cache:
                    _save(key, pooled)
            names = list(inputs)
            out[split] = {"pooled": pooled, **{names[i]: arrays[i] for i in frozen.side}}  # the module's order
    finally:
        model.train(was_training)
    report = {"hit": bool(hits) and all(hits), "cached": cache, "seconds": time.perf_counter() - started}
    return frozen.top, out, report


@torch.inference_mode()
def _encode(pooled: Any, tokens: np.ndarray, mask: np.ndarray, device: torch.device) -> np.ndarray:
    """(N, T) tokens and mask -> (N, D) float32 pooled encodings, BATCH rows at a time, each cut to its longest text."""
    trim = padding_trim(["tokens", "attention_mask"])
    parts = []
    for start in range(0, len(tokens), BATCH):
        batch = trim((torch.from_numpy(np.ascontiguousarray(tokens[start:start + BATCH], dtype=np.int64)),
                      torch.from_numpy(np.ascontiguousarray(mask[start:start + BATCH], dtype=np.int64))))
        parts.append(pooled(*(x.to(device) for x in batch)).float().cpu().numpy())
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def _key(identity: dict[str, str], tokens: np.ndarray, mask: np.ndarray) -> str:
    digest = hashlib.sha256(json.dumps({"format": FORMAT, **identity}, sort_keys=True).encode())
    for array in (tokens, mask):
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    return digest.hexdigest()


def _load(key: str) -> np.ndarray | None:
    path = cache_dir() / f"{key}.npy"
    if not path.is_file():
        return None
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return array if array.dtype == np.float32 and array.ndim == 2 else None


def _save(key: str, pooled: np.ndarray) -> None:
    """Write the entry atomically; a read-only or full disk only means no cache."""
    try:
        buffer = io.BytesIO()
        np.save(buffer, pooled, allow_pickle=False)
        write_bytes_atomic(cache_dir() / f"{key}.npy", buffer.getvalue())
    except OSError:
        return
