"""A dataset fingerprint: enough to tell whether two runs saw the same data; and a source's identity (its bytes'
hash, or a bundled dataset's package version), which keys the prepared-data cache without parsing the source."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
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
        "rows": len(frame),
        "columns": {str(c): str(t) for c, t in frame.dtypes.items()},
        "missing": {str(c): int(n) for c, n in frame.isna().sum().items() if n},
        "task": task,
    }
    if task == "classification":
        counts = frame[target].value_counts(dropna=True)
        info["class_balance"] = {str(k): int(v) for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))}
    return info


# ---------------------------------------------------------------------------------------- the source's identity
RACY_NS = 2_000_000_000  # a file changed less than this before it was hashed is hashed again next time
INDEX_ENTRIES = 1000


def source_identity(source: str) -> dict[str, Any]:
    """What a source's content is, without parsing it: a file's sha256 of its bytes and its format (not its path:
    a copy elsewhere is the same data), or a bundled dataset's name and the version of the package that ships it.

    A small index (`$FOUNDRY_CACHE_DIR/file-hashes.json`) keeps each file's hash beside its size, times and inode,
    so an unchanged file is not read again; any write to the file changes its ctime, and a file written within
    RACY_NS of its hashing is never trusted from the index (a change in the same clock tick is still seen).
    """
    from modelfoundry.data.sources import describe_source, is_bundled

    if is_bundled(source):
        package = source.split(":", 1)[0]
        return {"bundled": source, "package": package, "version": _package_version(package)}
    path = Path(describe_source(source))
    stat = path.stat()  # a missing file fails here; callers read the source then, which names it
    return {"format": path.suffix.lower(), "size": stat.st_size, "sha256": file_sha256(path, stat)}


def file_sha256(path: Path, stat: os.stat_result | None = None) -> str:
    """sha256 of the file's bytes, from the index when the file is unchanged since it was last hashed."""
    stat = stat or path.stat()
    quick = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
    index = _read_index()
    known = index.get(str(path))
    if isinstance(known, dict) and known.get("stat") == quick and isinstance(known.get("sha256"), str):
        return known["sha256"]
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    if time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) > RACY_NS:
        index.pop(str(path), None)
        index[str(path)] = {"stat": quick, "sha256": digest}
        _write_index(dict(list(index.items())[-INDEX_ENTRIES:]))
    return digest


def _package_version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version({"sklearn": "scikit-learn"}.get(package, package))
    except PackageNotFoundError:
        return None


def _index_path() -> Path:
    from modelfoundry.storage import cache_root

    return cache_root() / "file-hashes.json"


def _read_index() -> dict[str, Any]:
    try:
        index = json.loads(_index_path().read_text())
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}


def _write_index(index: dict[str, Any]) -> None:
    from modelfoundry.storage import write_bytes_atomic

    try:
        write_bytes_atomic(_index_path(), json.dumps(index).encode())
    except OSError:  # a read-only cache directory: files are hashed every time
        pass
