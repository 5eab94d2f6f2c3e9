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
    run_dir: Path | None = None
    schema: Any = None  # its InputSchema (data/input_schema.py), set by the server (it knows serve.on_unseen)
    inline: bool = False  # a full batch takes well under a millisecond: call it on the event loop, no thread hop


class ModelStore(Protocol):
    def load(self, version: str | None = None) -> LoadedModel: ...

    def local_dir(self) -> Path: ...


class RunDirStore:
    """Serve a run directory as it is (tests, quick looks): version 'run'."""

    def __init__(self, run_dir: Path, name: str | None = None, backend: str = "onnx"):
        self.run_dir, self.name, self.backend = Path(run_dir), name, backend

    def load(self, version: str | None = None) -> LoadedModel:
        from modelfoundry.artifacts.records import ModelRecord
        from modelfoundry.artifacts.rundir import RunDir

        name = self.name or ModelRecord.read(RunDir(self.run_dir).model_record).name
        return LoadedModel(name, "run", None, load_backend(self.run_dir, self.backend), self.run_dir)

    def local_dir(self) -> Path:
        return self.run_dir


class RegistryStore:
    """Serve the version a registry reference (NAME, NAME/VERSION, NAME@ALIAS) resolves to now."""

    def __init__(self, ref: str, uri: str | None = None, backend: str = "onnx"):
        self.ref, self.uri, self.backend = ref, uri, backend

    def resolve(self) -> tuple[str, str, str | None]:
        """(name, version, alias) the reference names now; an unreachable store is one RegistryError."""
        from modelfoundry.errors import FoundryError
        from modelfoundry.tracking import store_error

        try:
            return self._resolve()
        except FoundryError:
            raise
        except Exception as exc:  # noqa: BLE001 - MLflow, SQLAlchemy, requests: one paragraph for people
            raise store_error(exc, self.uri) from None

    def _resolve(self) -> tuple[str, str, str | None]:
        from modelfoundry.registry import client, find_version, parse_ref

        name, version, alias = parse_ref(self.ref)
        mlf = client(self.uri)
        if version is None and alias is None:
            versions = mlf.search_model_versions(f"name='{name}'")
            if not versions:
                from modelfoundry.errors import ModelNotFound

                raise ModelNotFound(f"No registered model '{name}'.",
                                    "List them with `foundry registry list`; `foundry run CONFIG` registers one.")
            version = str(max(int(v.version) for v in versions))
        return name, str(find_version(mlf, name, version, alias).version), alias

    def load(self, version: str | None = None) -> LoadedModel:
        """The version the reference resolves to now, or `version` (the hot switch passes the new one)."""
        from modelfoundry.registry import download, parse_ref

        if version is None:
            name, version, alias = self.resolve()
        else:
            name, _, alias = parse_ref(self.ref)
        local = download(f"{name}/{version}", self.uri)
        return LoadedModel(name, version, alias, load_backend(local, self.backend), local)

    def local_dir(self) -> Path:
        """The local copy of the version the reference resolves to now (downloaded once, then cached)."""
        from modelfoundry.registry import download

        name, version, _ = self.resolve()
        return download(f"{name}/{version}", self.uri)


def store_for(model: str, uri: str | None = None, backend: str = "onnx") -> Any:
    """A RunDirStore for an existing directory, a RegistryStore for NAME, NAME/VERSION or NAME@ALIAS."""
    from modelfoundry.errors import RunDirError
    from modelfoundry.registry import REF

    path = Path(model)
    if path.is_dir():
        return RunDirStore(path, backend=backend)
    if path.exists():
        raise RunDirError(f"'{model}' is a file, not a run directory.",
                          "Pass a directory made by `foundry run` (under runs/), or NAME, NAME/VERSION or NAME@ALIAS.")
    if REF.match(str(model)):
        return RegistryStore(str(model), uri, backend)
    raise RunDirError(f"'{model}' is neither a run directory nor a registered model reference.",
                      "Pass a directory under runs/, or NAME, NAME/VERSION or NAME@ALIAS (see `foundry registry "
                      "list`).")


def serve_settings(store: Any, overrides: dict[str, Any]) -> Any:
    """The served model's `serve:` config section with `overrides` (the flags given) applied: the one place
    a server's settings are decided."""
    from pydantic import ValidationError

    from modelfoundry.config import ServeConfig
    from modelfoundry.errors import ConfigError
    from modelfoundry.rundir import load_run_config

    section = load_run_config(store.local_dir()).serve
    try:
        return ServeConfig.model_validate({**section.model_dump(), **overrides})
    except ValidationError as exc:
        problems = [f"serve.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("; ".join(problems), "Fix the option (or the model config's serve: section).") from None
