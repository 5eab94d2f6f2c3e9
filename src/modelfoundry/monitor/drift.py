"""Drift tests: one window of served values per column against the reference profile.

Tests (`TESTS`, name -> function of (profile, values)):

- `ks` (numeric): the two-sample Kolmogorov-Smirnov test of the window against the reference's quantile
  sketch (ks.py `ks_many`: numpy, the asymptotic p-value; scipy's exact one costs 30x more). Up to 1,000
  reference values the sketch is the sample itself (exact); beyond, it is 1,000 evenly spaced quantiles,
  whose empirical CDF is within 1/2,000 of the reference's, and the p-value is computed as if the reference had
  1,000 rows: it counts more reference noise than there is, so it errs towards "no
  drift" (conservative). Ties (pixel values 0-16) make KS conservative too.
- `psi` (numeric or categorical): population stability index over the reference's decile bins (a bin below
  its minimum and one above its maximum; missing values a bin of their own) or categories; empty shares
  count as 0.0001. Drift above `psi_threshold`.
- `wasserstein` (numeric): the earth mover's distance between the window and the sketch, in reference
  standard deviations (a constant reference column: in the standard deviation of both together, so any
  real change scores high and nothing divides by zero). Drift above `wasserstein_threshold`.
- `chi2` (categorical): chi-squared test of homogeneity of the window's counts against the reference's
  counts (a two-sample test: with a small reference, such as the predictions on a 270-row validation split,
  a goodness-of-fit test against its proportions would raise false alarms). Categories the reference never
  had are pooled (into "<other>" for tokens); categories with an expected count below 5 are merged.
- `jensen_shannon` (categorical): Jensen-Shannon distance (base 2, 0 to 1) between the category shares.
  Drift above `jensen_shannon_threshold`.

`auto` runs KS / chi2 up to `large_sample` window rows and Wasserstein / Jensen-Shannon above (p-values
flag negligible shifts on large samples). Token ids ("<col>:tokens") always get Jensen-Shannon under auto or
chi2: a row's tokens are not independent draws, so a p-value would mean nothing. Before a distance test
(Jensen-Shannon, PSI) on categories, those the window would hold fewer than 100 times are grouped (by
reference share, new categories last) until each group would hold 100, so that a short window's sampling
noise over many categories does not read as drift.

Missing values: a categorical column counts "<missing>" as a category; a numeric one compares its missing
share too (Fisher's exact test, the column's p-value then twice the smaller of the two; for Wasserstein a
change of more than 0.1 in the share is drift; PSI gives missing values a bin).

Alert rule: the input columns' p-values of one window go through Benjamini-Hochberg at `fdr` (with 64 pixel
columns, chance alone must not raise alerts); the prediction column is a question of its own, tested at
`fdr`. Distance tests compare with their thresholds. A window has dataset drift when at least `share` of its
tested input columns drifted; `Alerts` raises a column's alert after `patience` drifted windows in a row.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from modelfoundry.monitor.columns import PREDICTION
from modelfoundry.monitor.ks import ks_many
from modelfoundry.monitor.profile import OTHER, ColumnProfile, Reference, bin_counts

if TYPE_CHECKING:
    from modelfoundry.config.monitor import DriftConfig

P_VALUE_TESTS = ("ks", "chi2")
EMPTY_SHARE = 1e-4  # PSI: the share an empty bin counts as
MIN_EXPECTED = 5.0  # chi2: categories expected fewer times than this are merged
MISSING_SHIFT = 0.1  # Wasserstein: a change in the missing share larger than this is drift
POOL_EXPECTED = 100.0  # distance tests on categories: categories expected fewer times than this are pooled


@dataclass
class ColumnDrift:
    """One column's test in one window."""

    column: str
    kind: str
    test: str
    score: float  # the statistic: KS D, chi2, PSI, Wasserstein in reference std, Jensen-Shannon distance
    p_value: float | None  # p-value tests only
    threshold: float  # p-value tests: the Benjamini-Hochberg cutoff of the window; others: the distance threshold
    drifted: bool
    rows: int  # values tested (tokens for "<col>:tokens")
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class WindowDrift:
    """One window's tests: per column, and whether the data set as a whole drifted."""

    columns: list[ColumnDrift]
    rows: int
    drifted: list[str]  # the drifted columns (the prediction included)
    share: float  # drifted input columns / tested input columns
    dataset_drift: bool
    started: float = 0.0
    ended: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "started": self.started, "ended": self.ended, "drifted": list(self.drifted),
                "share": self.share, "dataset_drift": self.dataset_drift,
                "columns": [c.to_json() for c in self.columns]}


@dataclass
class _Result:
    score: float
    p_value: float | None = None
    note: str = ""
    forced: bool = False  # drift whatever the score (a missing share that jumped)


class Alerts:
    """Column alerts: a column alerts once it drifted in `patience` consecutive windows."""

    def __init__(self, patience: int):
        self.patience = patience
        self.streaks: dict[str, int] = {}

    def update(self, window: WindowDrift) -> dict[str, bool]:
        """Count `window` in; column -> alerting, for the columns it tested."""
        for column in window.columns:
            self.streaks[column.column] = self.streaks.get(column.column, 0) + 1 if column.drifted else 0
        return {c.column: self.streaks[c.column] >= self.patience for c in window.columns}


def compare(reference: Reference, current: dict[str, np.ndarray], config: DriftConfig, rows: int,
            started: float = 0.0, ended: float = 0.0) -> WindowDrift:
    """Test each column of `current` (as `column_values` gives them, PREDICTION included) against `reference`.

    Args:
        reference: the model's reference profile.
        current: column name -> the window's values; columns the reference lacks are skipped.
        config: the `monitor.drift` section (tests, thresholds, fdr, share).
        rows: the window's rows (auto chooses the tests by it).
        started, ended: the window's first and last row times (time.time()).
    """
    results: list[ColumnDrift] = []
    tests = {name: (profile, choose_test(profile, config, rows)) for name in current
             if (profile := reference.profile(name)) is not None}
    together = [name for name, (_, test) in tests.items() if test == "ks"]  # all KS columns in a few numpy calls
    by_ks = dict(zip(together, ks_columns([(tests[name][0], current[name]) for name in together])))
    for name, (profile, test) in tests.items():
        values = current[name]
        try:
            result = by_ks[name] if name in by_ks else TESTS[test](profile, np.asarray(values))
        except (ValueError, TypeError, FloatingPointError, ZeroDivisionError) as exc:  # one column never fails a window
            result = _Result(0.0, None if test not in P_VALUE_TESTS else 1.0, f"not tested: {exc}")
        score = _finite(result.score, nan=0.0, posinf=1e9, neginf=0.0)
        p_value = None if result.p_value is None else min(max(_finite(result.p_value, 1.0, 1.0, 0.0), 0.0), 1.0)
        threshold = _THRESHOLDS[test](config) if p_value is None else config.fdr
        drifted = result.forced or (p_value is None and score > threshold)
        results.append(ColumnDrift(name, profile.kind, test, score, p_value, threshold, drifted, len(values),
                                   result.note))
    _benjamini_hochberg([c for c in results if c.p_value is not None and c.column != PREDICTION], config.fdr)
    for column in results:
        if column.column == PREDICTION and column.p_value is not None:
            column.drifted = column.drifted or column.p_value <= config.fdr
    inputs = [c for c in results if c.column != PREDICTION]
    share = sum(c.drifted for c in inputs) / len(inputs) if inputs else 0.0
    return WindowDrift(results, rows, [c.column for c in results if c.drifted], share,
                       bool(inputs) and share >= config.share, started, ended)


def choose_test(profile: ColumnProfile, config: DriftConfig, rows: int) -> str:
    """The test `config` asks for this column at this window size (see the module docstring)."""
    large = rows > config.large_sample
    if profile.kind == "numeric":
        return config.numeric_test if config.numeric_test != "auto" else ("wasserstein" if large else "ks")
    if profile.name.endswith(":tokens") and config.categorical_test in ("auto", "chi2"):
        return "jensen_shannon"
    return config.categorical_test if config.categorical_test != "auto" else ("jensen_shannon" if large else "chi2")


def _benjamini_hochberg(columns: list[ColumnDrift], fdr: float) -> None:
    """Mark the columns whose p-values Benjamini-Hochberg rejects at `fdr`; each gets the window's cutoff."""
    m = len(columns)
    if not m:
        return
    p = np.array([c.p_value for c in columns])
    ranked = np.sort(p)
    passing = np.flatnonzero(ranked <= fdr * np.arange(1, m + 1) / m)
    cutoff = float(ranked[passing[-1]]) if len(passing) else -1.0
    for column, value in zip(columns, p):
        column.threshold = fdr * (len(passing) if len(passing) else 1) / m
        column.drifted = column.drifted or bool(value <= cutoff)


# ------------------------------------------------------------------------------------------------ tests
def ks(profile: ColumnProfile, values: np.ndarray) -> _Result:
    return ks_columns([(profile, values)])[0]


def ks_columns(columns: list[tuple[ColumnProfile, np.ndarray]]) -> list[_Result]:
    """`ks` of many columns at once (`ks_many`); a column whose values cannot be read is not tested, alone."""
    results: list[_Result | None] = [None] * len(columns)
    ready = []
    for i, (profile, values) in enumerate(columns):
        try:
            present, note, p_missing = _missing(profile, values)
        except (ValueError, TypeError) as exc:
            results[i] = _Result(0.0, 1.0, f"not tested: {exc}")
            continue
        if len(present) and len(profile.quantiles):
            ready.append((i, present, note, p_missing))
        else:
            results[i] = _Result(0.0, 1.0 if p_missing is None else min(1.0, 2 * p_missing), note)
    if ready:
        d, p = ks_many([present for _, present, _, _ in ready], [columns[i][0].quantiles for i, _, _, _ in ready])
        for (i, _, note, p_missing), score, p_value in zip(ready, d.tolist(), p.tolist()):
            results[i] = _Result(score, p_value if p_missing is None else min(1.0, 2 * min(p_value, p_missing)), note)
    return results


def psi(profile: ColumnProfile, values: np.ndarray) -> _Result:
    if profile.kind == "numeric":
        values = np.asarray(values, dtype=np.float64)
        ref_missing = round(profile.missing * profile.n)
        reference = np.append(profile.counts, ref_missing)
        current = np.append(bin_counts(profile.edges, values), int((~np.isfinite(values)).sum()))
    else:
        reference, current = _pool_rare(*_category_counts(profile, values))
    p, q = _shares(reference), _shares(current)
    if p is None or q is None:
        return _Result(0.0)
    p, q = np.maximum(p, EMPTY_SHARE), np.maximum(q, EMPTY_SHARE)
    return _Result(float(np.sum((q - p) * np.log(q / p))))


def wasserstein(profile: ColumnProfile, values: np.ndarray) -> _Result:
    from scipy import stats

    present, note, _ = _missing(profile, values)
    shift = abs((1 - len(present) / len(values) if len(values) else 0.0) - profile.missing)
    if not len(present) or not len(profile.quantiles):
        return _Result(0.0, None, note, forced=shift > MISSING_SHIFT)
    distance = float(stats.wasserstein_distance(present, profile.quantiles))
    scale = profile.std
    if not scale > 1e-12 * max(1.0, abs(profile.mean)):  # a constant reference: both samples' spread
        scale = float(np.concatenate([present, profile.quantiles]).std())
    score = distance / scale if scale > 0 else 0.0
    return _Result(score, None, note, forced=shift > MISSING_SHIFT)


def chi2(profile: ColumnProfile, values: np.ndarray) -> _Result:
    from scipy import stats

    reference, current = _category_counts(profile, values)
    table = np.stack([reference, current]).astype(np.float64)  # (2, K)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or table[1].sum() == 0 or table[0].sum() == 0:
        return _Result(0.0, 1.0)
    merged = _merge_small(table)
    if merged.shape[1] < 2:  # too few rows for chi2 (a rare class of a binary column): the reference's largest
        j = int(np.argmax(table[0]))  # category against the rest, Fisher's exact test
        two = np.stack([table[:, j], table.sum(axis=1) - table[:, j]], axis=1)
        return _Result(_chi2_statistic(two), float(stats.fisher_exact(two.astype(np.int64))[1]), "Fisher's exact test")
    statistic = _chi2_statistic(merged)
    return _Result(statistic, float(stats.chi2.sf(statistic, merged.shape[1] - 1)))


def jensen_shannon(profile: ColumnProfile, values: np.ndarray) -> _Result:
    from scipy.spatial import distance

    reference, current = _pool_rare(*_category_counts(profile, values))
    p, q = _shares(reference), _shares(current)
    if p is None or q is None:
        return _Result(0.0)
    return _Result(float(distance.jensenshannon(p, q, base=2)))


TESTS: dict[str, Callable[[ColumnProfile, np.ndarray], _Result]] = {
    "ks": ks, "psi": psi, "wasserstein": wasserstein, "chi2": chi2, "jensen_shannon": jensen_shannon}
_THRESHOLDS: dict[str, Callable[[Any], float]] = {
    "psi": lambda c: c.psi_threshold, "wasserstein": lambda c: c.wasserstein_threshold,
    "jensen_shannon": lambda c: c.jensen_shannon_threshold, "ks": lambda c: c.fdr, "chi2": lambda c: c.fdr}


# ---------------------------------------------------------------------------------------------- helpers
def _finite(value: float, nan: float, posinf: float, neginf: float) -> float:
    """np.nan_to_num for one number, without its array round trip (40 us a call; two per column per window)."""
    value = float(value)
    if math.isnan(value):
        return nan
    return value if not math.isinf(value) else posinf if value > 0 else neginf


def _missing(profile: ColumnProfile, values: np.ndarray) -> tuple[np.ndarray, str, float | None]:
    """The window's present values, a note on the missing shares, and Fisher's p-value of their difference
    (None when neither side has missing values)."""
    values = np.asarray(values, dtype=np.float64)
    present = values[np.isfinite(values)]
    cur_missing = len(values) - len(present)
    ref_missing = round(profile.missing * profile.n)
    if not cur_missing and not ref_missing:
        return present, "", None
    from scipy import stats

    table = [[ref_missing, profile.n - ref_missing], [cur_missing, len(present)]]
    p_value = float(stats.fisher_exact(table)[1]) if len(values) and profile.n else 1.0
    share = cur_missing / len(values) if len(values) else 0.0
    return present, f"missing share {profile.missing:.3g} -> {share:.3g}", p_value


def _category_counts(profile: ColumnProfile, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference and window counts over the reference's categories plus one bucket of new ones (tokens:
    new ones count as "<other>")."""
    index = {c: i for i, c in enumerate(profile.categories)}
    new = index.get(OTHER, len(profile.categories))
    current = np.zeros(len(profile.categories) + 1, dtype=np.int64)
    if len(values):
        found, counts = np.unique(np.asarray(values, dtype=object).astype(str), return_counts=True)
        for category, count in zip(found, counts):
            current[index.get(str(category), new)] += count
    return np.append(profile.counts, 0), current


def _pool_rare(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Categories the window would hold fewer than POOL_EXPECTED times (at the reference's shares) grouped, in
    order of their reference share and with the new ones last, until each group would hold that many (the two
    most frequent categories are always kept). A distance's sampling noise grows with the categories per value
    (Jensen-Shannon about sqrt(K / (8 n ln 2)), PSI about K / n): 500 tokens against a window of 500 read as
    distance 0.39 on unchanged text, 200 categories in 1,500 rows as Jensen-Shannon 0.2."""
    shares = reference / max(reference.sum(), 1)
    expected = shares * current.sum()
    keep = expected >= POOL_EXPECTED
    keep[np.argsort(-shares[:-1], kind="stable")[:2]] = True
    keep[-1] = False  # the bucket of new categories
    groups: list[list[int]] = []
    pending: list[int] = []
    for i in [int(i) for i in np.argsort(-shares, kind="stable") if not keep[i]]:
        pending.append(i)
        if expected[pending].sum() >= POOL_EXPECTED:
            groups.append(pending)
            pending = []
    if pending:
        groups[-1:] = [(groups[-1] if groups else []) + pending]
    return (np.append(reference[keep], [reference[g].sum() for g in groups]),
            np.append(current[keep], [current[g].sum() for g in groups]))


def _merge_small(table: np.ndarray) -> np.ndarray:
    """(2, K) counts -> columns whose expected counts are all >= MIN_EXPECTED, the small ones pooled (and the
    pool, if still small, merged into the smallest other column)."""
    if not table.size or table.sum() == 0:
        return table
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    small = expected.min(axis=0) < MIN_EXPECTED
    if not small.any():
        return table
    pool, rest = table[:, small].sum(axis=1, keepdims=True), table[:, ~small]
    pool_expected = np.outer(table.sum(axis=1), pool.sum(axis=0)) / table.sum()
    if pool_expected.min() < MIN_EXPECTED and rest.shape[1]:
        j = int(np.argmin(rest.sum(axis=0)))
        rest = rest.copy()
        rest[:, j:j + 1] += pool
        return rest
    return np.concatenate([rest, pool], axis=1)


def _chi2_statistic(table: np.ndarray) -> float:
    """Pearson's statistic of a (2, K) table with no empty row or column."""
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    return float(((table - expected) ** 2 / expected).sum())


def _shares(counts: np.ndarray) -> np.ndarray | None:
    total = counts.sum()
    return counts / total if total > 0 else None
