"""Model registry on MLflow: versions with lineage, aliases with an append-only history, download, diff.

The store, its client and the registration of runs are tracking.py's. MLflow keeps no history of alias moves,
so each move (promote or rollback) is recorded as a registered-model tag `foundry.alias_log.<time>-<id>`
holding JSON {time, user, alias, from, to, action, reason}. A retrain gate's refusal is recorded there too (action
"refuse", `to` the refused version): it moves nothing. Rollback replays that log as a stack per alias:
promote pushes, rollback pops, refuse is skipped. Every public function turns a failing store into one RegistryError.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

from modelfoundry.artifacts.rundir import RunDir
from modelfoundry.errors import ModelNotFound, RegistryError
from modelfoundry.redact import redact
from modelfoundry.storage import cache_root
from modelfoundry.tracking import client, flatten, reaching_store

LOG_PREFIX = "foundry.alias_log."
REF = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_-]+))?$")


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """'NAME', 'NAME/VERSION' or 'NAME@ALIAS' -> (name, version, alias)."""
    match = REF.match(ref)
    if not match:
        raise RegistryError(f"'{ref}' is not a model reference.",
                            "Write NAME, NAME/VERSION (e.g. digits/3) or NAME@ALIAS (e.g. digits@production).")
    return match["name"], match["version"], match["alias"]


# ---------------------------------------------------------------------------------------- queries
@reaching_store
def list_models(uri: str | None = None) -> list[dict[str, Any]]:
    """One entry per registered model: name, latest version, aliases, last update."""
    mlf = client(uri)
    out = []
    for model in mlf.search_registered_models(max_results=1000):
        versions = [int(v.version) for v in mlf.search_model_versions(f"name='{model.name}'")]
        out.append({"name": model.name, "latest": max(versions) if versions else None, "versions": len(versions),
                    "aliases": _aliases(model), "updated": _ms(model.last_updated_timestamp)})
    return sorted(out, key=lambda m: m["name"])


@reaching_store
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
    return {"version": str(v.version), "created": _ms(v.creation_timestamp), "source": redact(v.source),
            "run_id": v.run_id, "tags": {k: redact(t) for k, t in (v.tags or {}).items()}, "metrics": metrics}


def _model(mlf: Any, name: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return mlf.get_registered_model(name)
    except MlflowException as exc:
        if not _not_found(exc):  # an unreachable store: not worth a second request for a did-you-mean
            raise
        known = [m.name for m in mlf.search_registered_models(max_results=1000)]
        from modelfoundry.errors import did_you_mean

        raise ModelNotFound(f"No registered model '{name}'.{did_you_mean(name, known)}",
                            "List them with `foundry registry list`; `foundry run CONFIG` registers one.") from None


def _not_found(exc: Any) -> bool:
    """Whether an MlflowException says the thing asked for does not exist (a missing alias is a bad parameter)."""
    return getattr(exc, "error_code", None) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def find_version(mlf: Any, name: str, version: str | None, alias: str | None) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        if alias is not None:
            return mlf.get_model_version_by_alias(name, alias)
        return mlf.get_model_version(name, version)
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        model = _model(mlf, name)
        what = f"alias '{alias}'" if alias else f"version {version}"
        raise ModelNotFound(f"Model '{name}' has no {what} (aliases: {_aliases(model) or 'none'}).",
                            f"See `foundry registry show {name}`.") from None


@reaching_store
def download(ref: str, uri: str | None = None, dst: Path | None = None) -> Path:
    """The artifacts of a registered version as a local run directory (for evaluate, predict, export), downloaded
    once to <cache>/registry/<name>/<run id>/<version>: keyed by the run, so a version of the same name and number
    in another store (or a store made again) is never taken for this one."""
    import mlflow

    existing_store(uri, ref)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # MLflow's bars, one per file, on stderr
    mlf = client(uri)
    name, version, alias = parse_ref(ref)
    v = find_version(mlf, name, version, alias) if version or alias else _latest(mlf, name)
    target = dst or cache_root() / "registry" / name / (v.run_id or "unknown")[:16] / str(v.version)
    if not RunDir(target).model_record.is_file():  # download beside it, then rename: never half a copy
        import shutil
        import tempfile

        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=v.source, dst_path=str(staging)))
        shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(local, target)
        except OSError:  # another process (a second server worker) finished the same download first
            if not RunDir(target).model_record.is_file():
                raise
        shutil.rmtree(staging, ignore_errors=True)
    return target


def existing_store(uri: str | None, ref: str) -> None:
    """Looking a model up must not create a registry: with no URI given or set, the project's store must exist."""
    from modelfoundry.tracking import STORE_FILE, project_store

    if uri is None and not os.environ.get("MLFLOW_TRACKING_URI") and not project_store().is_file():
        raise ModelNotFound(f"'{ref}' is not a path, and there is no model registry here to look it up in (no "
                            f"{STORE_FILE} in {Path.cwd()} or its parents).",
                            "Check the path, run the command in the project that registered the model, or pass "
                            "--uri (or set $MLFLOW_TRACKING_URI) to its registry.")


def _latest(mlf: Any, name: str) -> Any:
    versions = mlf.search_model_versions(f"name='{name}'")
    if not versions:
        _model(mlf, name)
        raise ModelNotFound(f"Model '{name}' has no versions.", "Register one with `foundry run CONFIG`.")
    return max(versions, key=lambda v: int(v.version))


@reaching_store
def tag_version(ref: str, tags: dict[str, str], uri: str | None = None) -> str:
    """Set tags on the version `ref` names (NAME/VERSION or NAME@ALIAS); returns the version number."""
    mlf = client(uri)
    name, version, alias = parse_ref(ref)
    v = find_version(mlf, name, version, alias) if version or alias else _latest(mlf, name)
    for key, value in tags.items():
        mlf.set_model_version_tag(name, v.version, key, value)
    return str(v.version)


# ---------------------------------------------------------------------------------------- aliases
@reaching_store
def promote(name: str, version: str, alias: str, reason: str = "", uri: str | None = None) -> dict[str, Any]:
    """Point `alias` at `version`, recording the move in the alias history."""
    mlf = client(uri)
    target = find_version(mlf, name, str(version), None)
    previous = _aliases(_model(mlf, name)).get(alias)
    mlf.set_registered_model_alias(name, alias, target.version)
    return _record(mlf, name, alias, previous, str(target.version), "promote", reason)


@reaching_store
def refuse(name: str, version: str, alias: str, reason: str, uri: str | None = None) -> dict[str, Any]:
    """Record in the alias history that `version` was refused for `alias` (a retrain gate's decision), with the
    reason; the alias does not move (`from` is the version it keeps pointing at)."""
    mlf = client(uri)
    target = find_version(mlf, name, str(version), None)
    current = _aliases(_model(mlf, name)).get(alias)
    return _record(mlf, name, alias, current, str(target.version), "refuse", reason)


@reaching_store
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


@reaching_store
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
        if entry["alias"] != alias or entry["action"] == "refuse":  # a refusal moved nothing
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
@reaching_store
def diff(name: str, v1: str, v2: str, uri: str | None = None) -> dict[str, Any]:
    """Config keys and test metrics that differ between two versions: {"config": {...}, "metrics": {...}}."""
    import yaml

    mlf = client(uri)
    configs, metrics = [], []
    for version in (v1, v2):
        found = find_version(mlf, name, str(version), None)
        info = _version_info(mlf, found)
        config_text = _artifact_text(found.source, RunDir.CONFIG)
        configs.append({k: redact(v) if isinstance(v, str) else v
                        for k, v in flatten(yaml.safe_load(config_text)).items()} if config_text else {})
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
