"""The public API: run, train, evaluate, cross_validate and predict. Each is a plain function the CLI calls.

The composition of stages lives here: config -> data -> model -> train -> evaluate.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from modelfoundry.config import Config, check_task, config_hash, load_config
from modelfoundry.errors import ConfigError, DataError, RunDirError, first_line
from modelfoundry.storage import read_json, write_bytes_atomic, write_json

if TYPE_CHECKING:
    import pandas as pd

    from modelfoundry.cv import CVResult
    from modelfoundry.data.prepare import PreparedData
    from modelfoundry.train.loop import FitResult


@dataclass
class RunResult:
    run_dir: Path
    task: str
    metrics: dict[str, float]  # test split: model metrics and baseline_* entries
    headline: list[str]
    best_epoch: int
    epochs_run: int
    monitor: str
    best_value: float | None
    stopped_early: bool = False
    interrupted: bool = False
    wall_s: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)


def run(config: Config | str | Path | None = None, *, run_dir: str | Path | None = None,
        resume: str | Path | None = None, progress: bool = True) -> RunResult:
    """Prepare the data, train, and evaluate on the test split, writing everything to a run directory.

    Args:
        config: a validated Config or a YAML path (omit when resuming).
        run_dir: where to write; default `<output.dir>/<name>-<timestamp>/`.
        resume: a run directory to continue from its last checkpoint, exactly where it stopped.
        progress: show a progress bar.
    """
    started = time.perf_counter()
    if resume is not None:  # a finished run resumes as a no-op; one cut off after training finishes its steps
        done = _completed_run(Path(resume), evaluated=True)
        if done is not None:
            if done.extras.pop("unregistered", False):  # cut off before its registration: only that is left
                from modelfoundry.rundir import load_run_config

                _register(done, load_run_config(done.run_dir))
            done.wall_s = time.perf_counter() - started
            return done
    data, fit_result, config, run_path = _train(config, run_dir, resume, progress)
    result = RunResult(run_path, data.task, {}, [], fit_result.best_epoch, len(fit_result.history),
                       fit_result.monitor, fit_result.best_value, fit_result.stopped_early, fit_result.interrupted)
    if not fit_result.interrupted:
        result.metrics, result.headline = _evaluate_test(config, data, fit_result, run_path)
        if config.tracking.enabled:
            _register(result, config)
    result.wall_s = time.perf_counter() - started
    return result


def _register(result: RunResult, config: Config) -> None:
    """Log and register the run (idempotent per run), and note it in the run directory for later resumes."""
    result.extras["registry"] = _track(result.run_dir, config, result.metrics)
    write_json(result.run_dir / REGISTERED, {k: result.extras["registry"].get(k)
                                             for k in ("model", "version", "run_id", "experiment")})


def train(config: Config | str | Path | None = None, *, run_dir: str | Path | None = None,
          resume: str | Path | None = None, progress: bool = True) -> RunResult:
    """Prepare the data and train (no test evaluation); the model is saved in `run_dir/model/`."""
    started = time.perf_counter()
    if resume is not None:
        done = _completed_run(Path(resume), evaluated=False)
        if done is not None:
            done.wall_s = time.perf_counter() - started
            return done
    data, fit_result, config, run_path = _train(config, run_dir, resume, progress)
    return RunResult(run_path, data.task, {}, [], fit_result.best_epoch, len(fit_result.history), fit_result.monitor,
                     fit_result.best_value, fit_result.stopped_early, fit_result.interrupted,
                     wall_s=time.perf_counter() - started)


def evaluate(run_dir: str | Path, data: str | Path | None = None, out: str | Path | None = None) -> RunResult:
    """Evaluate a trained run on its own test split, or on a labelled data file (`data`).

    Results go to `out` if given, else `run_dir/eval-<file stem>/` for a file, and for the test split
    `run_dir/eval/` unless that already holds the report `foundry run` wrote (then `run_dir/eval-test-split/`).
    Reports, plots and `extras["evaluated_on"]` name the rows evaluated: "test split" or the file's name.
    """
    from modelfoundry.evaluate.baselines import baseline_metrics
    from modelfoundry.evaluate.evaluation import evaluate_outputs
    from modelfoundry.evaluate.metrics import headline
    from modelfoundry.models.inference import predict_outputs
    from modelfoundry.rundir import load_model

    started = time.perf_counter()
    saved = load_model(model_dir(run_dir))
    cfg = saved.config
    baselines = None
    if data is None:
        splits = _reload_splits(saved)
        X, y, rows = splits["X"]["test"], splits["y"]["test"], splits["rows"]["test"]
        n_classes = saved.spec["n_outputs"] if saved.task == "classification" else 1
        baselines = baseline_metrics(saved.task, splits["X"], splits["y"], n_classes, saved.target_encoder.decode,
                                     cfg.evaluation.top_k)
        split = "test split"
        kept = saved.run_dir / "eval" / "report.md"  # the run's own report (learning curves, best epoch): kept
        out_dir = Path(out or saved.run_dir / ("eval-test-split" if kept.is_file() else "eval"))
        facts = {"run": str(saved.run_dir), "model": cfg.model.name, "task": saved.task, "rows (test)": len(y)}
        if saved.spec.get("best_epoch"):
            facts["best epoch"] = saved.spec["best_epoch"]
    else:
        X, y, rows = _labelled_file(saved, Path(data))
        split = Path(data).name
        out_dir = Path(out or saved.run_dir / f"eval-{Path(data).stem}")
        facts = {"data": str(data), "rows": len(y), "run": str(saved.run_dir), "model": cfg.model.name}
    output = predict_outputs(saved.model, X, saved.task)
    metrics = evaluate_outputs(task=saved.task, y_true=y, output=output, rows=rows, target_encoder=saved.target_encoder,
                               cfg=cfg.evaluation, out_dir=out_dir, history=_history(saved.run_dir),
                               baselines=baselines, title=f"{cfg.name}: {split}", facts=facts, split=split)
    return RunResult(saved.run_dir, saved.task, metrics, headline(saved.task, cfg.evaluation.metrics, metrics),
                     0, 0, "", None, wall_s=time.perf_counter() - started,
                     extras={"out_dir": out_dir, "evaluated_on": split})


def cross_validate(config: Config | str | Path, *, folds: int = 5, stratified: bool | None = None,
                   out: str | Path | None = None, progress: bool = True) -> CVResult:
    """K-fold cross-validation of a config: per-fold and mean ± std held-out metrics, written to cv.json.

    The folds partition every cleaned row (an alternative estimate to the single test split of `run`);
    nothing is registered. Results go to `out`, default `<output.dir>/<name>-cv-<UTC timestamp>/`, next
    to the resolved config.yaml; `result.path` is the cv.json written.
    """
    from modelfoundry.cv import cross_validate as run_folds
    from modelfoundry.cv import write_cv_json
    from modelfoundry.data.sources import describe_source
    from modelfoundry.rundir import save_config

    config = _as_config(config)
    # the source as `run` records it, so config_hash matches a run of the same config
    config = config.model_copy(update={"data": config.data.model_copy(
        update={"source": describe_source(config.data.source)})})
    out_dir = Path(out) if out is not None else _fresh_dir(Path(config.output.dir), f"{config.name}-cv")
    if (out_dir / "cv.json").exists():
        raise RunDirError(f"'{out_dir}' already holds a cv.json.", "Pick a new --out, or remove the old results.")
    result = run_folds(config, folds=folds, stratified=stratified, progress=progress)
    save_config(out_dir, config)
    result.path = out_dir / "cv.json"
    write_cv_json(result, result.path)
    return result


def predict(run_dir: str | Path, input_path: str | Path, output_path: str | Path | None = None) -> pd.DataFrame:
    """Predict every row of a data file with a trained run; returns (and optionally writes) a table with a
    `prediction` column and, for classification, one `prob_<label>` column per class.

    When some row holds a value the model did not see in training (an unseen category, a missing value it
    imputed, a number outside the training range), a `warnings` column holds each row's warnings as JSON
    (empty for clean rows), and `table.attrs["input_warnings"]` counts them per (column, kind)."""
    import json

    import pandas as pd

    from modelfoundry.data.input_schema import InputSchema
    from modelfoundry.data.sources import read_table
    from modelfoundry.models.inference import predict_outputs
    from modelfoundry.rundir import load_model

    saved = load_model(model_dir(run_dir))
    frame = read_table(Path(input_path))
    schema = InputSchema(saved.preprocessor.desc)
    checked = schema.from_frame(frame, origin=str(input_path))
    output = predict_outputs(saved.model, checked.X, saved.task)
    if saved.task == "classification":
        table = pd.DataFrame({"prediction": saved.target_encoder.decode(output.argmax(1))}, index=frame.index)
        for k, label in enumerate(saved.labels):
            table[f"prob_{label}"] = output[:, k]
    else:
        table = pd.DataFrame({"prediction": saved.target_encoder.decode(output)}, index=frame.index)
    warnings, counts = schema.warnings(checked)
    if warnings is not None:
        table["warnings"] = [json.dumps(row) if row else "" for row in warnings]
    table.attrs["input_warnings"] = counts
    if output_path is not None:
        path = Path(output_path)
        if path.suffix.lower() == ".parquet":
            import io

            buffer = io.BytesIO()
            table.to_parquet(buffer, index=False)
            write_bytes_atomic(path, buffer.getvalue())
        else:
            write_bytes_atomic(path, table.to_csv(index=False).encode())
    return table


def export(model: str | Path, out_dir: str | Path | None = None, *, fmt: str = "onnx",
           tolerance: float = 1e-4) -> Any:
    """Export a run directory or registered model (NAME[/VERSION|@ALIAS]) to ONNX, with a parity check.

    The ONNX file has a dynamic batch dimension; preprocessing travels as the pickle-free sidecar
    preprocess.json (see data/portable.py). A registered model gets the result as version tags.
    """
    from modelfoundry.errors import ConfigError, unknown_name
    from modelfoundry.export import export_onnx

    if fmt != "onnx":
        raise ConfigError(unknown_name("export format", fmt, ["onnx"]))
    local = model_dir(model)
    result = export_onnx(local, out_dir, tolerance=tolerance)
    if not Path(model).exists():  # a registry reference: record the export on that version
        from modelfoundry.registry import tag_version

        tag_version(str(model), {"foundry.onnx.max_abs_diff": f"{result.max_abs_diff:.3g}",
                                 "foundry.onnx.rows_checked": str(result.rows_checked),
                                 "foundry.onnx.opset": str(result.opset),
                                 "foundry.onnx.exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return result


@dataclass
class TuneResult:
    out_dir: Path
    study_name: str
    storage: str
    metric: str
    direction: str
    summary: dict[str, Any]  # what summary.json holds: counts, best trial, base config value, plots
    rows: list[dict[str, Any]]  # one per trial, as in trials.csv
    recovered: list[int] = field(default_factory=list)  # trials of a killed run, queued again
    interrupted: bool = False
    wall_s: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)


def tune(config: Config | str | Path, *, n_trials: int | None = None, n_jobs: int | None = None,
         out: str | Path | None = None, storage: str | None = None, resume: bool = False,
         progress: bool = True) -> TuneResult:
    """Run the config's hyperparameter search (its `tune:` section) on Optuna.

    The study lives in `storage` (default: SQLite `study.db` in the output directory); `resume` continues
    it, or joins it as another worker, until the study has `n_trials` trials. The output directory
    (default `<output.dir>/<name>-tune/`) gets best.yaml, trials.csv, summary.json and plots.

    Args:
        n_trials, n_jobs, storage: override tune.n_trials, tune.n_jobs and tune.storage.
    """
    from modelfoundry.data.prepare import prepare_data
    from modelfoundry.errors import ConfigError
    from modelfoundry.tune.report import trial_rows, write_outputs
    from modelfoundry.tune.study import default_storage
    from modelfoundry.tune.trials import run_study

    config = _as_config(config)
    if config.tune is None:
        raise ConfigError(f"The config '{config.name}' has no tune: section, so there is nothing to search.",
                          "Add one (see examples/breast_cancer_tune.yaml and docs/tuning.md).")
    overrides = {k: v for k, v in {"n_trials": n_trials, "n_jobs": n_jobs, "storage": storage}.items()
                 if v is not None}
    if overrides:
        config = config.model_copy(update={"tune": config.tune.model_validate(
            {**config.tune.model_dump(), **overrides})})
    data = prepare_data(config.data, config.seed)  # bad data or a metric foreign to the task: before any trial
    check_task(config, data.task)
    out_dir = Path(out) if out else Path(config.output.dir) / f"{config.name}-tune"
    out_dir.mkdir(parents=True, exist_ok=True)
    url = config.tune.storage or default_storage(out_dir)
    name = config.tune.study_name or config.name
    study_run = run_study(config, url, name, resume=resume, progress=progress, data=data)
    summary = write_outputs(config, study_run.study, out_dir)
    metric, direction = config.tune.objective(config.training)
    result = TuneResult(out_dir, name, url, metric, direction, summary, trial_rows(config, study_run.study),
                        study_run.recovered, study_run.interrupted, study_run.wall_s)
    if config.tracking.enabled and result.rows:
        result.extras["tracking"] = _track_study(config, result)
    return result


@dataclass
class CompressResult:
    out_dir: Path
    report: Path  # report.json
    metric: str
    original: dict[str, Any]
    variants: list[dict[str, Any]]
    chosen: dict[str, Any] | None  # None: no variant beat the original within the guard
    best_failing: dict[str, Any] | None
    model_dir: Path | None  # the chosen variant as a run directory (evaluate, predict, export, serve take it)
    max_drop: float
    lower_is_better: bool
    test_metrics: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)
    guard: list[Any] = field(default_factory=list)  # compress.guard.Guard: the primary metric's first


def compress(model: str | Path, *, max_drop: float | None = None, prefer: str | None = None,
             out: str | Path | None = None, variants: list[str] | None = None, progress: bool = True) -> CompressResult:
    """Try compression variants of a trained model (run directory or NAME[/VERSION|@ALIAS]), measure each
    on the runtime it would be served with, and save the best one within the accuracy guard.

    The guard: the variant's validation metric (the model's own: compress.metric, else its first headline
    metric) may be at most `max_drop` worse than the original's, and every metric of compress.guard (by
    default log_loss and calibration error for classifiers, rmse and mae for regression) within its own
    tolerance. The original is never modified. The chosen variant is saved in `<out>/model/`, evaluated on
    the test split and, with tracking on, registered as a new version with its parent and recipe.
    """
    from pydantic import ValidationError

    from modelfoundry.compress.guard import guards
    from modelfoundry.compress.report import write_report, write_scatter
    from modelfoundry.compress.search import Bench, search
    from modelfoundry.config import LOWER_IS_BETTER, CompressConfig
    from modelfoundry.data.balance import class_weights
    from modelfoundry.rundir import load_model, load_run_config

    started = time.perf_counter()
    local = model_dir(model)
    saved = load_model(local)
    if saved.spec.get("runtime") == "onnx":
        raise ConfigError(f"{local} is already a compressed ONNX graph ({saved.spec['compression']['method']}).",
                          f"Compress its parent instead: {saved.spec.get('parent_run')}.")
    overrides = {k: v for k, v in {"max_drop": max_drop, "prefer": prefer, "variants": variants}.items()
                 if v is not None}
    try:
        cfg = CompressConfig.model_validate({**saved.config.compress.model_dump(), **overrides})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors())
        raise ConfigError(f"Compression options: {problems}.", "See docs/config.md#compress.") from None
    metric = _compress_metric(saved, cfg)
    rules = guards(saved.task, metric, cfg.max_drop, cfg.guard)
    out_dir = Path(out) if out else _fresh_dir(Path(saved.config.output.dir), f"{saved.config.name}-compressed")
    if (out_dir / "report.json").exists():
        raise RunDirError(f"{out_dir} already holds a compression report.", "Pass another --out DIR.")
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        splits = _reload_splits(saved)
        weights = None
        if saved.task == "classification":
            weights = class_weights(splits["y"]["train"], list(saved.target_encoder.classes_),
                                    saved.config.data.balance.class_weights)
        bench = Bench(saved, splits, metric, cfg, out_dir / ".work", weights, guards=rules)
        with _steps(progress, len(cfg.variants) + 3) as step:
            outcome = search(bench, out_dir, on_step=step)
    except BaseException:  # an error or Ctrl-C: no work folder left behind, nor an empty output folder
        shutil.rmtree(out_dir / ".work", ignore_errors=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    facts = {"parent": str(model), "parent_run": str(saved.run_dir.resolve()), "max_drop": cfg.max_drop,
             "guard": {g.metric: {"max_worse": g.max_worse, "max_worse_rel": g.max_worse_rel} for g in rules},
             "prefer": cfg.prefer, "split": "val", "rows": int(len(splits["y"]["val"]))}
    report = write_report(outcome, out_dir, facts)
    write_scatter(outcome, out_dir, metric in LOWER_IS_BETTER)
    shutil.rmtree(out_dir / ".work", ignore_errors=True)
    result = CompressResult(out_dir, report, metric, outcome.original, outcome.variants, outcome.chosen,
                            outcome.best_failing, outcome.model_dir, cfg.max_drop, metric in LOWER_IS_BETTER,
                            guard=rules)
    if outcome.model_dir is not None:
        result.test_metrics = evaluate(outcome.model_dir).metrics
        if saved.config.tracking.enabled:
            parent = _parent_version(model, local, saved)
            result.extras["registry"] = _track(outcome.model_dir, load_run_config(outcome.model_dir),
                                               result.test_metrics, parent_version=parent,
                                               recipe=outcome.chosen["recipe"])
    result.wall_s = time.perf_counter() - started
    return result


def model_dir(ref: str | Path) -> Path:
    """A run directory as given, or the local copy of a registered model (NAME, NAME/VERSION, NAME@ALIAS)."""
    path = Path(ref)
    if path.exists():
        return path
    from modelfoundry.registry import REF, download

    if REF.match(str(ref)):
        return download(str(ref))
    raise RunDirError(f"'{ref}' is neither a run directory nor a registered model reference.",
                      "Pass a directory under runs/, or NAME, NAME/VERSION or NAME@ALIAS "
                      "(see `foundry registry list`).")


# ---------------------------------------------------------------------------------------------- internals
def _as_config(config: Config | str | Path | dict | None) -> Config:
    if isinstance(config, Config):
        return config
    if config is None:
        from modelfoundry.errors import ConfigError

        raise ConfigError("No config given.", "Pass a YAML path, e.g. `foundry run examples/digits.yaml`.")
    return load_config(config)


def _fresh_dir(root: Path, prefix: str) -> Path:
    """A new `<root>/<prefix>-<UTC timestamp>[-N]/`."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path, suffix = root / f"{prefix}-{stamp}", 1
    while path.exists():
        suffix += 1
        path = root / f"{prefix}-{stamp}-{suffix}"
    return path


def _train(config: Any, run_dir: Any, resume: Any, progress: bool) -> tuple[PreparedData, FitResult, Config, Path]:
    from modelfoundry.data.prepare import prepare_data
    from modelfoundry.rundir import load_run_config, plan_run_dir, save_config

    finished_before = False
    if resume is not None:
        run_path = Path(resume)
        config = load_run_config(run_path)
        # a finished run with its model saved: only evaluation/registration can be left (a run killed before
        # saving its model trains no further either: the loop sees the finished checkpoint)
        finished_before = _model_saved(run_path) and _finished_checkpoint(run_path, config) is not None
    else:
        config = _as_config(config)
        run_path = plan_run_dir(config, run_dir)  # checked now, created once the data is known to be usable
    data = prepare_data(config.data, config.seed)
    check_task(config, data.task)
    if resume is not None:
        _check_same_data(run_path, data.info)
        return _fit_and_save(config, data, run_path, True, finished_before, progress)
    from modelfoundry.data.sources import describe_source

    # the run directory records where the data is, whatever the working directory
    config = config.model_copy(update={"data": config.data.model_copy(
        update={"source": describe_source(config.data.source)})})
    created = not run_path.exists()
    try:
        run_path.mkdir(parents=True, exist_ok=True)
        save_config(run_path, config)
        write_json(run_path / "data.json", data.info)
        return _fit_and_save(config, data, run_path, False, False, progress)
    except Exception:
        if created and not (run_path / "checkpoints" / "last.pt").exists():  # nothing to resume: leave no husk
            shutil.rmtree(run_path, ignore_errors=True)
        raise


def _fit_and_save(config: Config, data: PreparedData, run_path: Path, resume: bool, finished_before: bool,
                  progress: bool) -> tuple[PreparedData, FitResult, Config, Path]:
    from modelfoundry.experiment import fit_config
    from modelfoundry.manifest import build_manifest
    from modelfoundry.rundir import save_model
    from modelfoundry.train.runtime import seed_everything, select_device

    determinism = seed_everything(config.seed, config.training.deterministic)
    if not finished_before:  # a finished run keeps the manifest of the process that trained it
        write_json(run_path / "manifest.json", build_manifest(
            seed=config.seed, split_seed=data.info["split"]["seed"],
            device=str(select_device(config.training.device)), determinism=determinism,
            config_hash=config_hash(config), fingerprint=data.info["fingerprint"], project_dir=Path.cwd()))
    try:
        fit_result = fit_config(config, data, run_dir=run_path, resume=resume, progress=progress)
    except (MemoryError, RuntimeError, TypeError, OverflowError) as exc:
        error = _allocation_error(exc, config)
        if error is exc:
            raise
        raise error from None
    if finished_before:  # its model is saved already
        return data, fit_result, config, run_path
    if not fit_result.interrupted:
        spec = {"name": config.name, "task": data.task, "input_shape": list(data.preprocessor.input_shape_),
                "n_outputs": data.n_outputs, "target": config.data.target, "columns": data.preprocessor.columns,
                "classes": getattr(data.target_encoder, "classes_", None), "best_epoch": fit_result.best_epoch,
                "config_hash": config_hash(config)}
        save_model(run_path, fit_result.model.cpu(), spec, data.preprocessor, data.target_encoder)
    return data, fit_result, config, run_path


def _track(run_path: Path, config: Config, metrics: dict[str, float], *, parent_version: str | None = None,
           recipe: dict[str, Any] | None = None) -> dict[str, Any]:
    """Log the run to MLflow and register its model; failures keep the run directory and say how to retry."""
    import json

    from modelfoundry.errors import FoundryError
    from modelfoundry.registry import tag_version
    from modelfoundry.tracking import log_run, store_error

    try:
        logged = log_run(run_path, config, metrics, parent_version=parent_version)
        if recipe is not None and logged["version"] and not logged["existing"]:
            tag_version(f"{config.name}/{logged['version']}", {"foundry.compression": json.dumps(recipe)[:5000]},
                        config.tracking.uri)
        return logged
    except Exception as exc:  # noqa: BLE001 - any store failure (a missing driver too): the run is intact either way
        if isinstance(exc, FoundryError):
            raise
        raise store_error(exc, config.tracking.uri, f" The run itself is complete in {run_path}; running it again "
                          "registers it once.") from None


def _parent_version(model: str | Path, local: Path, saved: Any) -> str | None:
    """The registered version a compressed model derives from: the one a NAME/VERSION or NAME@ALIAS
    reference resolved to (its download is .foundry-cache/<name>/<version>), or the version registered from
    the run directory given; None when the parent was never registered."""
    if not Path(model).exists():
        return local.name
    from modelfoundry.tracking import client

    try:
        versions = client(saved.config.tracking.uri).search_model_versions(f"name='{saved.config.name}'")
    except Exception:  # noqa: BLE001 - an unreachable store fails (clearly) at registration, just after
        return None
    mine = str(saved.run_dir.resolve())
    found = [v for v in versions if (v.tags or {}).get("foundry.run_dir") == mine]
    return str(min(int(v.version) for v in found)) if found else None


def _compress_metric(saved: Any, cfg: Any) -> str:
    from modelfoundry.config import CLASSIFICATION_METRICS, REGRESSION_METRICS

    own = CLASSIFICATION_METRICS if saved.task == "classification" else REGRESSION_METRICS
    headline = [m for m in saved.config.evaluation.metrics if m in own]
    metric = cfg.metric or (headline[0] if headline else "accuracy" if saved.task == "classification" else "r2")
    if metric not in own:
        raise ConfigError(f"compress.metric: {metric} does not apply to this {saved.task} model.",
                          f"Choose one of {', '.join(own)}.")
    return metric


@contextlib.contextmanager
def _steps(progress: bool, total: int) -> Iterator[Callable[[str], None]]:
    """A progress bar with the current step's name, or nothing."""
    if not progress:
        yield lambda name: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]compress"), BarColumn(), TimeElapsedColumn(), TextColumn("{task.description}"),
                  transient=True) as bar:
        task = bar.add_task("", total=None)

        def step(name: str) -> None:
            bar.update(task, description=name, advance=1)
        yield step


def _track_study(config: Config, result: TuneResult) -> dict[str, Any]:
    """Log the study to MLflow (a parent run, one nested run per trial); the study itself is complete either way."""
    from modelfoundry.errors import FoundryError
    from modelfoundry.tracking import log_study, store_error

    try:
        return log_study(config, result.study_name, result.storage, result.rows, result.summary)
    except Exception as exc:  # noqa: BLE001 - any store failure: the study and its outputs are intact
        if isinstance(exc, FoundryError):
            raise
        raise store_error(exc, config.tracking.uri, f" The study itself is complete in {result.out_dir}.") from None


def _evaluate_test(config: Config, data: PreparedData, fit_result: FitResult,
                   run_path: Path) -> tuple[dict[str, float], list[str]]:
    from modelfoundry.evaluate.baselines import baseline_metrics
    from modelfoundry.evaluate.evaluation import evaluate_outputs
    from modelfoundry.evaluate.metrics import headline
    from modelfoundry.models.inference import predict_outputs

    output = predict_outputs(fit_result.model, data.X["test"], data.task)
    baselines = baseline_metrics(data.task, data.X, data.y, data.n_outputs, data.target_encoder.decode,
                                 config.evaluation.top_k)
    facts = {"run": str(run_path), "model": config.model.name, "task": data.task,
             "rows (train/val/test)": "/".join(str(data.info["split"][s]) for s in ("train", "val", "test")),
             "best epoch": f"{fit_result.best_epoch} of {len(fit_result.history)} ({fit_result.monitor} = "
                           f"{fit_result.best_value:.4f})" if fit_result.best_value is not None else "-"}
    metrics = evaluate_outputs(task=data.task, y_true=data.y["test"], output=output, rows=data.rows["test"],
                               target_encoder=data.target_encoder, cfg=config.evaluation, out_dir=run_path / "eval",
                               history=fit_result.history, baselines=baselines, title=f"{config.name}: test split",
                               facts=facts)
    return metrics, headline(data.task, config.evaluation.metrics, metrics)


REGISTERED = "registered.json"  # written once `run` has logged and registered the run


def _finished_checkpoint(run_path: Path, config: Config) -> dict[str, Any] | None:
    """The state of the run's last checkpoint if its training ended (last epoch or early stopping), else None."""
    from modelfoundry.train.loop import checkpoint_finished, load_checkpoint

    state = load_checkpoint(run_path / "checkpoints" / "last.pt")
    return state if checkpoint_finished(state, config.training) else None


def _model_saved(run_path: Path) -> bool:
    from modelfoundry.rundir import PREPROCESS

    return all((run_path / p).is_file() for p in ("model/weights.pt", "model/model.json", PREPROCESS))


def _completed_run(run_path: Path, *, evaluated: bool) -> RunResult | None:
    """For `--resume` of a run that trained to its end (or stopped early) and saved its model and, for `run`,
    its evaluation: its result, read from the run directory, without writing anything; None when training
    or evaluation is left to do. `extras["unregistered"]` says that registration (tracking on) is left."""
    from modelfoundry.evaluate.metrics import headline
    from modelfoundry.rundir import load_run_config, read_record

    config = load_run_config(run_path)
    if not _model_saved(run_path):  # checked first: it spares loading the checkpoint of an unfinished run
        return None
    state = _finished_checkpoint(run_path, config)
    if state is None:
        return None
    registered = run_path / REGISTERED
    if evaluated and not (run_path / "eval" / "metrics.json").is_file():
        return None
    task = read_record(run_path / "model" / "model.json", run_path)["task"]
    stopping = state["early_stopping"]
    metrics = read_json(run_path / "eval" / "metrics.json") if evaluated else {}
    result = RunResult(run_path, task, metrics, headline(task, config.evaluation.metrics, metrics) if metrics else [],
                       stopping["best_epoch"], len(state["history"]), config.training.early_stopping.monitor
                       if config.training.early_stopping else "val_loss", stopping["best"],
                       stopped_early=state["epoch"] < state.get("epochs", config.training.epochs))
    result.extras["already_finished"] = True
    if evaluated and registered.is_file():
        result.extras["registered_before"] = read_json(registered)
    elif evaluated and config.tracking.enabled:
        result.extras["unregistered"] = True
    return result


def _allocation_error(exc: BaseException, config: Config) -> BaseException:
    """A TrainingError for memory that could not be allocated (a model or batch too big, or a size beyond what
    torch can represent); other errors as they are."""
    from modelfoundry.errors import TrainingError

    text = first_line(exc) if str(exc) else type(exc).__name__
    if "without overflow" in text:  # a value past float32 in an optimizer step
        return TrainingError(f"A value overflowed during training ({text}).",
                             "Lower training.optimizer.lr (and training.scheduler.max_lr) or other extreme "
                             "settings; float32 ends at 3.4e38.")
    if re.search(r"overflow when unpacking|size calculation overflowed", text, re.IGNORECASE):
        text = "a tensor size is beyond what torch can represent"
    elif not isinstance(exc, MemoryError) and not re.search(r"allocate|out of memory", text, re.IGNORECASE):
        return exc
    text = re.sub(r"^\[enforce fail at [^\]]*\]\s*(err == 0\.\s*)?", "", text)
    sizes = {k: v for k, v in config.model.model_dump().items() if k in ("hidden", "channels", "kernel_size")}
    return TrainingError(f"The model does not fit in memory ({text}); model {config.model.name} with "
                         f"{', '.join(f'{k}: {v}' for k, v in sizes.items())}, training.batch_size: "
                         f"{config.training.batch_size}.",
                         "Make the model smaller (model.hidden, model.channels, model.kernel_size) or the batches "
                         "(training.batch_size), or train on a machine with more memory.")


def _check_same_data(run_path: Path, info: dict[str, Any]) -> None:
    recorded = read_json(run_path / "data.json")["fingerprint"]["sha256"]
    if recorded != info["fingerprint"]["sha256"]:
        raise RunDirError(f"The data of {run_path} changed since the run started (fingerprint {recorded[:12]} then,"
                          f" {info['fingerprint']['sha256'][:12]} now); resuming would mix two datasets.",
                          "Restore the original data file, or start a new run.")


def _reload_splits(saved: Any) -> dict[str, dict[str, Any]]:
    """Re-derive the run's splits from its source and apply the saved preprocessing (no refitting)."""
    from modelfoundry.data.prepare import rebuild_splits

    cfg = saved.config
    recorded = read_json(saved.run_dir / "data.json")["fingerprint"]["sha256"]
    out: dict[str, dict[str, Any]] = {"X": {}, "y": {}, "rows": {}}
    for name, part in rebuild_splits(cfg.data, cfg.seed, recorded, saved.run_dir).items():
        out["X"][name] = saved.preprocessor.transform(part, f"the {name} split")
        out["y"][name] = saved.target_encoder.encode(part[cfg.data.target], f"the {name} split")
        out["rows"][name] = part.index.to_numpy()
    return out


def _labelled_file(saved: Any, path: Path) -> tuple[Any, Any, Any]:
    from modelfoundry.data.sources import read_table

    frame = read_table(path)
    target = saved.spec["target"]
    if target not in frame.columns:
        raise DataError(f"'{path}' has no target column '{target}', so it cannot be evaluated.",
                        f"Add the '{target}' column, or use `foundry predict` for unlabelled rows.")
    frame = frame[frame[target].notna()]
    if frame.empty:
        raise DataError(f"'{path}' has no rows with a value in the target column '{target}'.",
                        "Evaluate on labelled rows.")
    X = saved.preprocessor.transform(frame, origin=str(path))
    y = saved.target_encoder.encode(frame[target], str(path))
    return X, y, frame.index.to_numpy()


def _history(run_dir: Path) -> list[dict[str, Any]]:
    import json

    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
