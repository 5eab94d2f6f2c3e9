"""Class imbalance: per-class loss weights, and resampling of the training split (imbalanced-learn)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from modelfoundry.artifacts.inputs import take
from modelfoundry.errors import ConfigError, DataError

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


INDEX_METHODS = ("oversample", "undersample")  # repeat or drop whole rows: any inputs (text too)
SYNTHETIC_METHODS = ("smote", "adasyn", "smotenc")  # new rows between neighbours: one float input only
FLOAT_INPUTS = ("numeric", "image")


def resample(X: dict[str, np.ndarray], y: np.ndarray, rows: np.ndarray, cfg: BalanceConfig, seed: int,
             preprocessor: PortablePreprocessor, classes: list[Any] | None = None,
             ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, dict[str, Any]]:
    """The training split resampled by `cfg.method` (never called for val/test).

    Args:
        X: the split's named inputs, e.g. {"numeric": (N, F)} or {"image": (N, C, H, W)}.
        y: class indices (N,).
        rows: the rows' numbers in the source data (N,).
        cfg: data.balance.
        seed: seeds imbalanced-learn's sampler (the same seed gives the same rows).
        preprocessor: the fitted portable preprocessing; smotenc reads the one-hot groups of categorical columns
            from its description.
        classes: the target's labels in class-index order, to name the classes in what data.json records (their
            indices when None).

    Returns:
        The resampled inputs, class indices and row numbers (-1 for a synthetic row; a repeated row keeps its
        number), and what data.json records: method, class counts before and after, synthetic rows. 'none' and
        'gan' (done by the experiment, which may build models) return the split unchanged and {}.
    """
    if cfg.method in ("none", "gan"):
        return X, y, rows, {}
    counts = np.bincount(y, minlength=len(classes) if classes is not None else 0)
    names = [str(c) for c in classes] if classes is not None else [str(c) for c in range(len(counts))]
    targets = _class_targets(counts, cfg)
    if all(targets.get(c, n) == n for c, n in enumerate(counts)):  # the ratio asks for no change
        return X, y, rows, _info(cfg, names, counts, counts, 0)
    if cfg.method in INDEX_METHODS:
        kept = _sample_indices(cfg.method, y, targets, seed)
        X, y, rows = take(X, kept), y[kept], rows[kept]
        return X, y, rows, _info(cfg, names, counts, np.bincount(y, minlength=len(counts)), 0)
    name = _float_input(X, cfg.method)
    targets = {c: n for c, n in targets.items() if n > counts[c]}  # the classes that grow
    _check_neighbours(counts, targets, cfg, names)
    values = X[name]
    flat = values.reshape(len(values), -1)  # (N, F); an image (N, C, H, W) becomes (N, C*H*W) pixels
    if cfg.method == "smotenc":
        new_flat, new_y = _smotenc(flat, y, targets, cfg, seed, preprocessor)
    else:
        new_flat, new_y = _fit_resample(_synthetic_sampler(cfg, targets, seed), flat, y, cfg)
    added = len(new_y) - len(y)
    X = {name: new_flat.reshape(-1, *values.shape[1:]).astype(values.dtype, copy=False)}
    rows = np.concatenate([rows, np.full(added, -1, dtype=rows.dtype)])  # imblearn appends the new rows
    after = np.bincount(new_y, minlength=len(counts))
    return X, new_y.astype(y.dtype, copy=False), rows, _info(cfg, names, counts, after, added)


def _class_targets(counts: np.ndarray, cfg: BalanceConfig) -> dict[int, int]:
    """imbalanced-learn's sampling_strategy as {class index: rows after}: over-sampling grows each class to at least
    ratio x the largest class; undersample shrinks each class to at most the smallest / ratio (auto: ratio 1)."""
    ratio = 1.0 if cfg.ratio == "auto" else float(cfg.ratio)
    present = [c for c, n in enumerate(counts) if n > 0]
    if cfg.method == "undersample":
        smallest = min(counts[c] for c in present)
        return {c: int(min(counts[c], math.floor(smallest / ratio))) for c in present}
    largest = max(counts)
    return {c: int(max(counts[c], math.ceil(ratio * largest - 1e-9))) for c in present}


def _sample_indices(method: str, y: np.ndarray, targets: dict[int, int], seed: int) -> np.ndarray:
    """Row positions chosen by RandomOverSampler / RandomUnderSampler (originals first for over-sampling)."""
    from imblearn.over_sampling import RandomOverSampler
    from imblearn.under_sampling import RandomUnderSampler

    sampler = (RandomOverSampler if method == "oversample" else RandomUnderSampler)(
        sampling_strategy=targets, random_state=seed)
    sampler.fit_resample(np.arange(len(y)).reshape(-1, 1), y)
    return np.asarray(sampler.sample_indices_)


def _float_input(X: dict[str, np.ndarray], method: str) -> str:
    """The one float input SMOTE-like methods interpolate in; text or several inputs are a ConfigError."""
    if "tokens" in X:
        raise ConfigError(f"data.balance.method: {method} makes synthetic rows between neighbours, which has no "
                          "meaning for text (token ids); this data has text columns.",
                          "Use data.balance.method: oversample or undersample (they repeat or drop whole rows), "
                          "or data.balance.class_weights: balanced.")
    floats = [name for name in X if name in FLOAT_INPUTS]
    if len(floats) != 1 or len(X) != 1:
        raise ConfigError(f"data.balance.method: {method} interpolates one float input, but this model has inputs "
                          f"{list(X)}.", "Use data.balance.method: oversample or undersample, which apply to every "
                          "input.")
    return floats[0]


def _check_neighbours(counts: np.ndarray, targets: dict[int, int], cfg: BalanceConfig, names: list[str]) -> None:
    """Every class that grows needs more rows than data.balance.k_neighbors (its neighbours come from itself)."""
    short = {c: int(counts[c]) for c in targets if counts[c] <= cfg.k_neighbors}
    if short:
        fewest = min(short.values())
        fix = (f"Set data.balance.k_neighbors to at most {fewest - 1}, " if fewest > 1 else "")
        rows = ", ".join(f"class {names[c]!r} has {n}" for c, n in short.items())
        raise DataError(f"data.balance.method: {cfg.method} needs more than k_neighbors ({cfg.k_neighbors}) training "
                        f"rows in each class it grows, but {rows} in the training split.",
                        f"{fix}use data.balance.method: oversample (which repeats rows), or add rows of those classes.")


def _synthetic_sampler(cfg: BalanceConfig, targets: dict[int, int], seed: int) -> Any:
    from imblearn.over_sampling import ADASYN, SMOTE

    if cfg.method == "adasyn":
        return ADASYN(sampling_strategy=targets, n_neighbors=cfg.k_neighbors, random_state=seed)
    return SMOTE(sampling_strategy=targets, k_neighbors=cfg.k_neighbors, random_state=seed)


def _fit_resample(sampler: Any, X: np.ndarray, y: np.ndarray, cfg: BalanceConfig) -> tuple[np.ndarray, np.ndarray]:
    """sampler.fit_resample, with imbalanced-learn's refusals (ADASYN finding no neighbours of another class, too
    few rows) as a DataError naming data.balance."""
    try:
        return sampler.fit_resample(X, y)
    except (ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"data.balance.method: {cfg.method} could not resample the training split "
                        f"(imbalanced-learn: {reason}).",
                        "Use data.balance.method: smote or oversample, change data.balance.ratio or "
                        "data.balance.k_neighbors, or add rows of the rare classes.") from None


def _smotenc(flat: np.ndarray, y: np.ndarray, targets: dict[int, int], cfg: BalanceConfig, seed: int,
             preprocessor: PortablePreprocessor) -> tuple[np.ndarray, np.ndarray]:
    """SMOTE-NC on a table: each one-hot group of a categorical column becomes one code column, so synthetic rows
    take a real category (the neighbours' most frequent), then the codes become one-hot columns again."""
    from imblearn.over_sampling import SMOTENC

    groups = _categorical_groups(preprocessor.desc)
    if not groups or sum(width for _, width in groups) == flat.shape[1]:
        what = "no categorical columns" if not groups else "only categorical columns"
        raise ConfigError(f"data.balance.method: smotenc is SMOTE for tables mixing numeric and categorical columns, "
                          f"but this data has {what}.",
                          "Use data.balance.method: smote for numeric columns only, or oversample for categorical "
                          "columns only.")
    compact, categorical = _encode_groups(flat, groups)
    sampler = SMOTENC(categorical_features=categorical, sampling_strategy=targets, k_neighbors=cfg.k_neighbors,
                      random_state=seed)
    new_compact, new_y = _fit_resample(sampler, compact, y, cfg)
    return _decode_groups(new_compact, groups, flat.shape[1]).astype(flat.dtype), new_y


def _categorical_groups(desc: dict[str, Any]) -> list[tuple[int, int]]:
    """(first column, width) in the numeric input of each categorical feature (a one-hot group, or one ordinal
    code column), from the portable description's features in input order."""
    groups, start = [], 0
    for feature in desc.get("features", []):
        if feature["kind"] == "categorical" and feature["width"] > 0:
            groups.append((start, feature["width"]))
        start += feature["width"]
    return groups


def _encode_groups(flat: np.ndarray, groups: list[tuple[int, int]]) -> tuple[np.ndarray, list[int]]:
    """The numeric columns, then one code column per categorical group (the hot column's index; the width for an
    all-zero row), and the positions of the code columns."""
    grouped = {j for start, width in groups for j in range(start, start + width)}
    numeric = flat[:, [j for j in range(flat.shape[1]) if j not in grouped]]
    codes = []
    for start, width in groups:
        block = flat[:, start:start + width]
        codes.append(block[:, 0] if width == 1 else np.where(block.max(1) > 0, block.argmax(1), width))
    compact = np.column_stack([numeric, *codes]) if codes else numeric
    return compact, list(range(numeric.shape[1], compact.shape[1]))


def _decode_groups(compact: np.ndarray, groups: list[tuple[int, int]], width_all: int) -> np.ndarray:
    """The inverse of `_encode_groups`: code columns back to their one-hot groups at their places."""
    grouped = {j for start, width in groups for j in range(start, start + width)}
    out = np.zeros((len(compact), width_all))
    plain = [j for j in range(width_all) if j not in grouped]
    out[:, plain] = compact[:, :len(plain)]
    for k, (start, width) in enumerate(groups):
        code = np.rint(compact[:, len(plain) + k].astype(np.float64)).astype(np.int64)
        if width == 1:  # an ordinal column: its code is its value
            out[:, start] = code
            continue
        hot = code < width
        out[np.flatnonzero(hot), start + code[hot]] = 1.0
    return out


def _info(cfg: BalanceConfig, names: list[str], before: np.ndarray, after: np.ndarray,
          synthetic: int) -> dict[str, Any]:
    """data.json's `balance`: the training rows per class (in class-index order) before and after."""
    return {"method": cfg.method, "ratio": cfg.ratio,
            "k_neighbors": cfg.k_neighbors if cfg.method in SYNTHETIC_METHODS else None,
            "before": dict(zip(names, before.tolist())), "after": dict(zip(names, after.tolist())),
            "rows": {"before": int(before.sum()), "after": int(after.sum())}, "synthetic": int(synthetic)}
