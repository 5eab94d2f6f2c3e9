"""Fitted preprocessing applied to a table in chunks of rows, by the calling process or a pool of workers.

Fitting stays in the calling process, on the training split; the fitted preprocessing's portable description
(JSON, data/portable.py) is applied to chunks of `data.chunk_rows` rows, which gives exactly what the whole table
gives: every row is transformed alone (scaling, encoding, tokenizing to a fixed length), and each chunk is written
into its rows of the outputs. Workers are forked where the platform allows: they start in milliseconds, inherit
the rows and write their chunks straight into the outputs, which then live in shared memory (only the chunk bounds
travel between processes); elsewhere they are spawned, and chunks and arrays are sent both ways.
"""

from __future__ import annotations

import json
import mmap
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from modelfoundry.artifacts.inputs import Inputs

if TYPE_CHECKING:
    import pandas as pd

MAX_AUTO_WORKERS = 8
_SHARED: dict[str, Any] = {}  # what forked workers inherit: the description and the frames


def plan_workers(rows: int, chunk_rows: int, workers: int | str, text: bool = False) -> int:
    """Worker processes for `rows` rows: `workers` when a number (1: none); for auto one per core when the rows
    make at least two chunks and there are at least two cores, else 1 - and 1 for text columns, whose tokenizer
    (the tokenizers library) already encodes a batch on every core (measured: workers made it slower)."""
    if workers != "auto":
        return max(1, int(workers))
    if text:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    chunks = -(-rows // chunk_rows)
    return min(cores, chunks, MAX_AUTO_WORKERS) if chunks >= 2 and cores >= 2 else 1


def transform_parts(desc: dict[str, Any], parts: dict[str, pd.DataFrame], origins: dict[str, str], text: bool,
                    workers: int, chunk_rows: int) -> dict[str, Inputs]:
    """Each part through the portable preprocessing `desc` (`text=False` leaves text inputs out), in chunks of
    `chunk_rows` rows written into preallocated outputs, by `workers` processes (1: the caller's). Chunks pay even
    in one process: a 1M-row table transformed whole took 2-3x longer than in chunks of 100,000 rows (measured;
    the whole-table temporaries do not stay in the CPU caches)."""
    from modelfoundry.data.portable import apply_portable

    if not any(len(part) for part in parts.values()):
        return {name: apply_portable(desc, part, origins[name], text) for name, part in parts.items()}
    tasks = [(name, start, min(start + chunk_rows, len(part))) for name, part in parts.items()
             for start in range(0, len(part), chunk_rows)]
    workers = min(workers, len(tasks))
    forked = "fork" in multiprocessing.get_all_start_methods()
    if workers > 1 and not forked:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            done = list(pool.map(_shipped_chunk, [(json.dumps(desc), parts[n].iloc[a:b], origins[n], text)
                                                  for n, a, b in tasks]))
        return _joined(parts, tasks, done)
    out = _outputs(desc, parts, origins, text, shared=workers > 1)
    _SHARED.update(desc=desc, parts=parts, origins=origins, text=text, out=out)
    try:
        if workers > 1:  # forked workers inherit the rows and write their chunk's rows of the shared outputs
            with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
                list(pool.map(_chunk, tasks))
        else:
            for task in tasks:
                _chunk(task)
    finally:
        _SHARED.clear()
    return out


def _outputs(desc: dict[str, Any], parts: dict[str, pd.DataFrame], origins: dict[str, str], text: bool,
             shared: bool) -> dict[str, Inputs]:
    """Each part's output arrays, laid out as one row of the first non-empty part comes out (names, dtypes,
    per-row shapes); in anonymous shared memory when forked workers write them."""
    from modelfoundry.data.portable import apply_portable

    name = next(n for n, part in parts.items() if len(part))
    layout = apply_portable(desc, parts[name].iloc[:1], origins[name], text)
    out: dict[str, Inputs] = {}
    for split, part in parts.items():
        out[split] = {}
        for key, row in layout.items():
            shape = (len(part), *row.shape[1:])
            size = int(np.prod(shape)) * row.dtype.itemsize
            if shared:
                buffer = mmap.mmap(-1, size) if size else bytearray(0)  # MAP_SHARED | MAP_ANONYMOUS
                out[split][key] = np.frombuffer(buffer, dtype=row.dtype).reshape(shape)
            else:
                out[split][key] = np.empty(shape, dtype=row.dtype)
    return out


def _chunk(task: tuple[str, int, int]) -> None:
    from modelfoundry.data.portable import apply_portable

    name, start, stop = task
    made = apply_portable(_SHARED["desc"], _SHARED["parts"][name].iloc[start:stop], _SHARED["origins"][name],
                          _SHARED["text"])
    for key, array in made.items():
        _SHARED["out"][name][key][start:stop] = array


def _shipped_chunk(task: tuple[str, pd.DataFrame, str, bool]) -> Inputs:
    from modelfoundry.data.portable import apply_portable

    desc_json, chunk, origin, text = task
    return apply_portable(json.loads(desc_json), chunk, origin, text)


def _joined(parts: dict[str, pd.DataFrame], tasks: list[tuple[str, int, int]], done: list[Inputs]) -> dict[str, Inputs]:
    """The chunks' inputs put back together, part by part, in row order."""
    out: dict[str, Inputs] = {}
    for name in parts:
        chunks = [inputs for (part, _, _), inputs in zip(tasks, done) if part == name]
        out[name] = {key: np.concatenate([c[key] for c in chunks]) if len(chunks) > 1 else chunks[0][key]
                     for key in chunks[0]}
    return out
