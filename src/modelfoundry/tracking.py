"""Tracking on MLflow: where the store is, the client, runs and studies logged, a run's model registered.

Where tracking lives (docs/tracking.md): `tracking.uri` (or --uri) if given, else $MLFLOW_TRACKING_URI, else
the project's SQLite store: the nearest `foundry.db` in the working directory or one of its parents, else a new
`foundry.db` in the working directory. Relative artifact folders sit beside a local SQLite store.
Registration is idempotent: a run directory whose config hash is already registered gets its version back,
and a version is created in one call with all its lineage tags, so a kill never leaves a half-registered one.
Every store call is bounded (HTTP timeout and retries) and fails as one RegistryError naming the store with
its credentials redacted; URIs in params and tags are redacted too.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from modelfoundry.artifacts.records import ModelRecord
from modelfoundry.artifacts.rundir import RunDir
from modelfoundry.config import Config, TrackingConfig, config_hash
from modelfoundry.errors import FoundryError, RegistryError, first_line
from modelfoundry.redact import redact
from modelfoundry.storage import read_json

STORE_FILE = "foundry.db"
# MLflow waits 120 s per HTTP request and retries 7 times with backoff: minutes on an unreachable server
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
               "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
# a module a store needs but is missing -> what to pip install
DRIVERS = {"psycopg2": "psycopg2-binary", "psycopg": "'psycopg[binary]'", "pymysql": "pymysql",
           "MySQLdb": "mysqlclient", "pyodbc": "pyodbc", "pymssql": "pymssql", "boto3": "boto3",
           "google": "google-cloud-storage", "azure": "azure-storage-blob"}
LOGGED_FILES = RunDir.FILES  # config.yaml data.json manifest.json preprocess.json metrics.jsonl
LOGGED_DIRS = RunDir.DIRS  # model/ eval/


def resolve_uri(uri: str | None = None) -> str:
    """The tracking URI: given, else $MLFLOW_TRACKING_URI, else the project's SQLite store (`project_store`)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_store()}"


def project_store(start: str | Path | None = None) -> Path:
    """The nearest `foundry.db` in `start` (default: the working directory) or a parent; else `start/foundry.db`.

    So every subdirectory of a project shares the store at its root instead of creating one of its own.
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / STORE_FILE).is_file():
            return folder / STORE_FILE
    return here / STORE_FILE


def describe_uri(uri: str | None = None) -> str:
    """The resolved tracking URI as shown to people: credentials redacted, a relative SQLite path made absolute."""
    resolved = resolve_uri(uri)
    local = _sqlite_path(resolved)
    return f"sqlite:///{local}" if local is not None else redact(resolved)


def _sqlite_path(uri: str) -> Path | None:
    """The absolute database file of a `sqlite:///PATH` URI; None for other stores and in-memory SQLite."""
    if not uri.startswith("sqlite:///") or uri in ("sqlite://", "sqlite:///:memory:"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?")[0]).resolve()


def store_error(exc: BaseException, uri: str | None, done: str = "") -> FoundryError:
    """One paragraph for a failed tracking-store call (credentials redacted); `done` says what is intact."""
    where = redact(resolve_uri(uri))
    missing = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    if missing and missing.split(".")[0] == "mlflow":
        return RegistryError(f"Tracking needs MLflow, which is not installed ({first_line(exc)}).{done}",
                             "pip install mlflow-skinny, or set tracking.enabled: false.")
    if missing:
        root = missing.split(".")[0]
        return RegistryError(f"The tracking store {where} needs the Python package '{root}', which is not installed."
                             f"{done}", f"pip install {DRIVERS.get(root, root)}, or use another tracking.uri / --uri.")
    return RegistryError(f"The tracking store {where} could not be used: {redact(first_line(exc))}.{done}",
                         "Check that it is reachable and that tracking.uri, --uri or $MLFLOW_TRACKING_URI names it "
                         "(docs/tracking.md), or set tracking.enabled: false.")


_F = TypeVar("_F", bound=Callable[..., Any])


def reaching_store(fn: _F) -> _F:
    """Turn any failure of a store call (unreachable, refused, missing driver) into one RegistryError."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FoundryError:
            raise
        except Exception as exc:  # noqa: BLE001 - MLflow, SQLAlchemy, requests: all one paragraph for people
            uri = signature.bind_partial(*args, **kwargs).arguments.get("uri")
            raise store_error(exc, uri) from None
    return wrapper  # type: ignore[return-value]


def client(uri: str | None = None) -> Any:
    """An MlflowClient on `uri`, with MLflow's and alembic's start-up chatter silenced and HTTP calls bounded
    (HTTP_LIMITS, unless the environment sets them)."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for key, value in HTTP_LIMITS.items():
        os.environ.setdefault(key, value)
    import mlflow
    from mlflow import MlflowClient

    resolved = resolve_uri(uri)
    mlflow.set_tracking_uri(resolved)
    return MlflowClient(tracking_uri=resolved)


def log_run(run_dir: Path, config: Config, metrics: dict[str, float], *, parent_version: str | None = None) -> dict:
    """Log a finished run to MLflow and (unless `tracking.register_model` is off) register its model.

    Idempotent per run: when this run directory with this config hash is already logged (a resumed or repeated
    call), nothing is logged again and its existing version is returned (registered now if that failed before).
    Returns {"run_id", "experiment", "model", "version" (or None), "uri" (redacted), "existing"}.
    """
    from mlflow.entities import Metric, Param

    cfg: TrackingConfig = config.tracking
    mlf = client(cfg.uri)
    experiment = experiment_for(mlf, cfg.experiment or config.name, cfg.artifacts, cfg.uri)
    identity = {"foundry.run_dir": str(Path(run_dir).resolve()), "foundry.config_hash": config_hash(config)}
    out = {"experiment": cfg.experiment or config.name, "model": config.name, "uri": describe_uri(cfg.uri)}
    earlier = _logged_run(mlf, experiment, identity)
    if earlier is not None:
        version = _version_of_run(mlf, config.name, earlier.info.run_id) if cfg.register_model else None
        if version is None and cfg.register_model:  # logged, but its registration failed: register it now
            version = register(mlf, config.name, earlier.info.artifact_uri, earlier.info.run_id,
                               _lineage(run_dir, config, parent_version))
        return {"run_id": earlier.info.run_id, "version": version, "existing": True, **out}
    run = mlf.create_run(experiment, run_name=Path(run_dir).name, tags=identity)
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    params = [Param(_param_key(k), redact(v)[:500]) for k, v in flatten(config.model_dump(mode="json")).items()]
    epochs = [json.loads(line) for line in RunDir(run_dir).metrics_log.read_text().splitlines() if line.strip()]
    series = [Metric(k, float(v), now, r["epoch"]) for r in epochs for k, v in r.items()
              if k != "epoch" and isinstance(v, (int, float))]
    series += [Metric(f"test_{k}", float(v), now, 0) for k, v in metrics.items()]
    for i in range(0, len(params), 100):  # MLflow caps a batch at 100 params and 1000 metrics
        mlf.log_batch(run_id, params=params[i:i + 100])
    for i in range(0, len(series), 1000):
        mlf.log_batch(run_id, metrics=series[i:i + 1000])
    for name in LOGGED_FILES:
        if (run_dir / name).is_file():
            mlf.log_artifact(run_id, str(run_dir / name))
    for name in LOGGED_DIRS:
        if (run_dir / name).is_dir():
            mlf.log_artifacts(run_id, str(run_dir / name), name)
    mlf.set_terminated(run_id)
    version = None
    if cfg.register_model:
        version = register(mlf, config.name, run.info.artifact_uri, run_id, _lineage(run_dir, config, parent_version))
    return {"run_id": run_id, "version": version, "existing": False, **out}


def _logged_run(mlf: Any, experiment: str, identity: dict[str, str]) -> Any:
    """The finished MLflow run with these identity tags (run directory, config hash), or None."""
    found = mlf.search_runs([experiment], filter_string=" and ".join(
        f"tags.`{k}` = '{quoted(v)}'" for k, v in identity.items()) + " and attributes.status = 'FINISHED'",
        max_results=1)
    return found[0] if found else None


def _version_of_run(mlf: Any, name: str, run_id: str) -> str | None:
    """The lowest version of `name` registered from `run_id`, or None."""
    versions = [int(v.version) for v in mlf.search_model_versions(f"name='{quoted(name)}'") if v.run_id == run_id]
    return str(min(versions)) if versions else None


def log_study(config: Config, study: str, storage: str, trials: list[dict[str, Any]],
              summary: dict[str, Any]) -> dict[str, Any]:
    """Log a tuning study: one parent run with the search and its best value, one nested run per trial
    (parameters, value, state, error). Trials logged by an earlier call (a resumed study) are skipped."""
    from mlflow.entities import Metric, Param, RunTag

    cfg: TrackingConfig = config.tracking
    mlf = client(cfg.uri)
    experiment = experiment_for(mlf, cfg.experiment or config.name, cfg.artifacts, cfg.uri)
    key = f"{redact(storage)}#{study}"
    found = mlf.search_runs([experiment], filter_string=f"tags.`foundry.study_key` = '{quoted(key)}'",
                            max_results=1)
    if found:
        parent = found[0].info.run_id
    else:
        parent = mlf.create_run(experiment, run_name=f"tune-{study}",
                                tags={"foundry.study_key": key, "foundry.study": study}).info.run_id
        params = [Param(_param_key(k), redact(v)[:500]) for k, v in flatten(config.model_dump(mode="json")).items()]
        for i in range(0, len(params), 100):
            mlf.log_batch(parent, params=params[i:i + 100])
    logged = {r.data.tags.get("foundry.trial") for r in mlf.search_runs(
        [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'", max_results=50000)}
    now = int(time.time() * 1000)
    new = [t for t in trials if str(t["number"]) not in logged and t["state"] in ("COMPLETE", "PRUNED", "FAIL")]
    for t in new:
        run = mlf.create_run(experiment, run_name=f"trial-{t['number']}", tags={
            "mlflow.parentRunId": parent, "foundry.trial": str(t["number"]), "foundry.state": t["state"],
            **({"foundry.error": redact(t["error"])[:5000]} if t.get("error") else {})})
        params = [Param(_param_key(k), redact(v)[:500]) for k, v in t.items() if k in config.tune.space]
        metrics = [Metric(summary["metric"], float(t["value"]), now, 0)] if t["value"] is not None else []
        metrics += [Metric(k, float(t[k]), now, 0) for k in ("epochs", "wall_s") if t.get(k) is not None]
        mlf.log_batch(run.info.run_id, params=params, metrics=metrics)
        mlf.set_terminated(run.info.run_id, "FINISHED" if t["state"] != "FAIL" else "FAILED")
    best = summary.get("best")
    tags = [RunTag("foundry.trials", str(summary["trials"]))]
    if best:
        mlf.log_batch(parent, metrics=[Metric(f"best_{summary['metric']}", float(best["value"]), now, 0)],
                      tags=tags + [RunTag("foundry.best_trial", str(best["number"]))])
    mlf.set_terminated(parent)
    return {"run_id": parent, "experiment": cfg.experiment or config.name, "trials_logged": len(new),
            "uri": describe_uri(cfg.uri)}


def _param_key(key: str) -> str:
    return re.sub(r"[^\w\-. :/]", "_", key)  # MLflow keys allow letters, digits, _ - . space : / only


def quoted(text: str) -> str:
    return text.replace("'", "\\'")


def register(mlf: Any, name: str, source: str, run_id: str, tags: dict[str, str]) -> str:
    """Create a new version of `name` (creating the model if needed) in one call, lineage tags included."""
    from mlflow.exceptions import MlflowException

    try:
        mlf.create_registered_model(name)
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    return str(mlf.create_model_version(name, source=source, run_id=run_id, tags=tags).version)


def _lineage(run_dir: Path, config: Config, parent_version: str | None) -> dict[str, str]:
    manifest = read_json(RunDir(run_dir).manifest)
    git = manifest.get("git") or {}
    tags = {"foundry.config_hash": config_hash(config), "foundry.data_sha256": manifest["dataset"]["sha256"],
            "foundry.run_dir": str(Path(run_dir).resolve()), "foundry.model": config.model.name,
            "foundry.task": ModelRecord.read(RunDir(run_dir).model_record).task}
    if git.get("commit"):
        tags["foundry.git_commit"] = git["commit"] + ("-dirty" if git.get("dirty") else "")
    if parent_version:
        tags["foundry.parent_version"] = parent_version
    return tags


def experiment_for(mlf: Any, name: str, artifacts: str, uri: str | None) -> str:
    """The experiment `name` (created, or restored if deleted); a new one keeps its artifacts under `artifacts`."""
    existing = mlf.get_experiment_by_name(name)
    if existing is not None:
        if existing.lifecycle_stage == "deleted":  # e.g. removed after a failed import: a name MLflow still holds
            mlf.restore_experiment(existing.experiment_id)
        return existing.experiment_id
    return mlf.create_experiment(name, artifact_location=artifact_location(artifacts, uri, name))


def artifact_location(artifacts: str, uri: str | None, experiment: str) -> str:
    """Where a new experiment's artifacts go: an artifact URI as given; a relative folder beside a local SQLite
    store (so a project's subdirectories share one folder), else under the working directory; always absolute."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", artifacts):
        return f"{artifacts.rstrip('/')}/{experiment}"
    store = _sqlite_path(resolve_uri(uri))
    base = store.parent if store is not None else Path.cwd()
    return str((base / artifacts).resolve() / experiment)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out
