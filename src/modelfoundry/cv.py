"""K-fold cross-validation of a config: K trainings, each scored on rows it never saw, summarised as mean ± std.

The K folds partition every cleaned row, so each row is held out exactly once: an alternative estimate to
the single test split of `foundry run`, with a spread. Within a fold, the validation rows that early
stopping watches are carved from the fold's training part, and preprocessing is fitted on its training
rows only, so nothing about the held-out fold reaches training. A time series (data.time_series) is validated on
rolling origins instead: each fold trains on the past and is scored on the block of time steps after it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelfoundry.config import Config, check_task, config_hash
from modelfoundry.errors import ConfigError, FoundryError
from modelfoundry.reporting import Reporter, reporter_for
from modelfoundry.storage import write_json

if TYPE_CHECKING:
    from modelfoundry.data.prepare import CleanData, PreparedData


@dataclass
class CVResult:
    task: str
    # per fold: fold, rows_train, rows_val, rows_heldout, best_epoch, epochs_run, stopped_early, wall_s,
    # metrics (held-out fold, target units), heldout_rows (row numbers in the source)
    folds: list[dict[str, Any]]
    mean: dict[str, float]  # over the folds, for every metric that all folds have
    std: dict[str, float]  # sample standard deviation (ddof=1) over the folds
    headline: list[str]  # the metrics to show first
    info: dict[str, Any]  # k, stratified, seed, rows, val_fraction, config_hash, fingerprint, cleaning, ...
    wall_s: float = 0.0
    path: Path | None = None  # cv.json, once written


def cross_validate(config: Config, folds: int = 5, stratified: bool | None = None,
                   progress: Reporter | bool | None = None) -> CVResult:
    """Train `config` once per fold and score each training on its held-out fold.

    Args:
        folds: the number of folds K (2 <= K <= rows).
        stratified: keep each fold's class proportions; None means data.split.stratify for classification
            (regression folds are never stratified).
        progress: a Reporter to report the folds to, a line per finished fold; None or a bool: none.
    """
    from modelfoundry.data.prepare import load_clean, split_seed
    from modelfoundry.data.split import kfold_indices
    from modelfoundry.evaluate.metrics import DEFAULT_HEADLINE, headline

    started = time.perf_counter()
    if config.data.time_series is not None:  # shuffled folds would train on the future of the held-out fold
        return _rolling_origin(config, folds, progress, started)
    clean = load_clean(config.data, split_seed(config.data, config.seed))
    check_task(config, clean.task)
    stratify = _stratify(config, clean.task, stratified)
    seed = split_seed(config.data, config.seed)
    labels = clean.frame[config.data.target].astype(str).to_numpy()
    splits = kfold_indices(labels, folds, stratify, seed)
    reporter, names = reporter_for(progress), config.evaluation.metrics or DEFAULT_HEADLINE[clean.task]
    display = FoldProgress(reporter, folds, names) if reporter else None
    results = []
    try:
        for number, (train_pos, heldout_pos) in enumerate(splits, start=1):
            try:
                fold = _run_fold(config, clean, labels, train_pos, heldout_pos, stratify, seed)
            except FoundryError as exc:
                exc.message = f"Fold {number} of {folds}: {exc.message}"
                exc.args = (exc.message,)
                raise
            results.append({"fold": number, **fold})
            if display:
                display.fold_done(results[-1])
    finally:
        if display:
            display.close()
    mean, std = summarise([f["metrics"] for f in results])
    info = {"name": config.name, "model": config.model.name, "k": folds, "stratified": stratify, "seed": seed,
            "rows": int(len(clean.frame)), "val_fraction": config.data.split.val, "config_hash": config_hash(config),
            "fingerprint": clean.info["fingerprint"], "cleaning": clean.info["cleaning"]}
    return CVResult(clean.task, results, mean, std, headline(clean.task, config.evaluation.metrics, mean), info,
                    wall_s=time.perf_counter() - started)


def _rolling_origin(config: Config, folds: int, progress: Reporter | bool | None, started: float) -> CVResult:
    """Cross-validation of a time series: each fold trains on the past and is tested on the block after it
    (data/timeseries.py `rolling_origin_folds`); the folds' test blocks are the series' last `folds` blocks."""
    from modelfoundry.data.prepare import split_seed
    from modelfoundry.data.timeseries import rolling_origin_folds
    from modelfoundry.evaluate.metrics import DEFAULT_HEADLINE, headline

    seed = split_seed(config.data, config.seed)
    reporter, names = reporter_for(progress), config.evaluation.metrics or DEFAULT_HEADLINE["regression"]
    display = FoldProgress(reporter, folds, names) if reporter else None
    results, data = [], None
    try:
        for number, data in enumerate(rolling_origin_folds(config.data, seed, folds), start=1):
            results.append({"fold": number, **_fit_fold(config, data, time.perf_counter())})
            if display:
                display.fold_done(results[-1])
    except FoundryError as exc:
        exc.message = f"Fold {len(results) + 1} of {folds}: {exc.message}"
        exc.args = (exc.message,)
        raise
    finally:
        if display:
            display.close()
    mean, std = summarise([f["metrics"] for f in results])
    info = {"name": config.name, "model": config.model.name, "k": folds, "stratified": False, "seed": seed,
            "rolling_origin": True, "rows": data.info["cleaning"]["time_steps"], "val_fraction": config.data.split.val,
            "config_hash": config_hash(config), "fingerprint": data.info["fingerprint"], "cleaning": data.info["cleaning"]}
    return CVResult("regression", results, mean, std, headline("regression", config.evaluation.metrics, mean), info,
                    wall_s=time.perf_counter() - started)


def _fit_fold(config: Config, data: PreparedData, started: float) -> dict[str, Any]:
    """Fit one rolling-origin fold on its prepared windows and score its test block."""
    from modelfoundry.experiment import fit_config
    from modelfoundry.models.inference import predict_outputs

    fitted = fit_config(config, data, run_dir=None, progress=False)
    if fitted.interrupted:
        raise KeyboardInterrupt
    output = predict_outputs(fitted.model, data.X["test"], data.task)
    return {"rows_train": len(data.y["train"]), "rows_val": len(data.y["val"]), "rows_heldout": len(data.y["test"]),
            "best_epoch": fitted.best_epoch, "epochs_run": len(fitted.history), "stopped_early": fitted.stopped_early,
            "wall_s": round(time.perf_counter() - started, 3),
            "metrics": _heldout_metrics(data, output, config.evaluation.top_k),
            "heldout_rows": [int(r) for r in data.rows["test"]]}


def summarise(fold_metrics: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample std (ddof=1) of each metric present in every fold (roc_auc is missing from a fold
    that holds a single class, mape from one with a zero target)."""
    names = [n for n in fold_metrics[0] if all(n in m for m in fold_metrics)]
    values = {n: np.array([m[n] for m in fold_metrics], dtype=np.float64) for n in names}
    ddof = 1 if len(fold_metrics) > 1 else 0
    return ({n: float(v.mean()) for n, v in values.items()}, {n: float(v.std(ddof=ddof)) for n, v in values.items()})


def write_cv_json(result: CVResult, path: Path) -> None:
    """cv.json: the settings that make the folds reproducible, mean and std, then every fold."""
    info = result.info
    write_json(Path(path), {
        "name": info["name"], "task": result.task, "model": info["model"], "k": info["k"],
        "stratified": info["stratified"], "seed": info["seed"], "rows": info["rows"],
        "val_fraction": info["val_fraction"], "config_hash": info["config_hash"],
        "data_sha256": info["fingerprint"]["sha256"], "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_s": round(result.wall_s, 3), "headline": result.headline, "mean": result.mean, "std": result.std,
        "folds": result.folds, "fingerprint": info["fingerprint"], "cleaning": info["cleaning"]})


# ---------------------------------------------------------------------------------------------- internals
def _stratify(config: Config, task: str, stratified: bool | None) -> bool:
    if stratified is None:
        return config.data.split.stratify and task == "classification"
    if stratified and task != "classification":
        raise ConfigError(f"Stratified folds keep class proportions, but {config.data.source} (target "
                          f"'{config.data.target}') is a {task} task.",
                          "Drop --stratified: regression folds are plain shuffled folds.")
    return stratified


def _run_fold(config: Config, clean: CleanData, labels: np.ndarray, train_pos: np.ndarray, heldout_pos: np.ndarray,
              stratify: bool, seed: int) -> dict[str, Any]:
    """Split the fold's training part into train/val, fit on it, score the held-out rows."""
    from modelfoundry.data.prepare import prepare_parts
    from modelfoundry.data.split import holdout_indices
    from modelfoundry.experiment import fit_config, model_tokenizer
    from modelfoundry.models.inference import predict_outputs

    started = time.perf_counter()
    kept, val = holdout_indices(labels[train_pos], config.data.split.val, stratify, seed)
    frame = clean.frame
    parts = {"train": frame.iloc[train_pos[kept]], "val": frame.iloc[train_pos[val]], "test": frame.iloc[heldout_pos]}
    data = prepare_parts(clean, parts, config.data, seed, stratify, tokenizer=model_tokenizer(config.model))
    fitted = fit_config(config, data, run_dir=None, progress=False)
    if fitted.interrupted:  # Ctrl-C: stop here rather than start the next fold
        raise KeyboardInterrupt
    output = predict_outputs(fitted.model, data.X["test"], data.task)
    return {"rows_train": len(kept), "rows_val": len(val), "rows_heldout": len(heldout_pos),
            "best_epoch": fitted.best_epoch, "epochs_run": len(fitted.history), "stopped_early": fitted.stopped_early,
            "wall_s": round(time.perf_counter() - started, 3),
            "metrics": _heldout_metrics(data, output, config.evaluation.top_k),
            "heldout_rows": [int(r) for r in data.rows["test"]]}


def _heldout_metrics(data: PreparedData, output: np.ndarray, top_k: list[int]) -> dict[str, float]:
    from modelfoundry.evaluate.metrics import task_metrics

    return task_metrics(data.task, data.y["test"], output, data.target_encoder.decode, top_k)


class FoldProgress:
    """The folds as progress: one unit and one line per finished fold."""

    def __init__(self, reporter: Reporter, total: int, names: list[str]):
        self.reporter, self.total, self.names = reporter, total, names
        reporter.start("cross-validation", total)

    def fold_done(self, fold: dict[str, Any]) -> None:
        scores = "  ".join(f"{n} {fold['metrics'][n]:.4f}" for n in self.names if n in fold["metrics"])
        self.reporter.message(f"fold {fold['fold']}/{self.total}  {scores}  (best epoch {fold['best_epoch']} of "
                              f"{fold['epochs_run']}, {fold['wall_s']:.1f} s)")
        self.reporter.advance()

    def close(self) -> None:
        self.reporter.finish()
