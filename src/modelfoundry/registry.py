"""Model registry on MLflow: tracking of runs, versions with lineage, aliases with an append-only history.

Embedded default: `sqlite:///foundry.db` with artifacts under `./mlartifacts` (zero setup); any MLflow
tracking URI (PostgreSQL-backed, remote server) via `tracking.uri` or $MLFLOW_TRACKING_URI.

MLflow keeps no history of alias moves, so each move (promote or rollback) is recorded as a registered-model
tag `foundry.alias_log.<time>-<id>` holding JSON {time, user, alias, from, to, action, reason}. Rollback
replays that log as a stack per alias: promote pushes, rollback pops.
A version is created in one call with all its lineage tags, so a kill never leaves a half-registered version.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

from modelfoundry.config import Config, TrackingConfig, config_hash
from modelfoundry.errors import ModelNotFound, RegistryError
from modelfoundry.storage import read_json

DEFAULT_URI = "sqlite:///foundry.db"
LOG_PREFIX = "foundry.alias_log."
LOGGED_FILES = ("config.yaml", "data.json", "manifest.json", "preprocess.json", "metrics.jsonl")
LOGGED_DIRS = ("model", "eval")
REF = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_-]+))?$")


def resolve_uri(uri: str | None = None) -> str:
    """The tracking URI: given, else $MLFLOW_TRACKING_URI, else the embedded SQLite database."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def client(uri: str | None = None) -> Any:
    """An MlflowClient on `uri`, with MLflow's and alembic's start-up chatter silenced."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import mlflow
    from mlflow import MlflowClient

    resolved = resolve_uri(uri)
    mlflow.set_tracking_uri(resolved)
    return MlflowClient(tracking_uri=resolved)


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """'NAME', 'NAME/VERSION' or 'NAME@ALIAS' -> (name, version, alias)."""
    match = REF.match(ref)
    if not match:
        raise RegistryError(f"'{ref}' is not a model reference.",
                            "Write NAME, NAME/VERSION (e.g. digits/3) or NAME@ALIAS (e.g. digits@production).")
    return match["name"], match["version"], match["alias"]


# ------------------------------------------------------------------------------------------ logging
def log_run(run_dir: Path, config: Config, metrics: dict[str, float], *, parent_version: str | None = None) -> dict:
    """Log a finished run to MLflow and (unless `tracking.register` is off) register its model.

    Returns {"run_id", "experiment", "version" (or None), "uri"}.
    """
    from mlflow.entities import Metric, Param

    cfg: TrackingConfig = config.tracking
    mlf = client(cfg.uri)
    experiment = _experiment_id(mlf, cfg.experiment or config.name, cfg.artifacts)
    run = mlf.create_run(experiment, run_name=Path(run_dir).name, tags={"foundry.run_dir": str(run_dir)})
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    params = [Param(_param_key(k), str(v)[:500]) for k, v in _flatten(config.model_dump(mode="json")).items()]
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
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
    return {"run_id": run_id, "experiment": cfg.experiment or config.name, "model": config.name, "version": version,
            "uri": resolve_uri(cfg.uri)}


def log_study(config: Config, study: str, storage: str, trials: list[dict[str, Any]],
              summary: dict[str, Any]) -> dict[str, Any]:
    """Log a tuning study: one parent run with the search and its best value, one nested run per trial
    (parameters, value, state, error). Trials logged by an earlier call (a resumed study) are skipped."""
    from mlflow.entities import Metric, Param, RunTag

    cfg: TrackingConfig = config.tracking
    mlf = client(cfg.uri)
    experiment = _experiment_id(mlf, cfg.experiment or config.name, cfg.artifacts)
    key = f"{storage}#{study}"
    found = mlf.search_runs([experiment], filter_string=f"tags.`foundry.study_key` = '{_quoted(key)}'",
                            max_results=1)
    if found:
        parent = found[0].info.run_id
    else:
        parent = mlf.create_run(experiment, run_name=f"tune-{study}",
                                tags={"foundry.study_key": key, "foundry.study": study}).info.run_id
        params = [Param(_param_key(k), str(v)[:500]) for k, v in _flatten(config.model_dump(mode="json")).items()]
        for i in range(0, len(params), 100):
            mlf.log_batch(parent, params=params[i:i + 100])
    logged = {r.data.tags.get("foundry.trial") for r in mlf.search_runs(
        [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'", max_results=50000)}
    now = int(time.time() * 1000)
    new = [t for t in trials if str(t["number"]) not in logged and t["state"] in ("COMPLETE", "PRUNED", "FAIL")]
    for t in new:
        run = mlf.create_run(experiment, run_name=f"trial-{t['number']}", tags={
            "mlflow.parentRunId": parent, "foundry.trial": str(t["number"]), "foundry.state": t["state"],
            **({"foundry.error": str(t["error"])[:5000]} if t.get("error") else {})})
        params = [Param(_param_key(k), str(v)[:500]) for k, v in t.items() if k in config.tune.space]
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
            "uri": resolve_uri(cfg.uri)}


def _param_key(key: str) -> str:
    return re.sub(r"[^\w\-. :/]", "_", key)  # MLflow keys allow letters, digits, _ - . space : / only


def _quoted(text: str) -> str:
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
    manifest = read_json(run_dir / "manifest.json")
    git = manifest.get("git") or {}
    tags = {"foundry.config_hash": config_hash(config), "foundry.data_sha256": manifest["dataset"]["sha256"],
            "foundry.run_dir": str(Path(run_dir).resolve()), "foundry.model": config.model.name,
            "foundry.task": read_json(run_dir / "model" / "model.json")["task"]}
    if git.get("commit"):
        tags["foundry.git_commit"] = git["commit"] + ("-dirty" if git.get("dirty") else "")
    if parent_version:
        tags["foundry.parent_version"] = parent_version
    return tags


def _experiment_id(mlf: Any, name: str, artifacts: str) -> str:
    existing = mlf.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    location = None
    if not re.match(r"^[a-z][a-z0-9+.-]*://", artifacts):  # a local folder: absolute, so any cwd works
        location = str(Path(artifacts).resolve() / name)
    return mlf.create_experiment(name, artifact_location=location)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


# ---------------------------------------------------------------------------------------- queries
def list_models(uri: str | None = None) -> list[dict[str, Any]]:
    """One entry per registered model: name, latest version, aliases, last update."""
    mlf = client(uri)
    out = []
    for model in mlf.search_registered_models(max_results=1000):
        versions = [int(v.version) for v in mlf.search_model_versions(f"name='{model.name}'")]
        out.append({"name": model.name, "latest": max(versions) if versions else None, "versions": len(versions),
                    "aliases": _aliases(model), "updated": _ms(model.last_updated_timestamp)})
    return sorted(out, key=lambda m: m["name"])


def show(ref: str, uri: str | None = None) -> dict[str, Any]:
    """A model (all versions) or one version (NAME/VERSION, NAME@ALIAS) with lineage and test metrics."""
    mlf = client(uri)
    name, version, alias = parse_ref(ref)
    model = _model(mlf, name)
    if version is None and alias is None:
        versions = sorted(mlf.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
        return {"name": name, "aliases": _aliases(model), "versions": [_version_info(mlf, v) for v in versions]}
    return {"name": name, "aliases": _aliases(model), **_version_info(mlf, find_version(mlf, name, version, alias))}


def _aliases(model: Any) -> dict[str, str]:
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def _version_info(mlf: Any, v: Any) -> dict[str, Any]:
    metrics = {}
    if v.run_id:
        metrics = {k.removeprefix("test_"): val for k, val in mlf.get_run(v.run_id).data.metrics.items()
                   if k.startswith("test_")}
    return {"version": str(v.version), "created": _ms(v.creation_timestamp), "source": v.source,
            "run_id": v.run_id, "tags": dict(v.tags or {}), "metrics": metrics}


def _model(mlf: Any, name: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return mlf.get_registered_model(name)
    except MlflowException:
        known = [m.name for m in mlf.search_registered_models(max_results=1000)]
        from modelfoundry.errors import did_you_mean

        raise ModelNotFound(f"No registered model '{name}'.{did_you_mean(name, known)}",
                            "List them with `foundry registry list`; `foundry run CONFIG` registers one.") from None


def find_version(mlf: Any, name: str, version: str | None, alias: str | None) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        if alias is not None:
            return mlf.get_model_version_by_alias(name, alias)
        return mlf.get_model_version(name, version)
    except MlflowException:
        model = _model(mlf, name)
        what = f"alias '{alias}'" if alias else f"version {version}"
        raise ModelNotFound(f"Model '{name}' has no {what} (aliases: {_aliases(model) or 'none'}).",
                            f"See `foundry registry show {name}`.") from None


def download(ref: str, uri: str | None = None, dst: Path | None = None) -> Path:
    """The artifacts of a registered version as a local run directory (for evaluate, predict, export)."""
    import mlflow

    mlf = client(uri)
    name, version, alias = parse_ref(ref)
    v = find_version(mlf, name, version, alias) if version or alias else _latest(mlf, name)
    target = dst or Path(".foundry-cache") / name / str(v.version)
    if not (target / "model" / "model.json").is_file():  # download beside it, then rename: never half a copy
        import shutil
        import tempfile

        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=v.source, dst_path=str(staging)))
        shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(local, target)
        except OSError:  # another process (a second server worker) finished the same download first
            if not (target / "model" / "model.json").is_file():
                raise
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _latest(mlf: Any, name: str) -> Any:
    versions = mlf.search_model_versions(f"name='{name}'")
    if not versions:
        _model(mlf, name)
        raise ModelNotFound(f"Model '{name}' has no versions.", "Register one with `foundry run CONFIG`.")
    return max(versions, key=lambda v: int(v.version))


def tag_version(ref: str, tags: dict[str, str], uri: str | None = None) -> str:
    """Set tags on the version `ref` names (NAME/VERSION or NAME@ALIAS); returns the version number."""
    mlf = client(uri)
    name, version, alias = parse_ref(ref)
    v = find_version(mlf, name, version, alias) if version or alias else _latest(mlf, name)
    for key, value in tags.items():
        mlf.set_model_version_tag(name, v.version, key, value)
    return str(v.version)


# ---------------------------------------------------------------------------------------- aliases
def promote(name: str, version: str, alias: str, reason: str = "", uri: str | None = None) -> dict[str, Any]:
    """Point `alias` at `version`, recording the move in the alias history."""
    mlf = client(uri)
    target = find_version(mlf, name, str(version), None)
    previous = _aliases(_model(mlf, name)).get(alias)
    mlf.set_registered_model_alias(name, alias, target.version)
    return _record(mlf, name, alias, previous, str(target.version), "promote", reason)


def rollback(name: str, alias: str, reason: str = "", uri: str | None = None) -> dict[str, Any]:
    """Move `alias` back to the version that held it before the current one."""
    mlf = client(uri)
    model = _model(mlf, name)
    stack = _alias_stack(history(name, uri, mlf), alias)
    current = _aliases(model).get(alias)
    if current is None or len(stack) < 2:
        raise RegistryError(f"Model '{name}' has no earlier version for alias '{alias}' to roll back to "
                            f"(it points at {current or 'nothing'}).",
                            f"See `foundry registry history {name}`; promote a version instead.")
    target = stack[-2]
    mlf.set_registered_model_alias(name, alias, target)
    return _record(mlf, name, alias, str(current), target, "rollback", reason)


def history(name: str, uri: str | None = None, mlf: Any = None) -> list[dict[str, Any]]:
    """Every alias move of `name`, oldest first."""
    mlf = mlf or client(uri)
    tags = _model(mlf, name).tags or {}
    entries = [json.loads(v) for k, v in tags.items() if k.startswith(LOG_PREFIX)]
    return sorted(entries, key=lambda e: (e["time"], e["id"]))


def _record(mlf: Any, name: str, alias: str, previous: str | None, new: str, action: str, reason: str) -> dict:
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1e6) % 10**6:06d}Z",
             "id": uuid.uuid4().hex[:8], "user": _user(), "alias": alias, "from": previous, "to": new,
             "action": action, "reason": reason}
    mlf.set_registered_model_tag(name, f"{LOG_PREFIX}{entry['time']}-{entry['id']}", json.dumps(entry))
    return entry


def _alias_stack(entries: list[dict[str, Any]], alias: str) -> list[str]:
    stack: list[str] = []
    for entry in entries:
        if entry["alias"] != alias:
            continue
        if entry["action"] == "rollback":
            if stack:
                stack.pop()
        elif not stack or stack[-1] != entry["to"]:
            stack.append(entry["to"])
    return stack


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def _ms(timestamp: int | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp / 1000)) if timestamp else None


# ------------------------------------------------------------------------------------------- diff
def diff(name: str, v1: str, v2: str, uri: str | None = None) -> dict[str, Any]:
    """Config keys and test metrics that differ between two versions: {"config": {...}, "metrics": {...}}."""
    import yaml

    mlf = client(uri)
    configs, metrics = [], []
    for version in (v1, v2):
        info = _version_info(mlf, find_version(mlf, name, str(version), None))
        config_text = _artifact_text(info["source"], "config.yaml")
        configs.append(_flatten(yaml.safe_load(config_text)) if config_text else {})
        metrics.append(info["metrics"])
    keys = sorted(set(configs[0]) | set(configs[1]))
    config_diff = {k: [configs[0].get(k), configs[1].get(k)] for k in keys if configs[0].get(k) != configs[1].get(k)}
    names = sorted(set(metrics[0]) | set(metrics[1]))
    metric_diff = {k: [metrics[0].get(k), metrics[1].get(k)] for k in names}
    return {"name": name, "versions": [str(v1), str(v2)], "config": config_diff, "metrics": metric_diff}


def _artifact_text(source: str, path: str) -> str | None:
    import mlflow

    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"{source.rstrip('/')}/{path}")
    except Exception:  # noqa: BLE001 - a version logged without that file: no config to compare
        return None
    return Path(local).read_text(encoding="utf-8")
