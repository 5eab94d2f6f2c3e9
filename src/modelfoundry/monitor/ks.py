"""The two-sample Kolmogorov-Smirnov test, for many columns at once: the drift monitor's numeric test
(drift.py `ks`), in numpy, because scipy's exact `ks_2samp` costs ~1 ms a column and the server tests every
numeric column of a window (digits: 64) beside its serving loop."""

from __future__ import annotations

import numpy as np


def ks_many(samples: list[np.ndarray], references: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Two-sample Kolmogorov-Smirnov of each sample against its sorted reference: (D, p-value) arrays, one per
    pair. D is exact (ties included); the p-value is the asymptotic Kolmogorov distribution's with Stephens'
    small-sample correction, within a few percent of scipy's exact one at window sizes.

    All pairs go through one sort: the server tests a window in a thread beside the serving event loop, and
    every numpy call there may hand the GIL to the loop and wait to get it back, so a few calls per window cost
    the loop far less than a few per column (scipy's ks_2samp: ~1 ms per column)."""
    from scipy.special import kolmogorov

    n = np.array([len(s) for s in samples], dtype=np.int64)
    m = np.array([len(r) for r in references], dtype=np.int64)
    sizes = np.concatenate([n, m])
    values = np.concatenate([*samples, *references]).astype(np.float64, copy=False)
    column = np.repeat(np.tile(np.arange(len(n)), 2), sizes)
    step = np.repeat(np.concatenate([1.0 / n, -1.0 / m]), sizes)  # the gap F_sample - F_reference moves by these
    order = np.lexsort((values, column))  # by column, then by value
    values, column, gap = values[order], column[order], np.cumsum(step[order])
    starts = np.searchsorted(column, np.arange(len(n)))
    gap -= np.concatenate([[0.0], gap])[starts][column]  # each column's gap from its own start
    last = np.ones(len(values), dtype=bool)  # the CDFs are compared after the last of equal values
    last[:-1] = (values[1:] != values[:-1]) | (column[1:] != column[:-1])
    d = np.maximum.reduceat(np.where(last, np.abs(gap), 0.0), starts)
    root = np.sqrt(n * m / (n + m))
    return d, np.minimum(1.0, kolmogorov((root + 0.12 + 0.11 / root) * d))


def ks_2samp(values: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """`ks_many` of one pair: (D, p-value)."""
    d, p = ks_many([values], [reference])
    return float(d[0]), float(p[0])
