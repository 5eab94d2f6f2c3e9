"""Train / validation / test splits, stratified by class when asked, reproducible from a seed."""

from __future__ import annotations

import numpy as np

from modelfoundry.errors import DataError, first_line


def split_indices(labels: np.ndarray, val: float, test: float, stratify: bool,
                  seed: int) -> dict[str, np.ndarray]:
    """Positions (0..N-1) of the train, val and test rows; `labels` given only for stratification."""
    from sklearn.model_selection import train_test_split

    positions = np.arange(len(labels))
    if stratify:
        _check_stratifiable(labels, val, test)
        labels = _sorted_codes(labels)  # the same split as the labels themselves give, found much faster
    strat = labels if stratify else None
    try:  # too few rows for a split to hold every class (or any row at all)
        rest, test_idx = train_test_split(positions, test_size=test, random_state=seed, stratify=strat)
        strat_rest = labels[rest] if stratify else None
        train_idx, val_idx = train_test_split(rest, test_size=val / (1 - test), random_state=seed,
                                              stratify=strat_rest)
    except ValueError as exc:
        raise DataError(f"{len(labels)} rows cannot be split into train/val/test"
                        f"{' stratified by class' if stratify else ''}: {first_line(exc).rstrip('.')}.",
                        "Use more rows, larger data.split.val / data.split.test fractions, or data.split.stratify: "
                        "false.") from None
    if min(len(train_idx), len(val_idx), len(test_idx)) == 0:
        raise DataError(f"{len(labels)} rows are too few to split into train/val/test "
                        f"({len(train_idx)}/{len(val_idx)}/{len(test_idx)}).",
                        "Use a larger dataset or larger data.split.val / data.split.test fractions.")
    return {"train": np.sort(train_idx), "val": np.sort(val_idx), "test": np.sort(test_idx)}


def train_share(train: np.ndarray, labels: np.ndarray | None, fraction: float, seed: int) -> np.ndarray:
    """A seeded share (`data.split.train_fraction`) of the training positions `train`, stratified by `labels`
    (all rows' labels, or None), sorted; at least one row per class (and two rows) are kept."""
    from sklearn.model_selection import train_test_split

    keep = max(2, round(len(train) * fraction))
    if keep >= len(train):
        return train
    strat = labels[train] if labels is not None else None
    if strat is not None:
        keep = max(keep, len(np.unique(strat)))
    try:
        kept, _ = train_test_split(train, train_size=keep, random_state=seed, stratify=strat)
    except ValueError:  # a class with a single training row cannot be stratified: a plain sample
        kept, _ = train_test_split(train, train_size=keep, random_state=seed)
    return np.sort(kept)


def _sorted_codes(labels: np.ndarray) -> np.ndarray:
    """Each label's rank among the distinct labels: stratifying on these is stratifying on the labels (the
    classes come in the same order), without sorting every label as text."""
    import pandas as pd

    return pd.factorize(labels, sort=True)[0]


def _check_stratifiable(labels: np.ndarray, val: float, test: float) -> None:
    import pandas as pd

    codes, uniques = pd.factorize(labels, sort=True)
    values, counts = np.asarray(uniques), np.bincount(codes, minlength=len(uniques))
    # each split needs at least one row of each class
    needed = int(np.ceil(1 / min(val, test, 1 - val - test)))
    rare = [(v, c) for v, c in zip(values, counts) if c < min(needed, 3)]
    if rare:
        shown = ", ".join(f"'{v}' ({c} row{'s' if c > 1 else ''})" for v, c in rare[:5])
        raise DataError(f"Class(es) {shown} have too few rows for a stratified train/val/test split.",
                        "Add rows for those classes, drop them, or set data.split.stratify: false.")


def kfold_indices(labels: np.ndarray, k: int, stratify: bool, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(training positions, held-out positions) of each of `k` shuffled folds; every row is held out once.

    `labels` are used only for stratification (each fold then keeps the class proportions).
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(labels)
    if k < 2:
        raise DataError(f"Cross-validation needs at least 2 folds, got {k}.", "Use --folds 5 (or 10).")
    if k > n:
        raise DataError(f"{k} folds need at least {k} rows; the data has {n} after cleaning.",
                        f"Use --folds {n} or fewer (5 or 10 is usual)." if n >= 2 else "Use more rows.")
    if stratify:
        values, counts = np.unique(labels, return_counts=True)
        rare = [(v, c) for v, c in zip(values, counts) if c < k]
        if rare:
            shown = ", ".join(f"'{v}' ({c} row{'s' if c > 1 else ''})" for v, c in rare[:5])
            more = f" and {len(rare) - 5} more" if len(rare) > 5 else ""
            raise DataError(f"Class(es) {shown}{more} have fewer rows than the {k} folds, so stratified folds "
                            "cannot all hold each class.",
                            f"Use --folds {max(2, int(counts.min()))} or fewer, drop or merge those classes, "
                            "or pass --no-stratified.")
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_splits=k, shuffle=True, random_state=seed)
    return [(np.sort(train), np.sort(held_out)) for train, held_out in splitter.split(np.zeros(n), labels)]


def holdout_indices(labels: np.ndarray, fraction: float, stratify: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept positions, held-out positions): a `fraction` of the rows held out, e.g. the validation part of a fold."""
    from sklearn.model_selection import train_test_split

    n = len(labels)
    n_out = int(np.ceil(fraction * n))
    if n_out < 1 or n - n_out < 1:
        raise DataError(f"{n} rows are too few to hold out a fraction of {fraction:g} and keep the rest.",
                        "Use a larger dataset, fewer folds, or another data.split.val.")
    if stratify:
        values, counts = np.unique(labels, return_counts=True)
        rare = [(v, c) for v, c in zip(values, counts) if c < 2]
        if rare or n_out < len(values) or n - n_out < len(values):
            shown = ", ".join(f"'{v}' ({c} row)" for v, c in rare[:5])
            why = f"class(es) {shown} have a single row" if rare else \
                f"{len(values)} classes do not fit in {min(n_out, n - n_out)} rows"
            raise DataError(f"{n} rows cannot be split stratified into {n - n_out} + {n_out} rows: {why}.",
                            "Use fewer folds, a larger data.split.val, or set data.split.stratify: false "
                            "(--no-stratified).")
    kept, held_out = train_test_split(np.arange(n), test_size=n_out, random_state=seed,
                                      stratify=labels if stratify else None)
    return np.sort(kept), np.sort(held_out)
