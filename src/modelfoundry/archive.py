"""Model archives: one registered version as a .tar.gz, for backup and for moving between registries.

    FILE.tar.gz
      foundry-model.json   {format, name, version, tags, metrics, params, aliases, source_uri, exported}
      artifacts/           the version's artifacts: config.yaml, model/, preprocess.pkl, eval/, ...

Importing creates a new run and a new version in the target registry, with the original lineage tags and
`foundry.imported_from` naming where it came from. Aliases are not carried over: promote explicitly.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from modelfoundry.errors import RegistryError
from modelfoundry.registry import client, download, find_version, parse_ref, register, resolve_uri
from modelfoundry.storage import write_bytes_atomic

ARCHIVE_FORMAT = 1
MANIFEST = "foundry-model.json"


def export_archive(ref: str, path: str | Path, uri: str | None = None) -> dict[str, Any]:
    """Write the version `ref` (NAME/VERSION or NAME@ALIAS) with its metadata to `path` (.tar.gz)."""
    mlf = client(uri)
    name, version, alias = parse_ref(ref)
    if version is None and alias is None:
        raise RegistryError(f"'{ref}' names a model, not a version.", f"Write {ref}/VERSION or {ref}@ALIAS.")
    v = find_version(mlf, name, version, alias)
    run = mlf.get_run(v.run_id) if v.run_id else None
    aliases = [a for a, n in (mlf.get_registered_model(name).aliases or {}).items() if str(n) == str(v.version)]
    meta = {"format": ARCHIVE_FORMAT, "name": name, "version": str(v.version), "tags": dict(v.tags or {}),
            "metrics": dict(run.data.metrics) if run else {}, "params": dict(run.data.params) if run else {},
            "aliases": aliases, "source_uri": resolve_uri(uri), "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                           time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="foundry-archive-") as tmp:
        local = download(f"{name}/{v.version}", uri, Path(tmp) / "artifacts")
        (Path(tmp) / MANIFEST).write_text(json.dumps(meta, indent=2))
        packed = Path(tmp) / "archive.tar.gz"
        with tarfile.open(packed, "w:gz") as tar:
            tar.add(Path(tmp) / MANIFEST, arcname=MANIFEST)
            tar.add(local, arcname="artifacts")
        write_bytes_atomic(Path(path), packed.read_bytes(), durable=True)
    return meta


def import_archive(path: str | Path, name: str | None = None, uri: str | None = None) -> dict[str, Any]:
    """Register the archive at `path` as a new version (of `name`, default the archived model's name)."""
    from mlflow.entities import Metric, Param

    path = Path(path)
    if not path.is_file():
        raise RegistryError(f"Model archive '{path}' does not exist.", "Make one with `foundry models export`.")
    with tempfile.TemporaryDirectory(prefix="foundry-import-") as tmp:
        meta = _unpack(path, Path(tmp))
        target = name or meta["name"]
        mlf = client(uri)
        experiment = mlf.get_experiment_by_name(target)
        experiment_id = experiment.experiment_id if experiment else mlf.create_experiment(target)
        run = mlf.create_run(experiment_id, run_name=f"import-{meta['name']}-v{meta['version']}",
                             tags={"foundry.imported_from": _origin(meta)})
        now = int(time.time() * 1000)
        params = [Param(k, v) for k, v in meta["params"].items()]
        metrics = [Metric(k, float(v), now, 0) for k, v in meta["metrics"].items()]
        for i in range(0, len(params), 100):
            mlf.log_batch(run.info.run_id, params=params[i:i + 100])
        for i in range(0, len(metrics), 1000):
            mlf.log_batch(run.info.run_id, metrics=metrics[i:i + 1000])
        mlf.log_artifacts(run.info.run_id, str(Path(tmp) / "artifacts"))
        mlf.set_terminated(run.info.run_id)
        tags = {**meta["tags"], "foundry.imported_from": _origin(meta)}
        version = register(mlf, target, run.info.artifact_uri, run.info.run_id, tags)
    return {"name": target, "version": version, "imported_from": _origin(meta), "aliases_not_copied": meta["aliases"]}


def _unpack(path: Path, into: Path) -> dict[str, Any]:
    try:
        with tarfile.open(path, "r:gz") as tar:
            tar.extractall(into, filter="data")  # refuses absolute paths, '..', links out of the folder
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise RegistryError(f"'{path}' is not a readable model archive: {exc}.",
                            "Use a .tar.gz made by `foundry models export`.") from None
    manifest, artifacts = into / MANIFEST, into / "artifacts"
    if not manifest.is_file() or not (artifacts / "model" / "weights.pt").is_file():
        missing = [p for p, ok in ((MANIFEST, manifest.is_file()),
                                   ("artifacts/model/weights.pt", (artifacts / "model" / "weights.pt").is_file()))
                   if not ok]
        shutil.rmtree(into, ignore_errors=True)
        raise RegistryError(f"'{path}' is not a complete model archive (missing {', '.join(missing)}).",
                            "Use a .tar.gz made by `foundry models export`.")
    meta = json.loads(manifest.read_text())
    if meta.get("format") != ARCHIVE_FORMAT:
        raise RegistryError(f"'{path}' has archive format {meta.get('format')}; this version reads "
                            f"{ARCHIVE_FORMAT}.", "Export it again with this version of modelfoundry.")
    return meta


def _origin(meta: dict[str, Any]) -> str:
    return f"{meta['name']}/{meta['version']} @ {meta['source_uri']}"
