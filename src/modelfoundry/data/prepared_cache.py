"""A disk cache of prepared data: the cleaned, split, fitted and transformed splits of a data section, so a second
run on the same data and settings (any model, any training), every CV fold, tuning trial and retrain reads them
instead of preparing again.

An entry is a directory `$FOUNDRY_CACHE_DIR/prepared/<key>/` named by everything the prepared data depends on
(`entry_key`): the source's identity (its bytes' hash, or a bundled dataset's package version), the data section
less the keys that do not change it, the split seed, a pretrained tokenizer, the rows of each split (a CV fold's),
the versions of the libraries and a digest of the data modules that compute it, and this module's FORMAT. It holds:

- `meta.json`: the task, the preprocessing's portable description, the target encoding, data.json's info, the
  time the first preparation took, the size of every file (a partial entry is a miss);
- `<split>.X.<input>.npy`, `<split>.y.npy`, `<split>.rows.npy`: the arrays, read with `allow_pickle=False` (an object
  array is refused: data only) and memory-mapped copy-on-write (pages are read when touched); above MMAP_BYTES
  they stay `np.memmap`s, which the training loop streams instead of preloading;
- `<split>.frame.arrow`: each split's typed and cleaned rows (the monitor's reference profile reads them) as an
  Arrow IPC file (data only), when a `prepare_data` entry can store them; read when first asked for.

Nothing is pickled. An entry is written in a temporary directory and renamed into place, so readers see all of
it or nothing; a damaged, foreign or partial entry is a miss (and removed), never an error. The least recently
used entries are removed once the cache holds more than $FOUNDRY_CACHE_MAX_MB (default 2048) megabytes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelfoundry.storage import cache_root

if TYPE_CHECKING:
    import pandas as pd

    from modelfoundry.config import DataConfig

FORMAT = 1
DEFAULT_MAX_MB = 2048
MMAP_BYTES = 512 << 20  # an entry whose arrays take more (in total) is streamed by training, not preloaded
# data keys that do not change the prepared arrays: the source is keyed by its identity, resampling
# (data.balance) runs after the cache (it is seeded and cheap), augmentation in the training loop
IGNORED = ("source", "cache", "workers", "chunk_rows", "augment", "balance")
STALE_TMP_S = 3600
CODE = ("prepare.py", "clean.py", "split.py", "transform.py", "portable.py", "text.py", "sources.py", "chunked.py",
        "fingerprint.py", "prepared_cache.py")  # data/ modules whose code the key includes (not balance.py: after)


def cache_dir() -> Path:
    """$FOUNDRY_CACHE_DIR/prepared, by default .foundry-cache/prepared under the current directory."""
    return cache_root() / "prepared"


def max_bytes() -> int:
    """The cache's size cap: $FOUNDRY_CACHE_MAX_MB megabytes, default DEFAULT_MAX_MB."""
    try:
        return int(float(os.environ.get("FOUNDRY_CACHE_MAX_MB") or DEFAULT_MAX_MB) * (1 << 20))
    except ValueError:
        return DEFAULT_MAX_MB << 20


def data_settings(cfg: DataConfig) -> dict[str, Any]:
    """The data section as JSON, less the keys the prepared arrays do not depend on."""
    return cfg.model_dump(mode="json", exclude=set(IGNORED))


def library_versions() -> dict[str, str | None]:
    """The versions of the code that computes prepared data (a new one may compute it differently)."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name in ("modelfoundry", "numpy", "pandas", "scikit-learn", "tokenizers"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


@functools.cache
def code_digest() -> str:
    """sha256 of the modules that compute prepared data: a change to any of them (a fix to cleaning, scaling,
    tokenizing) makes every older entry a miss, without anyone remembering to bump FORMAT."""
    digest = hashlib.sha256()
    for name in CODE:
        try:
            digest.update((Path(__file__).parent / name).read_bytes())
        except OSError:  # an installation without sources: the package version keys it
            digest.update(name.encode())
    return digest.hexdigest()


def entry_key(parts: dict[str, Any], rows: Mapping[str, np.ndarray] | None = None) -> str:
    """The entry name (sha256, hex) for these inputs of preparation: `parts` as JSON, then each split's rows."""
    digest = hashlib.sha256()
    meta = {"format": FORMAT, "versions": library_versions(), "code": code_digest(), **parts}
    digest.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for name in sorted(rows or {}):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(rows[name], dtype=np.int64).tobytes())
    return digest.hexdigest()


def text_hash(text: str | None) -> str | None:
    """A pretrained tokenizer's JSON, as a short hash for a key."""
    return hashlib.sha256(text.encode()).hexdigest() if text else None


@dataclass
class CachedPrepared:
    """An entry read back: what `PreparedData` is rebuilt from (data/prepare.py)."""

    task: str
    X: dict[str, dict[str, np.ndarray]]
    y: dict[str, np.ndarray]
    rows: dict[str, np.ndarray]
    preprocessor: dict[str, Any]  # the portable description
    target: dict[str, Any]  # the target encoder's description (data/portable.py describe_target)
    info: dict[str, Any]
    horizon: int
    prepare_s: float  # what the first preparation took
    frames: Mapping[str, pd.DataFrame] | None  # None: the entry did not store them


def save(key: str, arrays: dict[str, Any], meta: dict[str, Any],
         frames: Mapping[str, pd.DataFrame] | None = None, directory: Path | None = None) -> bool:
    """Write the entry `key`: `arrays` {"X": {split: {input: array}}, "y": {split: array}, "rows": ...} and `meta`
    (JSON: task, preprocessor, target, info, horizon, prepare_s), with `frames` as Arrow files when they can be. False
    when it was not written (a read-only or full disk, an array that is not plain data, over the size cap)."""
    directory = directory or cache_dir()
    tmp = directory / f".tmp-{key[:32]}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        tmp.mkdir(parents=True)
        files = _write_arrays(tmp, arrays)
        stored = _write_frames(tmp, frames) if frames is not None else None
        files.update({f"{split}.frame.arrow": (tmp / f"{split}.frame.arrow").stat().st_size
                      for split in stored or {}})
        total = sum(files.values())
        if total > max_bytes():
            return False
        record = {**meta, "format": FORMAT, "key": key, "files": files, "bytes": total, "frames": stored,
                  "splits": list(arrays["y"]), "inputs": {s: list(x) for s, x in arrays["X"].items()}}  # in the inputs' order
        (tmp / "meta.json").write_text(json.dumps(record, default=str))
        _evict(directory, max_bytes() - total)
        try:
            os.rename(tmp, directory / key)
        except OSError:  # another process wrote it first: theirs is as good
            return (directory / key / "meta.json").is_file()
        return True
    except (OSError, ValueError, TypeError):
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_arrays(folder: Path, arrays: dict[str, Any]) -> dict[str, int]:
    files = {}
    named = [(f"{s}.X.{name}.npy", a) for s, inputs in arrays["X"].items() for name, a in inputs.items()]
    named += [(f"{s}.{kind}.npy", a) for kind in ("y", "rows") for s, a in arrays[kind].items()]
    for filename, array in named:
        with open(folder / filename, "wb") as handle:
            np.save(handle, np.asarray(array), allow_pickle=False)  # an object array raises: data only
        files[filename] = (folder / filename).stat().st_size
    return files


def _write_frames(folder: Path, frames: Mapping[str, pd.DataFrame]) -> dict[str, list[str]] | None:
    """Each split's frame as an Arrow IPC file, lz4-compressed (with its index: the source's row numbers; 4-8x
    faster to write than Parquet, measured), and its dtypes, to check on reading. None when a frame cannot be
    stored (mixed-type cells, ...): it is rebuilt from the source instead."""
    try:
        import pyarrow as pa
        from pyarrow import feather

        for split, frame in frames.items():
            feather.write_feather(pa.Table.from_pandas(frame, preserve_index=True), folder / f"{split}.frame.arrow",
                                  compression="lz4")
    except (ImportError, ValueError, TypeError, OverflowError, NotImplementedError):
        for path in folder.glob("*.frame.arrow"):
            path.unlink()
        return None
    return {split: [str(t) for t in frame.dtypes] for split, frame in frames.items()}


def load(key: str, rebuild: Callable[[], Mapping[str, pd.DataFrame]] | None = None,
         directory: Path | None = None) -> CachedPrepared | None:
    """The entry `key`, or None when it is absent, damaged, partial or foreign (a damaged one is removed, so it is
    written again). `rebuild` gives the split frames when the entry holds none or they cannot be read."""
    folder = (directory or cache_dir()) / key
    if not (folder / "meta.json").is_file():
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != FORMAT or meta.get("key") != key:
            raise ValueError("a foreign entry")
        for filename, size in meta["files"].items():
            if (folder / filename).stat().st_size != size:
                raise ValueError(f"{filename} is partial")
        streamed = meta["bytes"] >= MMAP_BYTES
        read = lambda name: _read_array(folder / name, streamed)
        splits = meta["splits"]
        X = {s: {name: read(f"{s}.X.{name}.npy") for name in meta["inputs"][s]} for s in splits}
        y, rows = {s: read(f"{s}.y.npy") for s in splits}, {s: read(f"{s}.rows.npy") for s in splits}
        if any(len(x) != len(y[s]) or len(rows[s]) != len(y[s]) for s in splits for x in X[s].values()):
            raise ValueError("arrays of different lengths")
        os.utime(folder / "meta.json")  # last used: what the size cap evicts by
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        shutil.rmtree(folder, ignore_errors=True)
        return None
    frames = StoredFrames(folder, meta["frames"], rebuild) if meta["frames"] or rebuild else None
    return CachedPrepared(meta["task"], X, y, rows, meta["preprocessor"], meta["target"], meta["info"],
                          int(meta.get("horizon", 1)), float(meta["prepare_s"]), frames)


def _read_array(path: Path, streamed: bool) -> np.ndarray:
    """An .npy file mapped copy-on-write (its pages are read when first touched; writes stay private): a plain
    array that training preloads (sharing the pages), or above MMAP_BYTES an np.memmap, which training streams."""
    mapped = np.load(path, mmap_mode="c", allow_pickle=False)
    if not isinstance(mapped, np.memmap):  # a 0-d or empty array is read, not mapped
        return np.asarray(mapped)
    return mapped if streamed else np.asarray(mapped)


class StoredFrames(Mapping[str, "pd.DataFrame"]):
    """An entry's split frames, read from their Arrow files when first asked for (most commands never read them); rebuilt
    from the source (`rebuild`) when the entry has none or they do not read back as they were written."""

    def __init__(self, folder: Path, dtypes: dict[str, list[str]] | None,
                 rebuild: Callable[[], Mapping[str, pd.DataFrame]] | None):
        self._folder, self._dtypes, self._rebuild = folder, dtypes, rebuild
        self._read: dict[str, pd.DataFrame] = {}

    def __getitem__(self, split: str) -> pd.DataFrame:
        if split not in self._read:
            frame = self._stored(split)
            if frame is None:
                if self._rebuild is None:
                    raise KeyError(split)
                self._read.update(self._rebuild())
            else:
                self._read[split] = frame
        return self._read[split]

    def _stored(self, split: str) -> pd.DataFrame | None:
        if not self._dtypes or split not in self._dtypes:
            return None
        try:
            from pyarrow import feather

            frame = feather.read_table(self._folder / f"{split}.frame.arrow").to_pandas()
        except (OSError, ValueError, TypeError, ImportError):
            return None
        return frame if [str(t) for t in frame.dtypes] == self._dtypes[split] else None

    def __iter__(self) -> Iterator[str]:
        return iter(self._dtypes or ("train", "val", "test"))

    def __len__(self) -> int:
        return len(self._dtypes or ("train", "val", "test"))


def _evict(directory: Path, room: int) -> None:
    """Remove the least recently used entries until the others take at most `room` bytes (and old temp dirs)."""
    entries = []
    for folder in directory.iterdir() if directory.is_dir() else ():
        try:
            if folder.name.startswith(".tmp-"):
                if time.time() - folder.stat().st_mtime > STALE_TMP_S:
                    shutil.rmtree(folder, ignore_errors=True)
                continue
            meta = folder / "meta.json"
            size = sum(f.stat().st_size for f in os.scandir(folder) if f.name != "meta.json")  # not parsed: big
            entries.append((meta.stat().st_mtime if meta.is_file() else 0.0, size, folder))
        except OSError:
            entries.append((0.0, 0, folder))
    total = sum(size for _, size, _ in entries)
    for _, size, folder in sorted(entries, key=lambda e: e[0]):
        if total <= room:
            break
        shutil.rmtree(folder, ignore_errors=True)
        total -= size


class FittedOnDemand:
    """Stands for the scikit-learn `Preprocessor` of a cache hit (`PortablePreprocessor.fitted`): the cache keeps
    only the portable description, so the fitted one is made again (by `refit`) the first time it is used."""

    def __init__(self, refit: Callable[[], Any]):
        self._refit, self._fitted = refit, None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_refit", "_fitted"):
            raise AttributeError(name)
        if self._fitted is None:
            self._fitted = self._refit()
        return getattr(self._fitted, name)
