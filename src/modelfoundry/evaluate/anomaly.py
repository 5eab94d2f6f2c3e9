"""Evaluate an anomaly detector (`data.task: anomaly`) on a split and write eval/: metrics.json, errors.json
(the highest-scoring rows), scores.png (the score distribution by class, the threshold marked), curves.png and
report.md.

With labels (anomaly = positive): precision, recall and f1 at the threshold, ROC-AUC and average precision over
the scores, the confusion counts, and the false-alarm rate observed on the normal rows; beside them two
baselines fitted on the same normal training rows and calibrated the same way: an IsolationForest and the
Mahalanobis distance to the normal rows' mean (Ledoit-Wolf covariance). Without labels: the score distribution
and the share of rows flagged.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from modelfoundry.artifacts.inputs import Inputs, features_matrix

LABELLED_HEADLINE = ["roc_auc", "average_precision", "f1", "precision", "recall"]
UNLABELLED_HEADLINE = ["flagged_share", "threshold"]
BASELINES = ("isolation_forest", "mahalanobis")


def anomaly_metrics(scores: np.ndarray, is_anomaly: np.ndarray | None, threshold: float) -> dict[str, float]:
    """Metrics of `scores` (N,) flagged above `threshold`; `is_anomaly` (N,) the truth, None without labels."""
    from sklearn import metrics as skm

    scores = np.asarray(scores, dtype=np.float64)
    flagged = scores > threshold
    out: dict[str, float] = {"threshold": float(threshold), "flagged_share": float(flagged.mean()) if len(scores)
                             else 0.0}
    if is_anomaly is None or len(scores) == 0:
        for q in (50, 90, 99):
            out[f"score_p{q}"] = float(np.percentile(scores, q)) if len(scores) else math.nan
        out["score_mean"] = float(scores.mean()) if len(scores) else math.nan
        return {k: v for k, v in out.items() if not math.isnan(v)}
    truth = np.asarray(is_anomaly).astype(bool)
    tp, fp = int((flagged & truth).sum()), int((flagged & ~truth).sum())
    fn, tn = int((~flagged & truth).sum()), int((~flagged & ~truth).sum())
    out.update({"precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0,
                "tp": tp, "fp": fp, "tn": tn, "fn": fn, "false_alarm_rate": fp / (fp + tn) if fp + tn else 0.0})
    out["f1"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    if 0 < truth.sum() < len(truth):  # both classes present
        out["roc_auc"] = float(skm.roc_auc_score(truth, scores))
        out["average_precision"] = float(skm.average_precision_score(truth, scores))
    return {k: float(v) for k, v in out.items()}


def baseline_scores(X: dict[str, Inputs], false_alarm_rate: float, seed: int = 0) -> dict[str, tuple[np.ndarray,
                                                                                                      float]]:
    """Each baseline's test scores and threshold: fitted on X['train'] (normal rows), calibrated on X['val']
    (normal rows) to `false_alarm_rate` exactly as the autoencoder is; higher scores are more anomalous."""
    from sklearn.covariance import LedoitWolf
    from sklearn.ensemble import IsolationForest

    from modelfoundry.models.autoencoder import calibrate_threshold

    train, val, test = (features_matrix(X[s]).astype(np.float64) for s in ("train", "val", "test"))
    forest = IsolationForest(n_estimators=200, random_state=seed).fit(train)
    covariance = LedoitWolf().fit(train)
    scorers = {"isolation_forest": lambda a: -forest.score_samples(a), "mahalanobis": covariance.mahalanobis}
    return {name: (score(test), calibrate_threshold(score(val), false_alarm_rate)) for name, score in scorers.items()}


def baseline_metrics(X: dict[str, Inputs], is_anomaly: np.ndarray | None, false_alarm_rate: float,
                     seed: int = 0) -> dict[str, float]:
    """Test-split metrics of both baselines, keyed `baseline_<name>_<metric>`."""
    out: dict[str, float] = {}
    for name, (scores, threshold) in baseline_scores(X, false_alarm_rate, seed).items():
        out.update({f"baseline_{name}_{k}": v for k, v in anomaly_metrics(scores, is_anomaly, threshold).items()})
    return out


def headline(metrics: dict[str, float]) -> list[str]:
    """The metrics shown first: ranking and detection quality with labels, else the share flagged."""
    names = LABELLED_HEADLINE if "precision" in metrics else UNLABELLED_HEADLINE
    return [n for n in names if n in metrics]


def evaluate_anomaly(*, scores: np.ndarray, is_anomaly: np.ndarray | None, threshold: float, rows: np.ndarray,
                     out_dir: Path, plots: bool = True, top: int = 10, history: list[dict[str, Any]] | None = None,
                     baselines: dict[str, float] | None = None, title: str = "Evaluation",
                     facts: dict[str, Any] | None = None, split: str = "test split") -> dict[str, float]:
    """Compute the metrics of `scores` and write the eval directory (see the module docstring).

    Returns the flat metrics dict written to metrics.json (the model's, then baseline_* entries)."""
    from modelfoundry.evaluate.report import plot_learning_curves
    from modelfoundry.storage import write_json, write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = anomaly_metrics(scores, is_anomaly, threshold)
    shown: list[str] = []
    if history and plots:  # the loop's val_r2 of an autoencoder is meaningless (its targets are constant)
        plot_learning_curves([{k: v for k, v in r.items() if k != "val_r2"} for r in history], out_dir / "curves.png")
        shown.append("curves.png")
    if plots and len(scores):
        plot_scores(scores, is_anomaly, threshold, out_dir / "scores.png", split.removesuffix(" split"))
        shown.append("scores.png")
    metrics.update(baselines or {})
    highest = top_rows(scores, is_anomaly, threshold, rows, top)
    write_json(out_dir / "metrics.json", metrics)
    write_json(out_dir / "errors.json", highest)
    write_text(out_dir / "report.md", render(title, metrics, highest, shown, facts or {}, split))
    return metrics


def top_rows(scores: np.ndarray, is_anomaly: np.ndarray | None, threshold: float, rows: np.ndarray,
             n: int) -> list[dict[str, Any]]:
    """The `n` highest-scoring rows (numbered as in the source data), with their label when known."""
    order = np.argsort(-np.asarray(scores))[:n]
    out = []
    for i in order:
        entry: dict[str, Any] = {"row": int(rows[i]), "score": float(scores[i]), "flagged": bool(scores[i] > threshold)}
        if is_anomaly is not None:
            entry["anomaly"] = bool(is_anomaly[i])
        out.append(entry)
    return out


def plot_scores(scores: np.ndarray, is_anomaly: np.ndarray | None, threshold: float, path: Path,
                split: str = "test") -> None:
    """Histogram of the scores (log scale; by class when labelled) with the threshold as a vertical line."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    values = np.log10(np.maximum(np.asarray(scores, dtype=np.float64), 1e-12))
    bins = np.histogram_bin_edges(values, bins=40)
    groups = [("all rows", np.ones(len(values), bool))] if is_anomaly is None else [
        ("normal", ~np.asarray(is_anomaly, bool)), ("anomaly", np.asarray(is_anomaly, bool))]
    for label, mask in groups:
        if mask.any():
            ax.hist(values[mask], bins=bins, alpha=0.6, label=f"{label} ({int(mask.sum())})")
    ax.axvline(math.log10(max(threshold, 1e-12)), color="black", linestyle="--", label="threshold")
    ax.set(xlabel="log10 anomaly score", ylabel="rows", title=f"Anomaly scores ({split})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def render(title: str, metrics: dict[str, float], highest: list[dict[str, Any]], plots: list[str],
           facts: dict[str, Any], split: str) -> str:
    """eval/report.md: headline metrics beside both baselines, all metrics, the highest-scoring rows, plots."""
    lines = [f"# {title}", ""] + [f"- **{k}**: {v}" for k, v in facts.items()] + [""]
    names = headline(metrics)
    present = [b for b in BASELINES if any(k.startswith(f"baseline_{b}_") for k in metrics)]
    if present:
        from modelfoundry.evaluate.report import baselines_table

        lines += baselines_table(metrics, names, present, split, "autoencoder", [b.replace("_", " ") for b in present])
    lines += [f"## All metrics ({split})", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.6g} |" for k, v in metrics.items() if not k.startswith("baseline_")]
    if highest:
        keys = list(highest[0])
        lines += ["", f"## Highest anomaly scores ({split})", "", "Rows are numbered as in the source data.", "",
                  "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(f"{e[k]:.6g}" if isinstance(e[k], float) else str(e[k]) for k in keys) + " |"
                  for e in highest]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines) + "\n"
