"""How good a generator's rows are (`data.task: generative`), judged against held-out real rows:

- **C2ST**, a classifier two-sample test: a gradient-boosted tree ensemble is cross-validated at telling the
  real test rows from as many generated ones (a linear classifier would see little beyond the means); its accuracy is 0.5 when they cannot be told apart, 1.0 when every row can. The
  p-value is the binomial test of its out-of-fold hits against chance (small: the two differ).
- **TSTR**, train on synthetic, test on real (a conditional generator): a logistic regression trained on
  generated rows with their classes, scored on the real test rows; beside TRTR, the same classifier trained on
  the real training rows - the reference a perfect generator would reach.
- **FD**, the Frechet distance between real and generated rows (Gaussians fitted to a fixed random projection of
  at most 64 dimensions): cheap enough to score every epoch (`val_fd`).

Every number is also given for the honest floor: "samples" of Gaussian noise with the training rows' per-feature
mean and standard deviation, clipped to the training range (`baseline_noise_*`; its rows get random classes for
TSTR); and, for a conditional generator, a stronger reference, the same noise fitted per class
(`baseline_class_gaussian_*`). Rows are compared in the model's scale (pixels in [0, 1], standardised columns).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

FD_DIMS = 64
C2ST_FOLDS = 5


def frechet_distance(real: np.ndarray, fake: np.ndarray, dims: int = FD_DIMS) -> float:
    """The Frechet distance between Gaussians fitted to `real` and `fake` (N, F), after projecting both onto
    min(F, dims) fixed random directions."""
    from scipy import linalg

    real, fake = real.reshape(len(real), -1), fake.reshape(len(fake), -1)
    if real.shape[1] > dims:
        projection = np.random.default_rng(0).standard_normal((real.shape[1], dims)) / np.sqrt(dims)
        real, fake = real @ projection, fake @ projection
    mu_r, mu_f = real.mean(0), fake.mean(0)
    cov_r, cov_f = np.atleast_2d(np.cov(real, rowvar=False)), np.atleast_2d(np.cov(fake, rowvar=False))
    ridge = 1e-6 * np.eye(len(cov_r))
    root = linalg.sqrtm((cov_r + ridge) @ (cov_f + ridge))
    return float(((mu_r - mu_f) ** 2).sum() + np.trace(cov_r + cov_f - 2 * np.real(root)))


def epoch_quality(real_val: np.ndarray) -> Callable[[np.ndarray], dict[str, float]]:
    """The per-epoch score of the GAN loop: `val_fd` of generated rows against the validation rows."""
    real = real_val.reshape(len(real_val), -1).astype(np.float64)
    return lambda fake: {"val_fd": frechet_distance(real, fake)}


def c2st(real: np.ndarray, fake: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """(accuracy, p-value) of a cross-validated gradient-boosted classifier telling `real` from `fake` rows."""
    from scipy.stats import binomtest
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x = np.vstack([real.reshape(len(real), -1), fake.reshape(len(fake), -1)])
    y = np.r_[np.ones(len(real)), np.zeros(len(fake))]
    folds = StratifiedKFold(min(C2ST_FOLDS, len(real), len(fake)), shuffle=True, random_state=seed)
    clf = HistGradientBoostingClassifier(max_iter=100, early_stopping=False, random_state=seed)
    hits = int((cross_val_predict(clf, x, y, cv=folds) == y).sum())
    return hits / len(y), float(binomtest(hits, len(y), 0.5, alternative="greater").pvalue)


def class_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    """Test accuracy of a logistic regression trained on (x_train, y_train)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y_train)) < 2:
        return float(np.mean(y_test == y_train[0]))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    clf.fit(x_train.reshape(len(x_train), -1), y_train)
    return float(clf.score(x_test.reshape(len(x_test), -1), y_test))


def noise_like(x_train: np.ndarray, y_train: np.ndarray | None, labels: np.ndarray | None, n: int,
               seed: int) -> np.ndarray:
    """`n` rows of Gaussian noise with the training rows' per-feature mean and std (per class of `labels` when
    given), clipped to the training range: the floor every generator must beat."""
    rng = np.random.default_rng(seed)
    flat = x_train.reshape(len(x_train), -1)
    low, high = flat.min(0), flat.max(0)
    out = np.empty((n, flat.shape[1]))
    groups = [(np.arange(n), flat)] if labels is None else \
        [(np.flatnonzero(labels == c), flat[y_train == c] if (y_train == c).any() else flat) for c in np.unique(labels)]
    for where, rows in groups:
        out[where] = rng.normal(rows.mean(0), rows.std(0), (len(where), flat.shape[1]))
    return np.clip(out, low, high).reshape(n, *x_train.shape[1:])


def quality_metrics(sample: Callable[[np.ndarray | None, int], np.ndarray], x_train: np.ndarray, y_train: np.ndarray,
                    x_test: np.ndarray, y_test: np.ndarray, conditional: bool, seed: int = 0) -> dict[str, float]:
    """C2ST, FD and (conditional) TSTR/TRTR of the generator `sample(labels, n)`, and of the noise baseline."""
    metrics: dict[str, float] = {}
    test_labels = y_test if conditional else None
    train_labels = y_train if conditional else None
    candidates = {"": sample, "baseline_noise_": lambda labels, n: noise_like(x_train, None, None, n, seed)}
    if conditional:
        candidates["baseline_class_gaussian_"] = lambda labels, n: noise_like(x_train, y_train, labels, n, seed)
    for prefix, draw in candidates.items():
        fake = draw(test_labels, len(x_test))
        metrics[f"{prefix}c2st_accuracy"], metrics[f"{prefix}c2st_p_value"] = c2st(x_test, fake, seed)
        metrics[f"{prefix}fd"] = frechet_distance(x_test.reshape(len(x_test), -1).astype(np.float64),
                                                  fake.reshape(len(fake), -1).astype(np.float64))
        if conditional:
            synthetic = draw(train_labels, len(x_train))
            metrics[f"{prefix}tstr_accuracy"] = class_accuracy(synthetic, y_train, x_test, y_test)
    if conditional:
        metrics["trtr_accuracy"] = class_accuracy(x_train, y_train, x_test, y_test)
    return metrics


def headline(metrics: dict[str, float]) -> list[str]:
    return ["c2st_accuracy", "tstr_accuracy"] if "tstr_accuracy" in metrics else ["c2st_accuracy", "fd"]


def evaluate_generative(*, sample: Callable[[np.ndarray | None, int], np.ndarray], X: dict[str, np.ndarray],
                        y: dict[str, np.ndarray], conditional: bool, classes: list[str], out_dir: Path, seed: int = 0,
                        plots: bool = True, history: list[dict[str, Any]] | None = None, title: str = "Evaluation",
                        facts: dict[str, Any] | None = None) -> dict[str, float]:
    """The quality metrics on the test split, written to eval/: metrics.json, report.md, samples.png (an image
    GAN: a grid of generated images, a row per class) and curves.png (the losses per epoch)."""
    from modelfoundry.storage import write_json, write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = quality_metrics(sample, X["train"], y["train"], X["test"], y["test"], conditional, seed)
    shown = []
    if plots and X["train"].ndim == 4:
        per_class = np.repeat(np.arange(min(len(classes), 10)), 10) if conditional else None
        grid = sample(per_class, 10 * min(len(classes), 10) if conditional else 100)
        save_grid(grid, out_dir / "samples.png", [classes[i] for i in range(min(len(classes), 10))]
                  if conditional else None)
        shown.append("samples.png")
    if plots and history:
        plot_losses(history, out_dir / "curves.png")
        shown.append("curves.png")
    write_json(out_dir / "metrics.json", metrics)
    write_text(out_dir / "report.md", render(title, metrics, shown, facts or {}))
    return metrics


def save_grid(images: np.ndarray, path: Path, row_labels: list[str] | None = None, columns: int = 10) -> None:
    """(N, C, H, W) images in [0, 1] as one PNG grid, `columns` to a row (a row per class when labelled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, channels = len(images), images.shape[1]
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 0.8, rows * 0.8 + 0.2), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            picture = images[i].transpose(1, 2, 0) if channels == 3 else images[i, 0]
            ax.imshow(np.clip(picture, 0, 1), cmap=None if channels == 3 else "gray", vmin=0, vmax=1)
        if row_labels and i % columns == 0 and i // columns < len(row_labels):
            ax.set_title(str(row_labels[i // columns]), fontsize=7, loc="left")
    fig.tight_layout(pad=0.2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_losses(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for key in ("d_loss", "g_loss"):
        axes[0].plot(epochs, [r[key] for r in history], label=key)
    if "val_fd" in history[0]:
        axes[1].plot(epochs, [r["val_fd"] for r in history], label="val_fd")
    axes[0].set(xlabel="epoch", title="losses")
    axes[1].set(xlabel="epoch", title="Frechet distance to validation rows")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render(title: str, metrics: dict[str, float], plots: list[str], facts: dict[str, Any]) -> str:
    """eval/report.md: the generator beside the Gaussian-noise floor, then every number."""
    lines = [f"# {title}", ""] + [f"- **{k}**: {v}" for k, v in facts.items()] + [""]
    lines += ["## Generator vs Gaussian noise (test split)", "",
              ("C2ST accuracy 0.5: generated rows cannot be told from real ones. TSTR: a classifier trained on "
               "generated rows, scored on real ones (TRTR: trained on the real training rows)."), "",
              "| metric | generator | Gaussian noise | per-class Gaussian |", "|---|---|---|---|"]
    for name in ("c2st_accuracy", "c2st_p_value", "fd", "tstr_accuracy"):
        if name in metrics:
            cells = [metrics.get(f"{prefix}{name}") for prefix in ("", "baseline_noise_", "baseline_class_gaussian_")]
            lines.append(f"| {name} | " + " | ".join("-" if c is None else f"{c:.4g}" for c in cells) + " |")
    if "trtr_accuracy" in metrics:
        lines.append(f"| trtr_accuracy (reference: real training rows) | {metrics['trtr_accuracy']:.4g} | | |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines) + "\n"
