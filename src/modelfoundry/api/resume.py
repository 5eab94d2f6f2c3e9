"""What is left to do when a run directory is resumed: its finished checkpoint, saved model and data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelfoundry.api.results import RunResult
from modelfoundry.artifacts.records import DataRecord, ModelRecord
from modelfoundry.artifacts.rundir import RunDir
from modelfoundry.config import Config
from modelfoundry.errors import RunDirError
from modelfoundry.storage import read_json


REGISTERED = RunDir.REGISTERED  # written once `run` has logged and registered the run


def finished_checkpoint(run_path: Path, config: Config) -> dict[str, Any] | None:
    """The state of the run's last checkpoint if its training ended (last epoch or early stopping), else None."""
    from modelfoundry.train.loop import checkpoint_finished, load_checkpoint

    state = load_checkpoint(RunDir(run_path).last_checkpoint)
    return state if checkpoint_finished(state, config.training) else None


def model_saved(run_path: Path) -> bool:
    layout = RunDir(run_path)
    return all(p.is_file() for p in (layout.weights, layout.model_record, layout.preprocess))


def completed_run(run_path: Path, *, evaluated: bool) -> RunResult | None:
    """For `--resume` of a run that trained to its end (or stopped early) and saved its model and, for `run`,
    its evaluation: its result, read from the run directory, without writing anything; None when training
    or evaluation is left to do. `extras["unregistered"]` says that registration (tracking on) is left."""
    from modelfoundry.evaluate.metrics import headline
    from modelfoundry.rundir import load_run_config

    config = load_run_config(run_path)
    if not model_saved(run_path):  # checked first: it spares loading the checkpoint of an unfinished run
        return None
    state = finished_checkpoint(run_path, config)
    if state is None:
        return None
    layout = RunDir(run_path)
    registered = layout.registered
    if evaluated and not layout.eval_metrics.is_file():
        return None
    task = ModelRecord.read(layout.model_record).task
    stopping = state["early_stopping"]
    metrics = read_json(layout.eval_metrics) if evaluated else {}
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


def check_same_data(run_path: Path, info: dict[str, Any]) -> None:
    recorded = DataRecord.read(RunDir(run_path).data_record).sha256
    if recorded != info["fingerprint"]["sha256"]:
        raise RunDirError(f"The data of {run_path} changed since the run started (fingerprint {recorded[:12]} then,"
                          f" {info['fingerprint']['sha256'][:12]} now); resuming would mix two datasets.",
                          "Restore the original data file, or start a new run.")
