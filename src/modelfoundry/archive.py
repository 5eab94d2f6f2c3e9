"""Model archives: one registered version as a .tar.gz, for backup and for moving between registries.

    FILE.tar.gz
      foundry-model.json   {format, name, version, tags, metrics, params, aliases, source_uri, exported}
      artifacts/           the version's artifacts: config.yaml, data.json, manifest.json, preprocess.json,
                           metrics.jsonl, model/, eval/

An archive is a file from elsewhere, so importing checks all of it before the registry is touched: the file
list (only those names; regular files and folders, no links or devices, no absolute or '..' paths; no pickle,
checkpoint or code file anywhere but model/weights.pt), the sizes, the manifest's schema, and that the model
loads data-only (rundir.load_model: preprocess.json, weights with weights_only=True). Then it creates a run
and a version with the original lineage tags and `foundry.imported_from`; a failure part-way removes what it
created. Aliases are not carried over: promote explicitly. Credentials in URIs are redacted on the way out
and on the way in.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

from modelfoundry.artifacts.rundir import RunDir
from modelfoundry.config import TrackingConfig
from modelfoundry.errors import FoundryError, RegistryError, first_line
from modelfoundry.redact import redact
from modelfoundry.registry import REF, download, find_version, parse_ref
from modelfoundry.tracking import (LOGGED_DIRS, LOGGED_FILES, client, describe_uri, experiment_for, reaching_store,
                                   register, store_error)
from modelfoundry.storage import write_bytes_atomic

ARCHIVE_FORMAT = 1
MANIFEST = "foundry-model.json"
MAX_FILE_BYTES = 2 * 1024**3  # one artifact (weights of a ~500M-parameter model in fp32)
MAX_TOTAL_BYTES = 4 * 1024**3  # the whole archive, unpacked
MAX_MANIFEST_BYTES = 4 * 1024**2
MAX_MEMBERS = 10_000
MAX_ENTRIES = 2_000  # tags, params or metrics in the manifest
WEIGHTS = RunDir.WEIGHTS  # the one file holding a pickle, read with torch.load(weights_only=True)
CODE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".dill", ".pt", ".pth", ".ckpt", ".bin", ".npy", ".npz", ".py",
                 ".pyc", ".so", ".dll", ".dylib", ".sh", ".exe")
FIELDS = {"format": int, "name": str, "version": str, "tags": dict, "metrics": dict, "params": dict, "aliases": list,
          "source_uri": str, "exported": str}
HINT = "Use a .tar.gz made by `foundry models export`. Nothing was registered."


@reaching_store
def export_archive(ref: str, path: str | Path, uri: str | None = None) -> dict[str, Any]:
    """Write the version `ref` (NAME/VERSION or NAME@ALIAS) with its metadata to `path` (.tar.gz)."""
    mlf = client(uri)
    name, version, alias = parse_ref(ref)
    if version is None and alias is None:
        raise RegistryError(f"'{ref}' names a model, not a version.", f"Write {ref}/VERSION or {ref}@ALIAS.")
    v = find_version(mlf, name, version, alias)
    run = mlf.get_run(v.run_id) if v.run_id else None
    aliases = [a for a, n in (mlf.get_registered_model(name).aliases or {}).items() if str(n) == str(v.version)]
    meta = {"format": ARCHIVE_FORMAT, "name": name, "version": str(v.version),
            "tags": {k: redact(t) for k, t in (v.tags or {}).items()},
            "metrics": dict(run.data.metrics) if run else {},
            "params": {k: redact(p) for k, p in (run.data.params if run else {}).items()},
            "aliases": aliases, "source_uri": describe_uri(uri),
            "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="foundry-archive-") as tmp:
        local = download(f"{name}/{v.version}", uri, Path(tmp) / "artifacts")
        (Path(tmp) / MANIFEST).write_text(json.dumps(meta, indent=2))
        packed = Path(tmp) / "archive.tar.gz"
        with tarfile.open(packed, "w:gz") as tar:
            tar.add(Path(tmp) / MANIFEST, arcname=MANIFEST)
            for name_ in (*LOGGED_FILES, *LOGGED_DIRS):  # what a version holds, nothing the download added
                if (local / name_).exists():
                    tar.add(local / name_, arcname=f"artifacts/{name_}")
        write_bytes_atomic(Path(path), packed.read_bytes(), durable=True)
    return meta


def import_archive(path: str | Path, name: str | None = None, uri: str | None = None,
                   artifacts: str | None = None) -> dict[str, Any]:
    """Register the archive at `path` as a new version (of `name`, default the archived model's name).

    Everything in the archive is checked first (`check_archive`); the registry is only touched after. Artifacts
    go under `artifacts` (default: tracking.artifacts, beside a local SQLite store).
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a .tar.gz file" if path.is_dir() else "does not exist"
        raise RegistryError(f"Model archive '{path}' {what}.", "Make one with `foundry models export NAME/VERSION`.")
    with tempfile.TemporaryDirectory(prefix="foundry-import-") as tmp:
        meta = check_archive(path, Path(tmp))
        target = name or meta["name"]
        if not REF.match(target) or "/" in target or "@" in target:
            raise RegistryError(f"--name '{target}' is not a model name.", "Use letters, digits, '_', '.' and '-'.")
        try:
            return _register_import(meta, Path(tmp) / "artifacts", target, uri,
                                    artifacts or TrackingConfig().artifacts)
        except FoundryError:
            raise
        except Exception as exc:  # noqa: BLE001 - an unreachable store, a full disk: one paragraph
            raise store_error(exc, uri, " Nothing was registered.") from None


def _register_import(meta: dict[str, Any], artifacts: Path, target: str, uri: str | None,
                     artifact_folder: str) -> dict[str, Any]:
    from mlflow.entities import Metric, Param

    mlf = client(uri)
    origin = redact(f"{meta['name']}/{meta['version']} @ {meta['source_uri']}")
    experiment_existed = mlf.get_experiment_by_name(target) is not None
    model_existed = bool(mlf.search_registered_models(filter_string=f"name='{target}'", max_results=1))
    experiment_id = experiment_for(mlf, target, artifact_folder, uri)
    run = None
    try:
        run = mlf.create_run(experiment_id, run_name=f"import-{meta['name']}-v{meta['version']}",
                             tags={"foundry.imported_from": origin})
        now = int(time.time() * 1000)
        params = [Param(k, redact(v)) for k, v in meta["params"].items()]
        metrics = [Metric(k, float(v), now, 0) for k, v in meta["metrics"].items()]
        for i in range(0, len(params), 100):
            mlf.log_batch(run.info.run_id, params=params[i:i + 100])
        for i in range(0, len(metrics), 1000):
            mlf.log_batch(run.info.run_id, metrics=metrics[i:i + 1000])
        mlf.log_artifacts(run.info.run_id, str(artifacts))
        mlf.set_terminated(run.info.run_id)
        tags = {**{k: redact(v) for k, v in meta["tags"].items()}, "foundry.imported_from": origin}
        version = register(mlf, target, run.info.artifact_uri, run.info.run_id, tags)
    except BaseException:
        _remove_partial(mlf, run, target, experiment_id, experiment_existed, model_existed)
        raise
    return {"name": target, "version": version, "imported_from": origin, "aliases_not_copied": meta["aliases"]}


def _remove_partial(mlf: Any, run: Any, model: str, experiment_id: str, experiment_existed: bool,
                    model_existed: bool) -> None:
    """Undo a failed import: its run (and its artifacts), a registered model or experiment it created."""
    steps = []
    if run is not None:
        store = getattr(getattr(mlf, "_tracking_client", None), "store", None)
        hard_delete = getattr(store, "_hard_delete_run", None)  # SQL stores: no deleted run left behind
        steps.append(lambda: hard_delete(run.info.run_id) if hard_delete else mlf.delete_run(run.info.run_id))
        local = _local_path(run.info.artifact_uri)
        if local is not None:
            steps.append(lambda: shutil.rmtree(local.parent, ignore_errors=True))  # <experiment>/<run_id>/artifacts
    if not model_existed:
        steps.append(lambda: mlf.delete_registered_model(model))
    if not experiment_existed:
        steps.append(lambda: mlf.delete_experiment(experiment_id))  # MLflow keeps the name; restored on reuse
    for step in steps:
        try:
            step()
        except Exception:  # noqa: BLE001 - best effort: the store may be what failed; the error is reported
            pass


def _local_path(artifact_uri: str) -> Path | None:
    if artifact_uri.startswith("file://"):
        return Path(artifact_uri.removeprefix("file://"))
    return Path(artifact_uri) if artifact_uri.startswith("/") else None


# ------------------------------------------------------------------------------------------ checks
def check_archive(path: Path, into: Path) -> dict[str, Any]:
    """Unpack `path` into `into` after checking its file list and sizes, then check the manifest and that the
    model loads data-only. Returns the manifest; raises one RegistryError listing what is wrong."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = []
            for member in tar:  # one by one: an archive of millions of entries stops here, not in memory
                members.append(member)
                if len(members) > MAX_MEMBERS:
                    raise _refused(path, "its contents are not those of a model archive",
                                   [f"more than {MAX_MEMBERS:,} entries"])
            problems = _member_problems(members)
            if problems:
                raise _refused(path, "its contents are not those of a model archive", problems)
            tar.extractall(into, members=members, filter="data")  # a second guard: refuses absolute paths, '..', links
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise RegistryError(f"'{path}' is not a readable model archive: {redact(first_line(exc))}.", HINT) from None
    manifest, artifacts = into / MANIFEST, into / "artifacts"
    missing = [p for p, ok in ((MANIFEST, manifest.is_file()), ("artifacts/", artifacts.is_dir())) if not ok]
    if missing:
        raise _refused(path, "it is not a complete model archive", [f"missing {m}" for m in missing])
    code = [f"artifacts/{p.relative_to(artifacts).as_posix()} is a pickle or archive (could run code when loaded)"
            for p in sorted(artifacts.rglob("*")) if p.is_file() and p.relative_to(artifacts).as_posix() != WEIGHTS
            and _looks_like_pickle(p)]
    if code:
        raise _refused(path, "it holds files that could execute code", code)
    meta = _read_manifest(path, manifest)
    _check_model(path, artifacts)
    return meta


def _member_problems(members: list[tarfile.TarInfo]) -> list[str]:
    problems: list[str] = []
    total = 0
    for m in members:
        parts = PurePosixPath(m.name).parts
        if m.name.startswith("/") or ".." in parts or "\\" in m.name:
            problems.append(f"{m.name!r} points outside the archive")
            continue
        if not (m.isreg() or m.isdir()):
            kind = "a link" if m.issym() or m.islnk() else "a device or special file"
            problems.append(f"{m.name} is {kind}")
            continue
        if parts[-1] == RunDir.LEGACY_PREPROCESS:
            problems.append(f"{m.name} is pickled preprocessing (modelfoundry 0.1), which could run code when "
                            "loaded; `foundry migrate` the run directory it came from and export it again")
        elif m.isreg() and "/".join(parts[1:]) != WEIGHTS and m.name.lower().endswith(CODE_SUFFIXES):
            problems.append(f"{m.name} is a pickle, checkpoint or code file (only {WEIGHTS} may hold weights)")
        elif not _expected(parts, m.isdir()):
            problems.append(f"{m.name} is not a file a model archive holds")
        if m.size > (MAX_MANIFEST_BYTES if m.name == MANIFEST else MAX_FILE_BYTES):
            problems.append(f"{m.name} is {m.size:,} bytes (larger than allowed)")
        total += m.size
    if total > MAX_TOTAL_BYTES:
        problems.append(f"the files add up to {total:,} bytes (at most {MAX_TOTAL_BYTES:,})")
    return problems


def _expected(parts: tuple[str, ...], is_dir: bool) -> bool:
    """Whether a path belongs in an archive: the manifest, artifacts/, its files, and model/ and eval/ trees."""
    if parts in ((MANIFEST,), ("artifacts",)):
        return is_dir == (parts == ("artifacts",))
    if len(parts) < 2 or parts[0] != "artifacts":
        return False
    if parts[1] in LOGGED_DIRS:
        return True
    return len(parts) == 2 and parts[1] in LOGGED_FILES and not is_dir


def _looks_like_pickle(path: Path) -> bool:
    """A pickle (protocol 2+ starts with 0x80 and its protocol number) or a zip (a torch file hides one)."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    return (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5) or head == b"PK\x03\x04"


def _read_manifest(path: Path, manifest: Path) -> dict[str, Any]:
    try:
        meta = json.loads(manifest.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _refused(path, f"its manifest {MANIFEST} is not valid JSON", [first_line(exc)]) from None
    if not isinstance(meta, dict):
        raise _refused(path, f"its manifest {MANIFEST} is not a JSON object", [f"got {type(meta).__name__}"])
    if "format" in meta and meta["format"] != ARCHIVE_FORMAT:
        raise RegistryError(f"'{path}' has archive format {meta['format']!r}; this version reads {ARCHIVE_FORMAT}.",
                            "Export it again with this version of modelfoundry. Nothing was registered.")
    problems = [f"unexpected key '{k}'" for k in meta if k not in FIELDS]
    for key, kind in FIELDS.items():
        if key not in meta:
            problems.append(f"missing '{key}'")
        elif not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            problems.append(f"'{key}' should be {kind.__name__}, got {type(meta[key]).__name__}")
    if not problems:
        problems = _value_problems(meta)
    if problems:
        raise _refused(path, f"its manifest {MANIFEST} does not match the archive schema", problems)
    return meta


def _value_problems(meta: dict[str, Any]) -> list[str]:
    problems = []
    if not REF.match(meta["name"]) or any(c in meta["name"] for c in "/@"):
        problems.append(f"'name' {meta['name'][:80]!r} is not a model name")
    if not meta["version"].isdigit():
        problems.append(f"'version' {meta['version'][:80]!r} is not a version number")
    for key, limit in (("tags", 5000), ("params", 6000)):
        bad = [k for k, v in meta[key].items() if not isinstance(v, str) or len(k) > 250 or len(v) > limit]
        if bad or len(meta[key]) > MAX_ENTRIES:
            problems.append(f"'{key}' must map at most {MAX_ENTRIES} names to strings (of at most {limit} "
                            f"characters){f'; not: {bad[:3]}' if bad else ''}")
    # NaN is a number here: a metric undefined on the test split (roc_auc of one class) is exported as NaN
    bad = [k for k, v in meta["metrics"].items() if isinstance(v, bool) or not isinstance(v, (int, float))
           or len(k) > 250]
    if bad or len(meta["metrics"]) > MAX_ENTRIES:
        problems.append(f"'metrics' must map names to numbers{f'; not: {bad[:3]}' if bad else ''}")
    if not all(isinstance(a, str) for a in meta["aliases"]):
        problems.append("'aliases' must be a list of strings")
    return problems


def _check_model(path: Path, artifacts: Path) -> None:
    """The archived model must load as any run directory does: data-only preprocessing and weights."""
    from modelfoundry.rundir import load_model

    try:
        load_model(artifacts)
    except FoundryError as exc:
        raise _refused(path, "its model does not load", [exc.message.replace(str(artifacts), "artifacts")]) from None
    except Exception as exc:  # noqa: BLE001 - weights that do not fit the architecture, a malformed spec
        raise _refused(path, "its model does not load", [first_line(exc)]) from None


def _refused(path: Path, why: str, problems: list[str]) -> RegistryError:
    shown = "; ".join(redact(p) for p in problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
    return RegistryError(f"'{path}' was not imported: {why} ({shown}).", HINT)
