"""Class imbalance: per-class loss weights (resampling and SMOTE come later)."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelfoundry.errors import ConfigError


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
