"""Where the served model comes from: a run directory, or a registered model by NAME@ALIAS."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from modelfoundry.serve.backends import Backend, load_backend


@dataclass
class LoadedModel:
    name: str
    version: str
    alias: str | None
    backend: Backend


class ModelStore(Protocol):
    def load(self, version: str | None = None) -> LoadedModel: ...


class RunDirStore:
    """Serve a run directory as it is (tests, quick looks): version 'run'."""

    def __init__(self, run_dir: Path, name: str | None = None, backend: str = "onnx"):
        self.run_dir, self.name, self.backend = Path(run_dir), name, backend

    def load(self, version: str | None = None) -> LoadedModel:
        from modelfoundry.storage import read_json

        name = self.name or read_json(self.run_dir / "model" / "model.json")["name"]
        return LoadedModel(name, "run", None, load_backend(self.run_dir, self.backend))


class RegistryStore:
    """Serve the version a registry reference (NAME, NAME/VERSION, NAME@ALIAS) resolves to now."""

    def __init__(self, ref: str, uri: str | None = None, backend: str = "onnx"):
        self.ref, self.uri, self.backend = ref, uri, backend

    def resolve(self) -> tuple[str, str, str | None]:
        from modelfoundry.registry import client, find_version, parse_ref

        name, version, alias = parse_ref(self.ref)
        mlf = client(self.uri)
        if version is None and alias is None:
            versions = mlf.search_model_versions(f"name='{name}'")
            version = str(max(int(v.version) for v in versions)) if versions else None
        return name, str(find_version(mlf, name, version, alias).version), alias

    def load(self, version: str | None = None) -> LoadedModel:
        """The version the reference resolves to now, or `version` (the hot switch passes the new one)."""
        from modelfoundry.registry import download, parse_ref

        if version is None:
            name, version, alias = self.resolve()
        else:
            name, _, alias = parse_ref(self.ref)
        local = download(f"{name}/{version}", self.uri)
        return LoadedModel(name, version, alias, load_backend(local, self.backend))


def store_for(model: str, uri: str | None = None, backend: str = "onnx") -> Any:
    """A RunDirStore for an existing directory, else a RegistryStore."""
    return RunDirStore(Path(model), backend=backend) if Path(model).is_dir() else RegistryStore(model, uri, backend)
