"""Class imbalance: per-class loss weights, and resampling of the training split (imbalanced-learn)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from modelfoundry.errors import ConfigError

if TYPE_CHECKING:
    from modelfoundry.config import BalanceConfig
    from modelfoundry.data.portable import PortablePreprocessor


def class_weights(codes: np.ndarray, classes: list[Any], setting: str | dict[str, float]) -> np.ndarray | None:
    """Loss weight per class index: None, 'balanced' (n / (k * count)), or explicit {label: weight}."""
    if setting == "none":
        return None
    if setting == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        present = np.unique(codes)
        weights = np.ones(len(classes))
        weights[present] = compute_class_weight("balanced", classes=present, y=codes)
        return weights.astype(np.float32)
    by_name = {str(c): i for i, c in enumerate(classes)}
    unknown = [k for k in setting if k not in by_name]
    if unknown:
        raise ConfigError(f"data.balance.class_weights names class(es) {unknown} that the target does not have; "
                          f"its classes are {list(by_name)}.", "Use the target's labels as keys.")
    weights = np.ones(len(classes), dtype=np.float32)
    for label, weight in setting.items():
        weights[by_name[label]] = weight
    return weights


def resample(X: dict[str, np.ndarray], y: np.ndarray, rows: np.ndarray, cfg: BalanceConfig, seed: int,
             preprocessor: PortablePreprocessor) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, dict[str, Any]]:
    """The training split resampled by `cfg.method` (never called for val/test): its inputs, class indices and
    source row numbers (-1 for a synthetic row), and what data.json records about it. 'none' and 'gan' (done by
    the experiment, which may build models) return the split unchanged."""
    if cfg.method in ("none", "gan"):
        return X, y, rows, {}
    raise NotImplementedError(f"data.balance.method: {cfg.method}")  # issue 14, helper B
