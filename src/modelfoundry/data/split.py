"""Train / validation / test splits, stratified by class when asked, reproducible from a seed."""

from __future__ import annotations

import numpy as np

from modelfoundry.errors import DataError


def split_indices(labels: np.ndarray, val: float, test: float, stratify: bool,
                  seed: int) -> dict[str, np.ndarray]:
    """Positions (0..N-1) of the train, val and test rows; `labels` given only for stratification."""
    from sklearn.model_selection import train_test_split

    positions = np.arange(len(labels))
    if stratify:
        _check_stratifiable(labels, val, test)
    strat = labels if stratify else None
    rest, test_idx = train_test_split(positions, test_size=test, random_state=seed, stratify=strat)
    strat_rest = labels[rest] if stratify else None
    train_idx, val_idx = train_test_split(rest, test_size=val / (1 - test), random_state=seed, stratify=strat_rest)
    if min(len(train_idx), len(val_idx), len(test_idx)) == 0:
        raise DataError(f"{len(labels)} rows are too few to split into train/val/test "
                        f"({len(train_idx)}/{len(val_idx)}/{len(test_idx)}).",
                        "Use a larger dataset or larger data.split.val / data.split.test fractions.")
    return {"train": np.sort(train_idx), "val": np.sort(val_idx), "test": np.sort(test_idx)}


def _check_stratifiable(labels: np.ndarray, val: float, test: float) -> None:
    values, counts = np.unique(labels, return_counts=True)
    # each split needs at least one row of each class
    needed = int(np.ceil(1 / min(val, test, 1 - val - test)))
    rare = [(v, c) for v, c in zip(values, counts) if c < min(needed, 3)]
    if rare:
        shown = ", ".join(f"'{v}' ({c} row{'s' if c > 1 else ''})" for v, c in rare[:5])
        raise DataError(f"Class(es) {shown} have too few rows for a stratified train/val/test split.",
                        "Add rows for those classes, drop them, or set data.split.stratify: false.")
