"""Evaluate model outputs on a split and write eval/: metrics.json, plots, errors.json, report.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelfoundry.config import EvaluationConfig
from modelfoundry.evaluate import report
from modelfoundry.evaluate.metrics import classification_metrics, confusion, headline, regression_metrics


def evaluate_outputs(*, task: str, y_true: np.ndarray, output: np.ndarray, rows: np.ndarray, target_encoder: Any,
                     cfg: EvaluationConfig, out_dir: Path, history: list[dict[str, Any]] | None = None,
                     baselines: dict[str, float] | None = None, title: str = "Evaluation",
                     facts: dict[str, Any] | None = None, split: str = "test split") -> dict[str, float]:
    """Compute the metrics of `output` against `y_true` (encoded targets) and write the eval directory.

    `split` names the rows evaluated ("test split", or a data file's name) in the report and plots.
    Returns the flat metrics dict written to metrics.json (model metrics, then baseline_* entries).
    """
    short = split.removesuffix(" split")
    from modelfoundry.storage import write_json, write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    plots: list[str] = []
    pairs: list[tuple[str, str, int]] = []
    if task == "classification":
        labels = [str(c) for c in target_encoder.classes_]
        metrics = classification_metrics(y_true, output, cfg.top_k)
        cm = confusion(y_true, output.argmax(1), len(labels))
        pairs = report.confused_pairs(cm, labels)
        hardest = report.hardest_examples(task, y_true, output, rows, labels, cfg.confused_examples)
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
    write_text(out_dir / "report.md", text)
    return metrics
