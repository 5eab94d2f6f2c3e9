"""`tune`: the config's hyperparameter search on Optuna, its outputs, and its logging to MLflow."""

from __future__ import annotations

from pathlib import Path

from modelfoundry.api.arguments import as_config
from modelfoundry.api.registration import track_study
from modelfoundry.api.results import TuneResult
from modelfoundry.config import Config, check_task
from modelfoundry.reporting import Reporter


def tune(config: Config | str | Path, *, n_trials: int | None = None, n_jobs: int | None = None,
         out: str | Path | None = None, storage: str | None = None, resume: bool = False,
         progress: Reporter | bool | None = None) -> TuneResult:
    """Run the config's hyperparameter search (its `tune:` section) on Optuna.

    The study lives in `storage` (default: SQLite `study.db` in the output directory); `resume` continues
    it, or joins it as another worker, until the study has `n_trials` trials. The output directory
    (default `<output.dir>/<name>-tune/`) gets best.yaml, trials.csv, summary.json and plots.

    Args:
        n_trials, n_jobs, storage: override tune.n_trials, tune.n_jobs and tune.storage.
        progress: a Reporter to report the trials to; None or a bool: none.
    """
    from modelfoundry.experiment import prepare
    from modelfoundry.errors import ConfigError
    from modelfoundry.tune.report import trial_rows, write_outputs
    from modelfoundry.tune.study import default_storage
    from modelfoundry.tune.trials import run_study

    config = as_config(config)
    if config.tune is None:
        raise ConfigError(f"The config '{config.name}' has no tune: section, so there is nothing to search.",
                          "Add one (see examples/breast_cancer_tune.yaml and docs/tuning.md).")
    overrides = {k: v for k, v in {"n_trials": n_trials, "n_jobs": n_jobs, "storage": storage}.items()
                 if v is not None}
    if overrides:
        config = config.model_copy(update={"tune": config.tune.model_validate(
            {**config.tune.model_dump(), **overrides})})
    data = prepare(config)  # bad data or a metric foreign to the task: before any trial
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
        result.extras["tracking"] = track_study(config, result)
    return result
