"""`run` and `train`: prepare the data, train, evaluate on the test split, register; or resume any of it."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelfoundry.api.arguments import as_config
from modelfoundry.api.registration import register_run
from modelfoundry.api.results import RunResult
from modelfoundry.api.resume import check_same_data, completed_run, finished_checkpoint, model_saved
from modelfoundry.artifacts.records import ModelRecord
from modelfoundry.artifacts.rundir import RunDir
from modelfoundry.config import Config, check_task, config_hash
from modelfoundry.errors import first_line
from modelfoundry.storage import write_json

if TYPE_CHECKING:
    from modelfoundry.data.prepare import PreparedData
    from modelfoundry.reporting import Reporter
    from modelfoundry.train.loop import FitResult


def run(config: Config | str | Path | None = None, *, run_dir: str | Path | None = None,
        resume: str | Path | None = None, progress: Reporter | bool | None = None) -> RunResult:
    """Prepare the data, train, and evaluate on the test split, writing everything to a run directory.

    Args:
        config: a validated Config or a YAML path (omit when resuming).
        run_dir: where to write; default `<output.dir>/<name>-<timestamp>/`.
        resume: a run directory to continue from its last checkpoint, exactly where it stopped.
        progress: a Reporter to report training to (the CLI passes its terminal one); None or a bool: none.
    """
    started = time.perf_counter()
    if resume is not None:  # a finished run resumes as a no-op; one cut off after training finishes its steps
        done = completed_run(Path(resume), evaluated=True)
        if done is not None:
            if done.extras.pop("unregistered", False):  # cut off before its registration: only that is left
                from modelfoundry.rundir import load_run_config

                register_run(done, load_run_config(done.run_dir))
            done.wall_s = time.perf_counter() - started
            return done
    worker = None
    if resume is None:  # MLflow is imported and its store opened in a child process while this one trains
        from modelfoundry.api.tracking_worker import TrackingWorker

        config = as_config(config)
        worker = TrackingWorker.start(config.tracking)
    try:
        data, fit_result, config, run_path = _train(config, run_dir, resume, progress)
        result = RunResult(run_path, data.task, {}, [], fit_result.best_epoch, len(fit_result.history),
                           fit_result.monitor, fit_result.best_value, fit_result.stopped_early, fit_result.interrupted)
        result.extras.update(_facts(data, fit_result, run_path))
        if not fit_result.interrupted:
            result.metrics, result.headline = _evaluate_test(config, data, fit_result, run_path, progress)
            if config.tracking.enabled:
                register_run(result, config, worker)
    finally:
        if worker is not None:
            worker.close()
    result.wall_s = time.perf_counter() - started
    return result


def train(config: Config | str | Path | None = None, *, run_dir: str | Path | None = None,
          resume: str | Path | None = None, progress: Reporter | bool | None = None) -> RunResult:
    """Prepare the data and train (no test evaluation); the model is saved in `run_dir/model/`."""
    started = time.perf_counter()
    if resume is not None:
        done = completed_run(Path(resume), evaluated=False)
        if done is not None:
            done.wall_s = time.perf_counter() - started
            return done
    data, fit_result, config, run_path = _train(config, run_dir, resume, progress)
    return RunResult(run_path, data.task, {}, [], fit_result.best_epoch, len(fit_result.history), fit_result.monitor,
                     fit_result.best_value, fit_result.stopped_early, fit_result.interrupted,
                     wall_s=time.perf_counter() - started)


def _train(config: Any, run_dir: Any, resume: Any,
           progress: Reporter | bool | None) -> tuple[PreparedData, FitResult, Config, Path]:
    from modelfoundry.experiment import prepare
    from modelfoundry.rundir import load_run_config, plan_run_dir, save_config

    finished_before = False
    if resume is not None:
        run_path = Path(resume)
        config = load_run_config(run_path)
        # a finished run with its model saved: only evaluation/registration can be left (a run killed before
        # saving its model trains no further either: the loop sees the finished checkpoint)
        finished_before = model_saved(run_path) and finished_checkpoint(run_path, config) is not None
    else:
        config = as_config(config)
        run_path = plan_run_dir(config, run_dir)  # checked now, created once the data is known to be usable
    estimate = _preflight(config, progress) if config.data.task == "causal_lm" else None
    data = prepare(config)
    check_task(config, data.task)
    if resume is None:  # the quick data checks' warnings, before training (never fails the run)
        from modelfoundry.api.data_check import warn_before_training

        warn_before_training(config, data, progress)
    if data.task == "classification" and config.evaluation.threshold.metric != "none":  # before training for it
        from modelfoundry.evaluate.threshold import positive_index

        positive_index(config.evaluation.threshold, list(data.target_encoder.classes_), _train_counts(data),
                       config.data.target)
    if resume is not None:
        check_same_data(run_path, data.info)
        return _estimated(_fit_and_save(config, data, run_path, True, finished_before, progress), estimate)
    from modelfoundry.data.sources import describe_source

    # the run directory records where the data is, whatever the working directory
    config = config.model_copy(update={"data": config.data.model_copy(
        update={"source": describe_source(config.data.source)})})
    created = not run_path.exists()
    try:
        run_path.mkdir(parents=True, exist_ok=True)
        save_config(run_path, config)
        write_json(RunDir(run_path).data_record, data.info)
        return _estimated(_fit_and_save(config, data, run_path, False, False, progress), estimate)
    except Exception:
        if created and not RunDir(run_path).last_checkpoint.exists():  # nothing to resume: leave no husk
            shutil.rmtree(run_path, ignore_errors=True)
        raise


def _fit_and_save(config: Config, data: PreparedData, run_path: Path, resume: bool, finished_before: bool,
                  progress: Reporter | bool | None) -> tuple[PreparedData, FitResult, Config, Path]:
    from modelfoundry.experiment import fit_config
    from modelfoundry.manifest import build_manifest
    from modelfoundry.rundir import save_model
    from modelfoundry.train.runtime import seed_everything, select_device

    determinism = seed_everything(config.seed, config.training.deterministic)
    if not finished_before:  # a finished run keeps the manifest of the process that trained it
        write_json(RunDir(run_path).manifest, build_manifest(
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
    if not fit_result.interrupted and data.task == "causal_lm":
        from modelfoundry.rundir import save_language_model

        spec = {"name": config.name, "task": data.task, "inputs": data.input_spec.to_json(), "n_outputs": 1,
                "best_epoch": fit_result.best_epoch, "config_hash": config_hash(config)}
        save_language_model(run_path, fit_result.model.cpu(), spec, data.preprocessor, data.preprocessor.tokenizer)
    elif not fit_result.interrupted:
        if data.task == "anomaly":  # the threshold, saved with the model: from the normal validation rows' scores
            _calibrate_anomaly(fit_result.model, data)
        spec = {"name": config.name, "task": data.task, "inputs": data.input_spec.to_json(),
                "input_shape": list(data.preprocessor.input_shape_) if len(data.input_spec) == 1 else None,
                "n_outputs": data.n_outputs, "target": config.data.target, "columns": data.preprocessor.columns,
                "classes": getattr(data.target_encoder, "classes_", None), "best_epoch": fit_result.best_epoch,
                "config_hash": config_hash(config)}
        if data.task == "anomaly":  # the label column, or none: unlabelled data trained the detector
            spec["target"] = data.target_encoder.column_ if data.target_encoder.labelled else None
        if data.task == "generative":  # a GAN's class column, or none (unlabelled rows, one stand-in class)
            spec["target"] = data.info["generative"]["column"]
        if data.task == "classification" and config.evaluation.threshold.metric != "none":
            spec["threshold"] = tuned_threshold(config, data, fit_result.model)
        save_model(run_path, fit_result.model.cpu(), spec, data.preprocessor, data.target_encoder)
    if not fit_result.interrupted and data.task in ("classification", "regression", "anomaly"):
        save_reference_profile(config, data, fit_result.model, run_path)
    return data, fit_result, config, run_path


def save_reference_profile(config: Config, data: PreparedData, model: Any, run_path: Path) -> None:
    """model/reference.json: the profile of the training data the monitor compares served data with. Data the
    profile cannot describe is logged and skipped: it never fails the run."""
    import logging

    import numpy as np

    from modelfoundry.errors import FoundryError
    from modelfoundry.evaluate.metrics import task_metrics
    from modelfoundry.models.inference import predict_outputs
    from modelfoundry.monitor.embedding import build_embedding_profile, has_encoder
    from modelfoundry.monitor.profile import build_reference, save_reference

    frames = data.frames
    if frames is None or "val" not in frames or data.preprocessor.desc.get("kind") == "time_series":
        return
    target = data.target_encoder
    outputs = predict_outputs(model, data.X["val"], data.task)
    try:
        labels = list(target.classes_) if data.task == "classification" else None
        if data.task == "anomaly":  # the prediction profiled is the anomaly score of the normal validation rows
            threshold = float(target.threshold_)
            metrics = {"threshold": threshold, "flagged_share": float((outputs > threshold).mean())} if len(outputs) \
                else {}
        else:
            metrics = task_metrics(data.task, data.y["val"], outputs, target.decode, config.evaluation.top_k) \
                if len(outputs) else {}
            outputs = target.decode(outputs) if data.task == "regression" else outputs  # as the server gives them
        saved = RunDir(run_path).model_record  # its tuned decision threshold, which the server predicts with
        threshold = ModelRecord.read(saved).threshold if saved.is_file() else None
        reference = build_reference(data.preprocessor.desc, data.task, labels, frames["train"], frames["val"],
                                    outputs, metrics, config.monitor, threshold)
        if has_encoder(data.preprocessor.desc) and config.monitor.ood.enabled and len(outputs):
            reference.embedding = build_embedding_profile(model, data.X["train"], data.X["val"], data.n_outputs,
                                                          config.monitor.ood.false_alarm_rate, config.seed)
    except (FoundryError, ValueError, KeyError, np.linalg.LinAlgError) as exc:
        logging.getLogger(__name__).warning("no reference profile for monitoring: %s", first_line(str(exc)))
        return
    save_reference(run_path, reference)


def tuned_threshold(config: Config, data: PreparedData, model: Any) -> dict[str, Any]:
    """model.json's `threshold`: the decision threshold tuned on the validation split (evaluation.threshold)."""
    from modelfoundry.evaluate.threshold import threshold_record
    from modelfoundry.models.inference import predict_outputs

    return threshold_record(config.evaluation.threshold, list(data.target_encoder.classes_), _train_counts(data),
                            data.y["val"], predict_outputs(model, data.X["val"], data.task), config.data.target)


def _train_counts(data: PreparedData) -> Any:
    """Training rows per class as the data has them (before data.balance resampled the split)."""
    import numpy as np

    before = data.info.get("balance", {}).get("before")
    return np.array(list(before.values())) if before else np.bincount(data.y["train"],
                                                                      minlength=len(data.target_encoder.classes_))


def _calibrate_anomaly(model: Any, data: PreparedData) -> None:
    """Set the anomaly threshold: the (1 - data.anomaly.false_alarm_rate) quantile of the scores of the normal
    validation rows."""
    from modelfoundry.models.autoencoder import calibrate_threshold
    from modelfoundry.models.inference import predict_outputs

    target = data.target_encoder
    target.threshold_ = calibrate_threshold(predict_outputs(model, data.X["val"], "anomaly"), target.false_alarm_rate)


def _evaluate_test(config: Config, data: PreparedData, fit_result: FitResult, run_path: Path,
                   progress: Reporter | bool | None = None) -> tuple[dict[str, float], list[str]]:
    if data.task == "causal_lm":
        from modelfoundry.api.language_models import evaluate_trained

        return evaluate_trained(config, data, fit_result, run_path, progress)
    if data.task == "anomaly":
        return _evaluate_anomaly(config, data, fit_result, run_path)
    if data.task == "generative":  # C2ST, TSTR and FD of generated rows, beside Gaussian noise
        from modelfoundry.api.sampling import evaluate_trained_gan

        return evaluate_trained_gan(config, data, fit_result, run_path)
    from modelfoundry.evaluate.baselines import baseline_metrics
    from modelfoundry.evaluate.evaluation import evaluate_outputs
    from modelfoundry.evaluate.metrics import headline
    from modelfoundry.models.inference import predict_outputs

    output = predict_outputs(fit_result.model, data.X["test"], data.task)
    baselines = baseline_metrics(data.task, *_natural_train(data), data.n_outputs, data.target_encoder.decode,
                                 config.evaluation.top_k, data.texts, season=_season(data))
    facts = {"run": str(run_path), "model": config.model.name, "task": data.task,
             "rows (train/val/test)": "/".join(str(data.info["split"][s]) for s in ("train", "val", "test")),
             "best epoch": f"{fit_result.best_epoch} of {len(fit_result.history)} ({fit_result.monitor} = "
                           f"{fit_result.best_value:.4f})" if fit_result.best_value is not None else "-"}
    eval_dir = RunDir(run_path).eval_dir
    metrics = evaluate_outputs(task=data.task, y_true=data.y["test"], output=output, rows=data.rows["test"],
                               target_encoder=data.target_encoder, cfg=config.evaluation, out_dir=eval_dir,
                               history=fit_result.history, baselines=baselines, title=f"{config.name}: test split",
                               facts=facts, threshold=ModelRecord.read(RunDir(run_path).model_record).threshold)
    return metrics, headline(data.task, config.evaluation.metrics, metrics)


def _natural_train(data: PreparedData) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every split's inputs and targets, the training split without data.balance's resampling (each source row once,
    no synthetic rows), as `foundry evaluate` fits the baselines: a dummy baseline fitted on balanced classes would
    guess at random rather than predict the majority."""
    if "balance" not in data.info:
        return data.X, data.y
    import numpy as np

    from modelfoundry.artifacts.inputs import take

    rows = data.rows["train"]
    _, first = np.unique(rows, return_index=True)
    kept = np.sort(first[rows[first] >= 0])
    return {**data.X, "train": take(data.X["train"], kept)}, {**data.y, "train": data.y["train"][kept]}


def _evaluate_anomaly(config: Config, data: PreparedData, fit_result: FitResult,
                      run_path: Path) -> tuple[dict[str, float], list[str]]:
    """An anomaly detector on the test split (all its rows), beside an IsolationForest and a Mahalanobis distance
    fitted on the same normal training rows."""
    from modelfoundry.evaluate.anomaly import baseline_metrics, evaluate_anomaly, headline
    from modelfoundry.models.inference import predict_outputs

    target = data.target_encoder
    if target.threshold_ is None:  # resumed after its model was saved: the same weights give the same threshold
        _calibrate_anomaly(fit_result.model, data)
    truth = data.y["test"] > 0.5 if target.labelled else None
    scores = predict_outputs(fit_result.model, data.X["test"], data.task)
    info = data.info["anomaly"]
    facts = {"run": str(run_path), "model": config.model.name, "task": data.task,
             "rows (train/val/test)": "/".join(str(data.info["split"][s]) for s in ("train", "val", "test")),
             "normal": ", ".join(target.normal_) if target.labelled else "every row (no labels)",
             "left out of training (anomalies in train/val)": f"{info['left_out']['train']}/{info['left_out']['val']}",
             "threshold": f"{target.threshold_:.6g} (false-alarm rate {target.false_alarm_rate:g} on the normal "
                          "validation rows)"}
    metrics = evaluate_anomaly(scores=scores, is_anomaly=truth, threshold=target.threshold_, rows=data.rows["test"],
                               out_dir=RunDir(run_path).eval_dir, plots=config.evaluation.plots,
                               top=config.evaluation.confused_examples, history=fit_result.history,
                               baselines=baseline_metrics(data.X, truth, target.false_alarm_rate, config.seed),
                               title=f"{config.name}: test split", facts=facts)
    return metrics, headline(metrics)


def _estimated(outcome: tuple[PreparedData, FitResult, Config, Path], estimate: Any) -> tuple[
        PreparedData, FitResult, Config, Path]:
    if estimate is not None:  # shown beside the measured peak in the summary
        outcome[1].extras["memory_estimate_bytes"] = estimate.total_bytes
    return outcome


def _preflight(config: Config, progress: Reporter | bool | None) -> Any:
    """A language model's memory estimate, before anything is loaded: reported, and a TrainingError with the
    settings that would fit when it won't (api/estimation.py)."""
    from modelfoundry.api.estimation import preflight
    from modelfoundry.reporting import reporter_for

    result = preflight(config)
    reporter = reporter_for(progress)
    if reporter is not None:
        reporter.message(result.summary(items=3))
    return result


def _season(data: PreparedData) -> int | None:
    """A time series' seasonal-naive period (its baselines replace dummy/linear), else None."""
    return data.info["time_series"]["season"] if "time_series" in data.info else None


def _facts(data: PreparedData, fit_result: FitResult, run_path: Path) -> dict[str, Any]:
    """What the summary shows besides metrics: the parameters trained, whether text came from the cache, the
    resampled training rows (data.balance) and the tuned decision threshold."""
    params = list(fit_result.model.parameters())
    facts: dict[str, Any] = {"parameters": {"total": sum(p.numel() for p in params),
                                            "trainable": sum(p.numel() for p in params if p.requires_grad)}}
    if "cache" in data.info:  # the prepared-data cache: hit or miss, and the time saved
        facts["prepared_cache"] = data.info["cache"]
    if "text_cache" in data.info:
        facts["text_cache"] = data.info["text_cache"]["hit"]
    if "text" in data.info:
        facts["text"] = data.info["text"]
    if "balance" in data.info:
        facts["balance"] = data.info["balance"]
    saved = RunDir(run_path).model_record
    threshold = ModelRecord.read(saved).threshold if saved.is_file() else None
    if threshold is not None:
        facts["threshold"] = threshold
    if "feature_cache" in fit_result.extras:
        facts["feature_cache"] = fit_result.extras["feature_cache"]
    if "average" in fit_result.extras:  # training.average: the saved weights are an average
        facts["average"] = fit_result.extras["average"]
    if "memory_estimate_bytes" in fit_result.extras:
        from modelfoundry.train.estimate import peak_rss_bytes

        facts["memory"] = {"estimated_bytes": fit_result.extras["memory_estimate_bytes"],
                           "peak_rss_bytes": peak_rss_bytes()}
    return facts


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
