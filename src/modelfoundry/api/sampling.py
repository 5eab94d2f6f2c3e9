"""`sample`: rows or images drawn from a trained GAN (`data.task: generative`), in the data's units; and the
evaluation of a freshly trained GAN on its test split (evaluate/generative.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelfoundry.api.arguments import model_dir
from modelfoundry.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from modelfoundry.config import Config
    from modelfoundry.data.prepare import PreparedData
    from modelfoundry.train.loop import FitResult

IMAGE_SUFFIXES = (".png",)
TABLE_SUFFIXES = (".csv", ".parquet")
MAX_ROWS = 1_000_000


@dataclass
class SampleResult:
    rows: pd.DataFrame  # the generated rows in the data's units (an image: one column per pixel), with the class
    path: Path | None  # the file written (a PNG grid, or a CSV/Parquet table), if any
    images: np.ndarray | None = None  # (N, C, H, W) in [0, 1] for an image GAN
    extras: dict[str, Any] = field(default_factory=dict)


def sampler(model: Any, seed: int) -> Callable[[np.ndarray | None, int], np.ndarray]:
    """`draw(labels, n)`: n generated rows (n, *shape) in the model's scale as float64, from the GAN `model`;
    `labels` (n,) class indices for a conditional one (None: drawn uniformly). Each call starts again from `seed`."""
    import numpy as np
    import torch

    def draw(labels: np.ndarray | None, n: int) -> np.ndarray:
        given = torch.from_numpy(np.array(labels, dtype=np.int64)) if labels is not None and model.conditional \
            else None
        rows = model.sample(n, given, generator=torch.Generator().manual_seed(seed))
        return rows.cpu().numpy().astype(np.float64)
    return draw


def evaluate_trained_gan(config: Config, data: PreparedData, fit_result: FitResult,
                         run_path: Path) -> tuple[dict[str, float], list[str]]:
    """A trained GAN's quality on the test split (C2ST, FD, TSTR beside TRTR; every one beside Gaussian noise),
    written to eval/ with a grid of samples."""
    from modelfoundry.artifacts.rundir import RunDir
    from modelfoundry.evaluate.generative import evaluate_generative, headline

    model = fit_result.model.cpu().eval()
    name = next(iter(data.X["train"]))
    info = data.info["generative"]
    facts = {"run": str(run_path), "model": "gan" + (" (conditional)" if model.conditional else ""),
             "task": data.task,
             "rows (train/val/test)": "/".join(str(data.info["split"][s]) for s in ("train", "val", "test")),
             "best epoch": f"{fit_result.best_epoch} of {len(fit_result.history)}"
                           + (f" (val_fd = {fit_result.best_value:.4f})" if fit_result.best_value is not None else "")}
    metrics = evaluate_generative(sample=sampler(model, config.seed + 1), X={s: data.X[s][name] for s in data.X},
                                  y=data.y, conditional=model.conditional, classes=info["classes"],
                                  out_dir=RunDir(run_path).eval_dir, seed=config.seed,
                                  plots=config.evaluation.plots, history=fit_result.history,
                                  title=f"{config.name}: test split", facts=facts)
    return metrics, headline(metrics)


def evaluate_saved_gan(saved: Any, data: str | Path | None, out: str | Path | None, started: float) -> Any:
    """`foundry evaluate` of a GAN run: its test split rebuilt from the source (which must be unchanged) and scored
    again (C2ST, FD, TSTR, beside Gaussian noise) into eval-test-split/ (eval/ when the run wrote none)."""
    import time

    from modelfoundry.api.results import RunResult
    from modelfoundry.artifacts.records import DataRecord
    from modelfoundry.artifacts.rundir import RunDir
    from modelfoundry.data.generative import prepare_generative
    from modelfoundry.data.prepare import split_seed
    from modelfoundry.errors import DataError
    from modelfoundry.evaluate.generative import evaluate_generative, headline

    if data is not None:
        raise ConfigError(f"A GAN is scored against the real rows of its own test split, so --data {data} does not "
                          "apply.", f"Run `foundry evaluate {saved.run_dir}` without --data.")
    cfg, layout = saved.config, RunDir(saved.run_dir)
    prepared = prepare_generative(cfg.data, split_seed(cfg.data, cfg.seed))
    recorded = DataRecord.read(layout.data_record).sha256
    if prepared.info["fingerprint"]["sha256"] != recorded:
        raise DataError(f"The source {cfg.data.source} changed since {saved.run_dir} was trained, so its test split "
                        "cannot be rebuilt.", "Restore the original data; the run's own scores are in "
                        f"{layout.eval_dir / 'metrics.json'}.")
    name = next(iter(prepared.X["train"]))
    out_dir = Path(out) if out else (layout.reeval_dir if layout.report.is_file() else layout.eval_dir)
    metrics = evaluate_generative(sample=sampler(saved.model, cfg.seed + 1),
                                  X={s: prepared.X[s][name] for s in prepared.X}, y=prepared.y,
                                  conditional=saved.model.conditional, classes=prepared.info["generative"]["classes"],
                                  out_dir=out_dir, seed=cfg.seed, plots=cfg.evaluation.plots,
                                  title=f"{cfg.name}: test split", facts={"run": str(saved.run_dir), "model": "gan"})
    return RunResult(saved.run_dir, saved.task, metrics, headline(metrics), 0, 0, "", None,
                     wall_s=time.perf_counter() - started, extras={"out_dir": out_dir, "evaluated_on": "test split"})


def sample(model: str | Path, n: int = 64, out: str | Path | None = None, *, label: str | None = None,
           seed: int = 0) -> SampleResult:
    """Draw `n` rows from a trained GAN (a run directory or a registered `NAME`, `NAME/VERSION`, `NAME@ALIAS`).

    Args:
        n: how many rows or images.
        out: where to write them: a .png grid (an image GAN), or a .csv / .parquet table (any GAN: one column per
            numeric column or pixel, plus the class column of a conditional GAN); None writes nothing.
        label: the class to generate (a conditional GAN); None: classes drawn uniformly.
        seed: the noise's seed; the same seed gives the same rows.
    """
    import numpy as np

    from modelfoundry.data.generative import unscale
    from modelfoundry.rundir import load_model

    if not 1 <= n <= MAX_ROWS:
        raise ConfigError(f"The number of rows to sample must be between 1 and {MAX_ROWS:,}. Got {n} instead.")
    path = Path(out) if out is not None else None
    if path is not None and path.suffix.lower() not in IMAGE_SUFFIXES + TABLE_SUFFIXES:
        raise ConfigError(f"Cannot write samples to '{path}': the file must end in .png (an image grid), .csv or "
                          ".parquet.", "Pass -o samples.png or -o samples.csv.")
    saved = load_model(model_dir(model))
    if saved.task != "generative":
        raise ConfigError(f"'{model}' is a {saved.task} model, not a generative one: it predicts, it does not sample.",
                          f"Use `foundry predict {model} FILE`, or sample from a run of model: {{name: gan}}.")
    gan = saved.model
    labels = _labels(gan, saved, label, n, seed)
    rows = sampler(gan, seed)(labels, n)
    table = unscale(saved.preprocessor.desc, rows)
    if gan.conditional:
        table[saved.record.target or "class"] = [saved.labels[i] for i in labels]
    image = rows.ndim == 4
    if path is not None:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            if not image:
                raise ConfigError(f"'{model}' generates table rows, not images, so they cannot be drawn as '{path}'.",
                                  "Write them to a .csv or .parquet file instead.")
            from modelfoundry.evaluate.generative import save_grid

            save_grid(np.clip(rows, 0, 1), path)
        else:
            from modelfoundry.storage import write_table

            write_table(table, path)
    return SampleResult(table, path, np.clip(rows, 0, 1) if image else None)


def _labels(gan: Any, saved: Any, label: str | None, n: int, seed: int) -> np.ndarray | None:
    """The class index of each row: `label`'s, or drawn uniformly (seeded); None for an unconditional GAN."""
    import numpy as np

    if not gan.conditional:
        if label is not None:
            raise ConfigError(f"--class {label}: this GAN is not conditional (it was trained without a class column).",
                              "Leave --class out.")
        return None
    if label is None:
        return np.random.default_rng(seed).integers(0, gan.n_classes, n)
    if str(label) not in saved.labels:
        from modelfoundry.errors import did_you_mean

        raise ConfigError(f"--class {label}: the GAN knows no such class.{did_you_mean(str(label), saved.labels)} "
                          f"Its classes: {', '.join(saved.labels[:20])}.", "Pass one of its classes to --class.")
    return np.full(n, saved.labels.index(str(label)))
