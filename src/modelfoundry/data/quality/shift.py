"""Distribution shift between two files, column by column: the two-sample Kolmogorov-Smirnov test for numbers,
the population stability index (PSI) with a chi-squared test for categories. (The monitor has its own drift tests;
the data stage does not import it.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from modelfoundry.data.quality.findings import Finding

if TYPE_CHECKING:
    import pandas as pd

MAX_ROWS = 20_000  # rows per file compared (a seeded sample beyond)
KS_WARN, KS_INFO = 0.2, 0.1  # KS statistic
PSI_WARN, PSI_INFO = 0.25, 0.1  # the usual PSI bands: < 0.1 stable, 0.1-0.25 some shift, > 0.25 shifted
P_VALUE = 0.01
TOP_CATEGORIES = 30  # categories compared one by one; the rest are pooled


def shift_findings(base: pd.DataFrame, other: pd.DataFrame, kinds: dict[str, str], other_name: str,
                   seed: int = 0) -> list[Finding]:
    """A finding per column that is distributed differently in `other` (columns missing from it are one too)."""
    from modelfoundry.data.quality.columns import numeric_values

    base, other = _sample(base, seed), _sample(other, seed)
    findings = []
    absent = [c for c in base.columns if c not in other.columns]
    if absent:
        findings.append(Finding("shift", "error", absent, float(len(absent)), f"{len(absent)} column(s) are missing "
                                f"from {other_name}: {', '.join(absent[:10])}.", "Compare files with the same "
                                "columns (a model needs every input column at predict time).", {}))
    for column in base.columns:
        if column in absent or kinds.get(column) not in ("numeric", "categorical"):
            continue
        if kinds[column] == "numeric":
            finding = _numeric(column, numeric_values(base[column]), numeric_values(other[column]), other_name)
        else:
            finding = _categorical(column, base[column], other[column], other_name)
        if finding is not None:
            findings.append(finding)
    return findings


def _sample(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    return frame.sample(MAX_ROWS, random_state=seed) if len(frame) > MAX_ROWS else frame


def _numeric(column: str, a: pd.Series, b: pd.Series, other_name: str) -> Finding | None:
    from scipy.stats import ks_2samp

    a, b = a.dropna().to_numpy(), b.dropna().to_numpy()
    if len(a) < 2 or len(b) < 2:
        return None
    test = ks_2samp(a, b)
    statistic, p_value = float(test.statistic), float(test.pvalue)
    if statistic < KS_INFO or p_value >= P_VALUE:
        return None
    return Finding("shift", "warning" if statistic >= KS_WARN else "info", [column], statistic,
                   f"'{column}' is distributed differently in {other_name}: KS statistic {statistic:.3f} "
                   f"(p = {p_value:.2g}); median {np.median(a):.4g} vs {np.median(b):.4g}.",
                   "Check how the two files were collected (time, source, units); a model trained on one may not "
                   "transfer to the other. A random split avoids it within one file.",
                   {"test": "ks", "statistic": statistic, "p_value": p_value})


def psi(expected: np.ndarray, actual: np.ndarray, floor: float = 1e-4) -> float:
    """Population stability index of two count vectors over the same bins: sum (a - e) ln(a / e) of the shares."""
    e = np.maximum(expected / max(expected.sum(), 1), floor)
    a = np.maximum(actual / max(actual.sum(), 1), floor)
    return float(np.sum((a - e) * np.log(a / e)))


def _categorical(column: str, a: pd.Series, b: pd.Series, other_name: str) -> Finding | None:
    import pandas as pd
    from scipy.stats import chi2_contingency

    a, b = a.dropna().map(str), b.dropna().map(str)
    if a.empty or b.empty:
        return None
    new = len(set(b.unique()) - set(a.unique()))
    top = a.value_counts().index[:TOP_CATEGORIES]
    a = a.where(a.isin(top), "(other)")
    b = b.where(b.isin(top), "(other)")
    table = pd.concat([a.value_counts().rename("a"), b.value_counts().rename("b")], axis=1).fillna(0)
    score = psi(table["a"].to_numpy(dtype=float), table["b"].to_numpy(dtype=float))
    try:
        p_value = float(chi2_contingency(table.to_numpy().T)[1]) if len(table) > 1 else 1.0
    except ValueError:  # a zero row or column of expected counts
        p_value = 1.0
    if score < PSI_INFO or p_value >= P_VALUE:
        return None
    return Finding("shift", "warning" if score >= PSI_WARN else "info", [column], score,
                   f"'{column}' has different category shares in {other_name}: PSI {score:.3f} (chi-squared "
                   f"p = {p_value:.2g}){f'; {new} categories appear only there' if new else ''}.",
                   "Check how the two files were collected; categories unseen in training are encoded as unknown.",
                   {"test": "psi", "statistic": score, "p_value": p_value})
