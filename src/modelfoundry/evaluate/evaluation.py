"""Evaluate model outputs on a split and write eval/: metrics.json, plots, errors.json, report.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelfoundry.artifacts.records import decide_classes
from modelfoundry.config import EvaluationConfig
from modelfoundry.evaluate import report
from modelfoundry.evaluate.metrics import classification_metrics, confusion, headline, regression_metrics


def evaluate_outputs(*, task: str, y_true: np.ndarray, output: np.ndarray, rows: np.ndarray, target_encoder: Any,
                     cfg: EvaluationConfig, out_dir: Path, history: list[dict[str, Any]] | None = None,
                     baselines: dict[str, float] | None = None, title: str = "Evaluation",
                     facts: dict[str, Any] | None = None, split: str = "test split",
                     threshold: dict[str, Any] | None = None) -> dict[str, float]:
    """Compute the metrics of `output` against `y_true` (encoded targets) and write the eval directory.

    `split` names the rows evaluated ("test split", or a data file's name) in the report and plots. `threshold`:
    a binary classifier's tuned decision threshold (model.json); the metrics that depend on the predicted class
    are then taken at it, and the report adds them at 0.5 beside.
    Returns the flat metrics dict written to metrics.json (model metrics, then baseline_* entries).
    """
    short = split.removesuffix(" split")
    from modelfoundry.storage import write_json, write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    plots: list[str] = []
    pairs: list[tuple[str, str, int]] = []
    decision: list[str] = []
    if task == "classification":
        labels = [str(c) for c in target_encoder.classes_]
        pred = decide_classes(output, threshold)
        metrics = classification_metrics(y_true, output, cfg.top_k, pred)
        if threshold is not None:
            metrics, decision = _at_threshold(metrics, y_true, output, pred, threshold, cfg, split)
        cm = confusion(y_true, pred, len(labels))
        pairs = report.confused_pairs(cm, labels)
        hardest = report.hardest_examples(task, y_true, output, rows, labels, cfg.confused_examples, pred)
        write_json(out_dir / "confusion_matrix.json", {"labels": labels, "matrix": cm.tolist()})
        if cfg.plots:
            report.plot_confusion(cm, labels, out_dir / "confusion_matrix.png", short)
            report.plot_roc(y_true, output, labels, out_dir / "roc.png", short)
            plots += ["confusion_matrix.png", "roc.png"]
    else:
        truth, pred = target_encoder.decode(y_true), target_encoder.decode(output)
        metrics = regression_metrics(truth, pred)
        hardest = report.hardest_examples(task, truth, pred, rows, [], cfg.confused_examples)
        if cfg.plots:
            report.plot_regression(truth, pred, out_dir / "predictions.png", short)
            plots.append("predictions.png")
    if history and cfg.plots:
        report.plot_learning_curves(history, out_dir / "curves.png")
        plots.insert(0, "curves.png")
    metrics.update(baselines or {})
    write_json(out_dir / "metrics.json", metrics)
    write_json(out_dir / "errors.json", hardest)
    text = report.render_report(title, metrics, headline(task, cfg.metrics, metrics), hardest, pairs, plots,
                                facts or {}, split)
    if decision:  # before the full list of metrics
        heading = f"## All metrics ({split})"
        text = text.replace(heading, "\n".join(decision[1:]) + "\n\n" + heading, 1)
    write_text(out_dir / "report.md", text)
    return metrics


def _at_threshold(metrics: dict[str, float], y_true: np.ndarray, output: np.ndarray, pred: np.ndarray,
                  threshold: dict[str, Any], cfg: EvaluationConfig, split: str) -> tuple[dict[str, float], list[str]]:
    """The metrics at a tuned threshold with the positive class's precision/recall/F1 and `decision_threshold`
    added, and the report's section comparing them with the metrics at 0.5."""
    from modelfoundry.evaluate.threshold import positive_metrics, report_lines

    positive = int(threshold["positive_index"])
    at_default = {**classification_metrics(y_true, output, cfg.top_k),
                  **positive_metrics(y_true, output.argmax(1), positive)}
    metrics = {**metrics, **positive_metrics(y_true, pred, positive), "decision_threshold": float(threshold["value"])}
    return metrics, report_lines(threshold, metrics, at_default, split)
