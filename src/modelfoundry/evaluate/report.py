"""Error analysis, PNG plots (matplotlib figures drawn with Agg, without pyplot) and eval/report.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def hardest_examples(task: str, y_true: np.ndarray, output: np.ndarray, rows: np.ndarray, labels: list[str],
                     n: int, predicted: np.ndarray | None = None) -> list[dict[str, Any]]:
    """The `n` test rows the model got most wrong: lowest probability on the true class, or largest error.

    `output` is (N, K) probabilities for classification, (N,) predictions in target units for regression;
    `rows` are the rows' numbers in the source data; `predicted`: the classes predicted when not the most probable
    ones (a tuned decision threshold's).
    """
    if n == 0 or len(y_true) == 0:
        return []
    if task == "classification":
        p_true = output[np.arange(len(y_true)), y_true]
        pred = output.argmax(1) if predicted is None else predicted
        order = [i for i in np.argsort(p_true) if pred[i] != y_true[i]][:n]
        return [{"row": int(rows[i]), "true": labels[y_true[i]], "predicted": labels[pred[i]],
                 "p_predicted": float(output[i, pred[i]]), "p_true": float(p_true[i])} for i in order]
    errors = np.abs(output - y_true)
    if errors.ndim == 2:  # forecasts of H steps: the mean error over the steps, the values as lists
        errors = errors.mean(axis=1)
    order = np.argsort(-errors)[:n]
    return [{"row": int(rows[i]), "true": np.asarray(y_true[i], dtype=float).tolist(),
             "predicted": np.asarray(output[i], dtype=float).tolist(), "abs_error": float(errors[i])} for i in order]


def confused_pairs(cm: np.ndarray, labels: list[str], n: int = 5) -> list[tuple[str, str, int]]:
    """(true, predicted, count) for the most frequent off-diagonal cells of the confusion matrix."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None)[:n]
    pairs = [np.unravel_index(i, off.shape) for i in flat]
    return [(labels[t], labels[p], int(off[t, p])) for t, p in pairs if off[t, p] > 0]


def _figure(figsize: tuple[float, float]) -> Any:
    """A bare matplotlib Figure: no pyplot (its import and its figure registry cost ~30 ms a plot) and no
    backend to choose (saving a PNG draws with Agg); the files are byte for byte what pyplot writes."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def plot_learning_curves(history: list[dict[str, Any]], path: Path) -> None:
    epochs = [r["epoch"] for r in history]
    metric = next((k for k in ("val_accuracy", "val_r2") if history and k in history[0]), None)
    fig = _figure((10 if metric else 5, 3.6))
    axes = fig.subplots(1, 2 if metric else 1, squeeze=False)
    axes[0, 0].plot(epochs, [r["train_loss"] for r in history], label="train")
    axes[0, 0].plot(epochs, [r["val_loss"] for r in history], label="validation")
    axes[0, 0].set(xlabel="epoch", ylabel="loss", title="Loss")
    axes[0, 0].legend()
    if metric:
        axes[0, 1].plot(epochs, [r[metric] for r in history], color="tab:green")
        axes[0, 1].set(xlabel="epoch", ylabel=metric, title=metric.replace("_", " "))
    _save(fig, path)


def plot_confusion(cm: np.ndarray, labels: list[str], path: Path, split: str = "test") -> None:
    size = min(12.0, 2.5 + 0.45 * len(labels))
    fig = _figure((size, size * 0.85))
    ax = fig.subplots()
    image = ax.imshow(cm, cmap="Blues")
    ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xticklabels=labels, yticklabels=labels,
           xlabel="predicted", ylabel="true", title=f"Confusion matrix ({split})")
    if len(labels) <= 20:
        for (t, p), count in np.ndenumerate(cm):
            ax.text(p, t, str(count), ha="center", va="center",
                    color="white" if count > cm.max() / 2 else "black", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046)
    _save(fig, path)


def plot_roc(y_true: np.ndarray, proba: np.ndarray, labels: list[str], path: Path, split: str = "test") -> None:
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = _figure((5, 4.5))
    ax = fig.subplots()
    classes = [1] if proba.shape[1] == 2 else range(proba.shape[1])
    for k in list(classes)[:10]:
        hits = (y_true == k).astype(int)
        if 0 < hits.sum() < len(hits):
            fpr, tpr, _ = roc_curve(hits, proba[:, k])
            ax.plot(fpr, tpr, label=f"{labels[k]} (AUC {roc_auc_score(hits, proba[:, k]):.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC ({split}, one-vs-rest)")
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_regression(y_true: np.ndarray, y_pred: np.ndarray, path: Path, split: str = "test") -> None:
    fig = _figure((10, 4))
    axes = fig.subplots(1, 2)
    axes[0].scatter(y_true, y_pred, s=10, alpha=0.7)
    lo, hi = float(min(y_true.min(), y_pred.min())), float(max(y_true.max(), y_pred.max()))
    axes[0].plot([lo, hi], [lo, hi], "--", color="grey")
    axes[0].set(xlabel="actual", ylabel="predicted", title=f"Predicted vs actual ({split})")
    axes[1].scatter(y_pred, y_true - y_pred, s=10, alpha=0.7)
    axes[1].axhline(0, color="grey", linestyle="--")
    axes[1].set(xlabel="predicted", ylabel="residual", title=f"Residuals ({split})")
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)


BASELINES = ("linear", "dummy", "last_value", "seasonal_naive")  # in the order reports show them


def baselines_present(metrics: dict[str, float]) -> list[str]:
    """The baselines with metrics in `metrics` (dummy and linear; for a time series linear, last value and
    seasonal naive)."""
    return [b for b in BASELINES if any(k.startswith(f"baseline_{b}_") for k in metrics)]


def baselines_table(metrics: dict[str, float], names: list[str], baselines: list[str], split: str, model: str,
                    headers: list[str]) -> list[str]:
    """Markdown lines: a "Model vs baselines" table of `names`, the model's value beside each baseline's
    (`baseline_<b>_<name>`; `-` where one has none), with a blank line after it."""
    lines = [f"## Model vs baselines ({split})", "", f"| metric | {model} | " + " | ".join(headers) + " |",
             "|---|---|" + "---|" * len(baselines)]
    for name in names:
        cells = [metrics.get(name), *(metrics.get(f"baseline_{b}_{name}") for b in baselines)]
        lines.append(f"| {name} | " + " | ".join("-" if c is None else f"{c:.4f}" for c in cells) + " |")
    return lines + [""]


def render_report(title: str, metrics: dict[str, float], headline: list[str], hardest: list[dict[str, Any]],
                  pairs: list[tuple[str, str, int]], plots: list[str], facts: dict[str, Any],
                  split: str = "test split") -> str:
    """eval/report.md: headline metrics beside both baselines, all metrics, error analysis, plots.

    `split` names the rows evaluated ("test split", or a data file's name) in every heading.
    """
    lines = [f"# {title}", ""]
    lines += [f"- **{k}**: {v}" for k, v in facts.items()] + [""]
    if any(k.startswith("baseline_") for k in metrics):
        shown = baselines_present(metrics)
        table = baselines_table(metrics, headline, shown, split, "model", [f"{b.replace('_', ' ')} baseline"
                                                                          for b in shown])
        if "baseline_season" in metrics:
            table[2:2] = [f"Seasonal naive repeats the value {metrics['baseline_season']:g} steps earlier.", ""]
        lines += table
    lines += [f"## All metrics ({split})", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items() if not k.startswith("baseline_")]
    if pairs:
        lines += ["", "## Most confused classes", "", "| true | predicted as | count |", "|---|---|---|"]
        lines += [f"| {t} | {p} | {c} |" for t, p, c in pairs]
    if hardest:
        keys = list(hardest[0])
        lines += ["", f"## Hardest examples ({split})", "", "Rows are numbered as in the source data.", "",
                  "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_cell(e[k]) for k in keys) + " |" for e in hardest]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
