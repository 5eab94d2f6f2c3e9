"""A dataset fingerprint: enough to tell whether two runs saw the same data."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


def content_hash(frame: pd.DataFrame) -> str:
    """sha256 of the column names and every cell, independent of the row index."""
    import pandas as pd

    digest = hashlib.sha256()
    digest.update("\x1f".join(map(str, frame.columns)).encode())
    numeric = _numeric_hashes(frame)
    for j, column in enumerate(frame.columns):
        if j in numeric:
            digest.update(numeric[j])
            continue
        series = frame.iloc[:, j]
        if series.dtype == object and len(series) and isinstance(series.dropna().iloc[0] if series.notna().any()
                                                                 else None, (list, tuple, np.ndarray)):
            for value in series:
                digest.update(np.asarray(value, dtype=np.float64).tobytes())
        else:
            digest.update(pd.util.hash_pandas_object(series, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def _numeric_hashes(frame: pd.DataFrame) -> dict[int, bytes]:
    """{column position: the bytes hash_pandas_object gives} for plain numpy numeric columns, taken from one
    array per dtype (a wide table then costs one conversion, not one pandas lookup per column)."""
    import pandas as pd

    by_dtype: dict[Any, list[int]] = {}
    for j, dtype in enumerate(frame.dtypes):
        if isinstance(dtype, np.dtype) and dtype.kind in "fiub":
            by_dtype.setdefault(dtype, []).append(j)
    hashes = {}
    for positions in by_dtype.values():
        block = np.asfortranarray(frame.iloc[:, positions].to_numpy())
        for k, j in enumerate(positions):
            hashes[j] = pd.util.hash_array(block[:, k]).tobytes()
    return hashes


def fingerprint(frame: pd.DataFrame, target: str, task: str, source: str) -> dict[str, Any]:
    """Hash, shape, column types, missing counts and (classification) class balance of the raw data."""
    info: dict[str, Any] = {
        "source": source,
        "sha256": content_hash(frame),
        "rows": int(len(frame)),
        "columns": {str(c): str(t) for c, t in frame.dtypes.items()},
        "missing": {str(c): int(n) for c, n in frame.isna().sum().items() if n},
        "task": task,
    }
    if task == "classification":
        counts = frame[target].value_counts(dropna=True)
        info["class_balance"] = {str(k): int(v) for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))}
    return info
