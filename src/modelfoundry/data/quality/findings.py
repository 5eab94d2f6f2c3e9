"""What a data check finds: one Finding per problem (its kind, severity, columns, a number and a one-line fix), and
the rules `--fail-on` applies to them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from modelfoundry.errors import ConfigError, did_you_mean

SEVERITIES = ("info", "warning", "error")  # in increasing order
KINDS = {  # finding kind -> what it means (documents the --fail-on names)
    "missing": "missing values in a column (or an all-missing column)",
    "target_missing": "rows without a target value",
    "duplicates": "rows repeated exactly",
    "near_duplicates": "rows equal after normalising text (strip, lowercase) and rounding numbers",
    "conflicting_targets": "identical feature rows with different targets",
    "constant": "a column with one value (or almost only one)",
    "id_like": "a column unique per row: a row number, key or UUID",
    "high_cardinality": "a categorical column with very many distinct values",
    "mixed_types": "a column holding both numbers and text",
    "imbalance": "a rare class",
    "outliers": "values far outside the interquartile range",
    "leakage": "a column that alone predicts the target almost perfectly",
    "shift": "a column distributed differently in the compared file",
    "adversarial": "a classifier tells the two files apart",
    "pii": "values that look like personal data (emails, phone or card numbers, IBANs, IP addresses)",
}


@dataclass
class Finding:
    """One problem: `value` is its headline number (a share, a score, a count), `detail` the rest of the numbers."""

    kind: str
    severity: str
    columns: list[str]
    value: float
    message: str
    fix: str
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def rank(severity: str) -> int:
    """0 for info, 1 for warning, 2 for error."""
    return SEVERITIES.index(severity)


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Errors first, then warnings, then info; within one severity by kind, then by the size of the number."""
    order = list(KINDS)
    return sorted(findings, key=lambda f: (-rank(f.severity), order.index(f.kind) if f.kind in order else len(order),
                                           -abs(f.value) if f.value == f.value else 0.0))


def parse_fail_on(text: str | None) -> tuple[str | None, set[str]]:
    """`--fail-on`: a severity ('warning' fails on warnings and errors) and/or finding kinds ('leakage,pii').

    Returns (the lowest failing severity or None, the failing kinds). Unknown names are a ConfigError."""
    if text is None or not text.strip() or text.strip() == "never":
        return None, set()
    level, kinds = None, set()
    for name in (part.strip() for part in text.split(",") if part.strip()):
        if name in SEVERITIES:
            level = name if level is None or rank(name) < rank(level) else level
        elif name in KINDS:
            kinds.add(name)
        else:
            choices = [*SEVERITIES, *KINDS, "never"]
            raise ConfigError(f"--fail-on names '{name}', which is neither a severity nor a finding kind."
                              f"{did_you_mean(name, choices)}",
                              f"Use a severity ({', '.join(SEVERITIES)}), finding kinds ({', '.join(KINDS)}) or "
                              "both, comma-separated, e.g. --fail-on error,pii.")
    return level, kinds


def failing(findings: Sequence[Finding], fail_on: str | None) -> list[Finding]:
    """The findings that `fail_on` (see parse_fail_on) fails on."""
    level, kinds = parse_fail_on(fail_on)
    return [f for f in findings if f.kind in kinds or (level is not None and rank(f.severity) >= rank(level))]


def share(part: float, whole: float) -> float:
    """part / whole, 0 for an empty whole."""
    return float(part) / float(whole) if whole else 0.0


def percent(value: float) -> str:
    """A share as a short percentage: 0.1234 -> '12.3%', tiny non-zero shares as '<0.1%'."""
    if 0 < value < 0.001:
        return "<0.1%"
    if 0.999 < value < 1:
        return ">99.9%"
    return f"{100 * value:.1f}%"


def counted(n: int, noun: str) -> str:
    """'1 error', '3 errors'."""
    return f"{n} {noun}{'s' * (n != 1)}"


def summary(findings: Sequence[Finding]) -> str:
    """'1 error, 2 warnings, 0 notes'."""
    return ", ".join(counted(sum(f.severity == s for f in findings), noun)
                     for s, noun in (("error", "error"), ("warning", "warning"), ("info", "note")))
