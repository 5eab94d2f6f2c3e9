"""Champion-challenger: the recent holdout both models are scored on, and the gate that decides whether the
challenger replaces the champion (`foundry retrain`, api/retraining.py, composes them with training).

The new file's row order is time: its last `holdout` share of rows is the recent holdout (never trained on), the
rows before it are the new training rows. Holding out the last rows cannot keep the class proportions
(stratification); a gate metric the holdout cannot give (ROC AUC on one class) is refused with a clear error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelfoundry.errors import ConfigError, DataError

if TYPE_CHECKING:
    import pandas as pd

    from modelfoundry.rundir import SavedModel

EPS = 1e-9  # float noise: 0.96 - 0.95 is 0.010000000000000009
MIN_HOLDOUT_ROWS, MIN_TRAIN_ROWS = 10, 20


@dataclass(frozen=True)
class GateCheck:
    """One metric compared on the holdout. `gain`: how much better the challenger is, whichever way the metric
    points (positive: better); `limit`: the margin to reach (primary) or the tolerance not to exceed (others)."""

    metric: str
    champion: float | None
    challenger: float | None
    gain: float | None
    limit: float
    primary: bool
    passed: bool | None  # None: not computable on the holdout for one of the models (not part of the decision)

    def text(self) -> str:
        numbers = f"{self.metric} {self.challenger:.4f} vs {self.champion:.4f}"
        change = "equal" if abs(self.gain) < 5e-5 else f"{abs(self.gain):.4f} {'better' if self.gain > 0 else 'worse'}"
        if self.primary:
            return f"{numbers} ({change}, {f'margin {self.limit:g}' if self.limit > 0 else 'must be better'})"
        return f"{numbers} ({change}, tolerance {self.limit:g})"


@dataclass
class Decision:
    promote: bool
    checks: list[GateCheck]
    reason: str


def gate(champion: dict[str, float], challenger: dict[str, float], metric: str, others: list[str],
         margin: float, tolerance: float) -> Decision:
    """Promote only if the challenger beats the champion on `metric` by at least `margin` (a tie never promotes)
    and is no worse than `tolerance` on each of `others` (metrics either model lacks are shown, not judged).

    Args:
        champion, challenger: metrics on the same holdout, by name.
        metric: the primary metric; lower is better for those in config.LOWER_IS_BETTER (log_loss, rmse, ...).
        tolerance: in each metric's own units.
    """
    from modelfoundry.config import LOWER_IS_BETTER

    checks = []
    for name in [metric, *(m for m in dict.fromkeys(others) if m != metric)]:
        a, b = champion.get(name), challenger.get(name)
        limit = margin if name == metric else tolerance
        if a is None or b is None or math.isnan(a) or math.isnan(b):
            checks.append(GateCheck(name, a, b, None, limit, name == metric, None))
            continue
        gain = (a - b) if name in LOWER_IS_BETTER else (b - a)
        passed = (gain > EPS and gain >= margin - EPS) if name == metric else -gain <= tolerance + EPS
        checks.append(GateCheck(name, a, b, gain, limit, name == metric, passed))
    if checks[0].passed is None:
        raise DataError(f"The gate metric {metric} could not be computed on the holdout for "
                        f"{'the champion' if checks[0].champion is None else 'the challenger'}.",
                        "Pick another metric (--metric, monitor.retrain.metric) or hold out more rows (--holdout).")
    failed = [c for c in checks if c.passed is False]
    promote = not failed
    shown = [checks[0].text(), *(c.text() for c in failed if not c.primary)]
    if promote:
        judged = [c.metric for c in checks[1:] if c.passed]
        if judged:
            shown.append(f"{', '.join(judged)} within tolerance {tolerance:g}")
    return Decision(promote, checks, f"{'promoted' if promote else 'refused'}: {'; '.join(shown)}")


def gate_metrics(saved: SavedModel, metric: str | None) -> tuple[str, list[str]]:
    """(the gate's metric, the others it must not worsen): monitor.retrain.metric, else the first of
    evaluation.metrics (or the task's defaults); the others are the rest of that headline list."""
    from modelfoundry.config import CLASSIFICATION_METRICS, REGRESSION_METRICS
    from modelfoundry.evaluate.metrics import DEFAULT_HEADLINE

    own = CLASSIFICATION_METRICS if saved.task == "classification" else REGRESSION_METRICS
    listed = [m for m in saved.config.evaluation.metrics or DEFAULT_HEADLINE[saved.task] if m in own]
    primary = metric or (listed[0] if listed else DEFAULT_HEADLINE[saved.task][0])
    if primary not in own:
        raise ConfigError(f"The gate metric {primary} does not apply to a {saved.task} model.",
                          f"Choose one of {', '.join(own)} (--metric, monitor.retrain.metric).")
    return primary, [m for m in listed if m != primary]


def check_columns(saved: SavedModel, frame: pd.DataFrame, origin: str) -> None:
    """The new data must have every input column of the champion and its target."""
    needed = [*saved.preprocessor.columns, saved.record.target]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise DataError(f"{origin} lacks {len(missing)} column(s) the champion needs: {shown}.",
                        "Retrain on data with the champion's input columns and its target "
                        f"'{saved.record.target}' (see `foundry inspect` on the model).")


def split_recent(frame: pd.DataFrame, share: float, target: str, origin: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the new training rows, the recent holdout): the last `share` of the rows (file order is time) are held
    out; rows without a target value are dropped first."""
    labelled = frame[frame[target].notna()].reset_index(drop=True)
    n_hold = int(round(len(labelled) * share))
    if n_hold < MIN_HOLDOUT_ROWS or len(labelled) - n_hold < MIN_TRAIN_ROWS:
        raise DataError(f"{origin} has {len(labelled)} labelled rows: holding out {share:g} of them leaves "
                        f"{n_hold} to compare on and {len(labelled) - n_hold} to train on (at least "
                        f"{MIN_HOLDOUT_ROWS} and {MIN_TRAIN_ROWS} are needed).",
                        "Retrain on more new rows, or change the share with --holdout.")
    return labelled.iloc[:-n_hold], labelled.iloc[-n_hold:]


def check_holdout(recent: pd.DataFrame, target: str, metric: str, origin: str) -> None:
    """ROC AUC needs two classes in the holdout; the last rows of a file may hold only one (no stratification)."""
    classes = recent[target].astype(str).unique()
    if metric == "roc_auc" and len(classes) < 2:
        raise DataError(f"The holdout (the last {len(recent)} rows of {origin}) holds only class {classes[0]!r}, so "
                        "the gate metric roc_auc cannot be computed on it.",
                        "Hold out more rows (--holdout), or gate on another metric (--metric accuracy).")
