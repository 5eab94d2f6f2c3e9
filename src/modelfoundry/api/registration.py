"""Logging runs and studies to MLflow and registering their models; a store failure leaves the run intact."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelfoundry.artifacts.rundir import RunDir
from modelfoundry.config import Config
from modelfoundry.storage import write_json

if TYPE_CHECKING:
    from modelfoundry.api.results import RunResult, TuneResult
    from modelfoundry.api.tracking_worker import TrackingWorker


def register_run(result: RunResult, config: Config, worker: TrackingWorker | None = None) -> None:
    """Log and register the run (idempotent per run), and note it in the run directory for later resumes.

    With a `worker` (started when the run began), the logging happens in it, with the same result or error."""
    result.extras["registry"] = (worker.track_run if worker is not None else track_run)(
        result.run_dir, config, result.metrics)
    write_json(RunDir(result.run_dir).registered, {k: result.extras["registry"].get(k)
                                             for k in ("model", "version", "run_id", "experiment")})


def track_run(run_path: Path, config: Config, metrics: dict[str, float], *, parent_version: str | None = None,
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


def parent_version(model: str | Path, local: Path, saved: Any) -> str | None:
    """The registered version a compressed model derives from: the one a NAME/VERSION or NAME@ALIAS
    reference resolved to (its download is <cache>/registry/<name>/<run id>/<version>), or the version registered from
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


def track_study(config: Config, result: TuneResult) -> dict[str, Any]:
    """Log the study to MLflow (a parent run, one nested run per trial); the study itself is complete either way."""
    from modelfoundry.errors import FoundryError
    from modelfoundry.tracking import log_study, store_error

    try:
        return log_study(config, result.study_name, result.storage, result.rows, result.summary)
    except Exception as exc:  # noqa: BLE001 - any store failure: the study and its outputs are intact
        if isinstance(exc, FoundryError):
            raise
        raise store_error(exc, config.tracking.uri, f" The study itself is complete in {result.out_dir}.") from None
