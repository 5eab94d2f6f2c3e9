"""Run the data checks on a table: `check_frame` is `foundry data check`; `quick_check` the part `foundry run` runs
before training (well under a second on typical data)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelfoundry.data.quality.findings import Finding, sort_findings
from modelfoundry.errors import DataError, did_you_mean

if TYPE_CHECKING:
    import pandas as pd

GROUP_OVER = 8  # more single-column findings of one kind and severity than this become one finding
QUICK_ROWS = 20_000  # the quick check looks at this many rows at most (a seeded sample)
QUICK_CELLS = 1_000_000  # ... and scores leakage on at most this many rows x columns


@dataclass
class CheckResult:
    """What the checks found about one table (and the one compared with it)."""

    source: str
    rows: int
    columns: int
    target: str | None
    task: str | None
    kinds: dict[str, str]  # column -> numeric | categorical | text | other
    findings: list[Finding]
    compare: str | None = None
    leakage: list[dict[str, Any]] = field(default_factory=list)  # every column's single-feature score
    timings_s: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        counts = {s: sum(f.severity == s for f in self.findings) for s in ("error", "warning", "info")}
        return finite({"source": self.source, "compare": self.compare, "rows": self.rows, "columns": self.columns,
                       "target": self.target, "task": self.task, "counts": counts, "kinds": self.kinds,
                       "findings": [f.to_json() for f in self.findings], "leakage_scores": self.leakage,
                       "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()}})


def finite(value: Any) -> Any:
    """`value` with NaN and infinite floats as None (findings.json stays strict JSON), numpy numbers as Python's."""
    import math

    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def check_frame(frame: pd.DataFrame, *, source: str, target: str | None = None, task: str = "auto",
                compare: pd.DataFrame | None = None, compare_name: str | None = None, seed: int = 0,
                kinds: dict[str, str] | None = None, quick: bool = False) -> CheckResult:
    """Every check on `frame`: columns, rows, the target (when given), leakage, PII, and shift against `compare`.

    Args:
        source: how the table is named in messages (a path or bundled name).
        target: the column to predict; without it the target checks and leakage are skipped.
        task: classification, regression or auto (decided from the target's values).
        kinds: column kinds to use instead of the inferred ones (a config's data.features types).
        quick: only what fits well under a second: a sample of QUICK_ROWS rows, no shift.
    """
    _check_table(frame, source, target)
    if quick and len(frame) > QUICK_ROWS:
        frame = frame.sample(QUICK_ROWS, random_state=seed)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    inferred, numbers = _kinds(frame, kinds or {})
    task = _task(frame, target, task) if target is not None else None
    findings, leakage = _table_findings(frame, target, task, inferred, numbers, seed, timings, quick)
    timings["columns"] = time.perf_counter() - started - sum(timings.values())
    if compare is not None and not quick:
        findings += _compare(frame, compare, compare_name or "the compared file", inferred, target, seed, timings)
    return CheckResult(source, len(frame), len(frame.columns), target, task, inferred,
                       sort_findings(condense(findings)), compare_name, leakage, timings)


def quick_check(frame: pd.DataFrame, *, source: str, target: str | None, task: str = "auto",
                seed: int = 0) -> CheckResult:
    """The checks `foundry run` runs on its loaded rows before training: all but the comparison, on a sample."""
    return check_frame(frame, source=source, target=target, task=task, seed=seed, quick=True)


def _check_table(frame: pd.DataFrame, source: str, target: str | None) -> None:
    if not len(frame.columns):
        raise DataError(f"{source} has no columns.", "Point at a table with a header row and data rows.")
    if len(frame) == 0:
        raise DataError(f"{source} has no rows.", "Point at a table with data rows.")
    if target is not None and target not in frame.columns:
        shown = ", ".join(f"'{c}'" for c in list(frame.columns)[:12])
        raise DataError(f"Target column '{target}' is not in {source}.{did_you_mean(target, frame.columns)} "
                        f"Columns: {shown}{' ...' if len(frame.columns) > 12 else ''}.",
                        "Pass --target with one of its columns (or leave it out to check the table alone).")
    if frame.columns.duplicated().any():
        twice = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
        raise DataError(f"{source} has duplicated column names: {', '.join(twice[:10])}.",
                        "Give every column a distinct name.")


def _kinds(frame: pd.DataFrame, given: dict[str, str]) -> tuple[dict[str, str], dict[str, float]]:
    import pandas as pd

    from modelfoundry.data.quality.columns import column_kind

    kinds, numbers = {}, {}
    for column, dtype in frame.dtypes.items():
        plain = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
        if pd.api.types.is_complex_dtype(dtype):
            kind, part = "other", 0.0
        else:
            kind, part = ("numeric", 1.0) if plain else column_kind(frame[column])
        kinds[column], numbers[column] = given.get(column, kind), part
    return kinds, numbers


def _task(frame: pd.DataFrame, target: str, task: str) -> str:
    from modelfoundry.data.clean import infer_task

    if task in ("classification", "regression"):
        return task
    labels = frame[target].dropna()
    if labels.empty:
        return "classification"
    return infer_task(labels, "auto")


def _table_findings(frame: pd.DataFrame, target: str | None, task: str | None, kinds: dict[str, str],
                    numbers: dict[str, float], seed: int, timings: dict[str, float],
                    quick: bool = False) -> tuple[list[Finding], list]:
    from modelfoundry.data.quality import columns as col
    from modelfoundry.data.quality import leakage, pii, rows

    features = [c for c in frame.columns if c != target]
    by_kind = {k: [c for c in features if kinds[c] == k] for k in ("numeric", "categorical", "text")}
    findings = col.missing_findings(frame, features)
    findings += col.numeric_findings(frame, by_kind["numeric"])
    findings += col.categorical_findings(frame, by_kind["categorical"])
    findings += col.mixed_findings(frame, features, numbers)
    started = time.perf_counter()
    findings += rows.duplicate_findings(frame, target, task)
    timings["rows"] = time.perf_counter() - started
    started = time.perf_counter()
    findings += pii.pii_findings(frame, features, seed)
    timings["pii"] = time.perf_counter() - started
    scores = []
    if target is not None:
        findings += rows.target_findings(frame, target, task)
        started = time.perf_counter()
        scores = leakage.score_columns(frame, target, task, kinds, seed,
                                       QUICK_CELLS if quick else leakage.MAX_CELLS)
        ids = {c for f in findings if f.kind == "id_like" for c in f.columns}
        findings += leakage.leakage_findings(scores, task, target, ids)
        timings["leakage"] = time.perf_counter() - started
    return findings, [{"column": s.column, "score": round(s.score, 4), "skill": round(s.skill, 4),
                       "auc": None if s.auc is None else round(s.auc, 4)} for s in scores]


def _compare(frame: pd.DataFrame, other: pd.DataFrame, name: str, kinds: dict[str, str], target: str | None,
             seed: int, timings: dict[str, float]) -> list[Finding]:
    from modelfoundry.data.quality.adversarial import adversarial_findings, separability
    from modelfoundry.data.quality.shift import shift_findings

    if len(other) == 0 or not len(other.columns):
        raise DataError(f"{name} has no rows or no columns to compare with.", "Pass --compare a table with data rows.")
    started = time.perf_counter()
    features = [c for c in frame.columns if c != target]
    findings = shift_findings(frame[features], other, kinds, name, seed)
    timings["shift"] = time.perf_counter() - started
    started = time.perf_counter()
    findings += adversarial_findings(separability(frame, other, features, kinds, seed), name)
    timings["adversarial"] = time.perf_counter() - started
    return findings


def condense(findings: list[Finding]) -> list[Finding]:
    """Many single-column findings of one kind and severity (784 near-constant pixels) become one, listing them."""
    groups: dict[tuple[str, str], list[Finding]] = {}
    for f in findings:
        if len(f.columns) == 1 and f.kind not in ("leakage", "pii", "target_missing", "imbalance"):
            groups.setdefault((f.kind, f.severity), []).append(f)
    out = [f for f in findings if not (len(f.columns) == 1 and len(groups.get((f.kind, f.severity), [])) > GROUP_OVER)]
    for (kind, severity), members in groups.items():
        if len(members) <= GROUP_OVER:
            continue
        named = ", ".join(f"'{m.columns[0]}'" for m in members[:5])
        worst = max(members, key=lambda m: m.value)
        out.append(Finding(kind, severity, [m.columns[0] for m in members], worst.value,
                           f"{len(members)} columns: {named} and {len(members) - 5} more. The largest: "
                           f"{worst.message}", worst.fix.replace(worst.columns[0], "<column>"),
                           {"columns": {m.columns[0]: m.value for m in members}}))
    return out
