"""Where the served model comes from: a run directory, or a registered model by NAME@ALIAS; for language
models also a base (a short name such as smollm2-135m, or a local Hugging Face directory)."""

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
    backend: Backend | None  # None for a language model
    run_dir: Path | None = None
    schema: Any = None  # its InputSchema (data/input_schema.py), set by the server (it knows serve.on_unseen)
    inline: bool = False  # a full batch takes well under a millisecond: call it on the event loop, no thread hop
    language: Any = None  # a causal language model: its LanguageModel (models/llm.py), served by serve/openai.py


class ModelStore(Protocol):
    def load(self, version: str | None = None) -> LoadedModel: ...

    def local_dir(self) -> Path: ...


class RunDirStore:
    """Serve a run directory as it is (tests, quick looks): version 'run'."""

    def __init__(self, run_dir: Path, name: str | None = None, backend: str = "onnx", dtype: str = "float32"):
        self.run_dir, self.name, self.backend, self.dtype = Path(run_dir), name, backend, dtype

    def load(self, version: str | None = None) -> LoadedModel:
        from modelfoundry.artifacts.records import ModelRecord
        from modelfoundry.artifacts.rundir import RunDir

        name = self.name or ModelRecord.read(RunDir(self.run_dir).model_record).name
        if is_language_run(self.run_dir):
            return _language(name, "run", None, self.run_dir, self.dtype)
        return LoadedModel(name, "run", None, load_backend(self.run_dir, self.backend), self.run_dir)

    @property
    def serves_language_model(self) -> bool:
        return is_language_run(self.run_dir)

    def local_dir(self) -> Path:
        return self.run_dir


class RegistryStore:
    """Serve the version a registry reference (NAME, NAME/VERSION, NAME@ALIAS) resolves to now."""

    def __init__(self, ref: str, uri: str | None = None, backend: str = "onnx", dtype: str = "float32"):
        self.ref, self.uri, self.backend, self.dtype = ref, uri, backend, dtype

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
        from modelfoundry.registry import client, existing_store, find_version, parse_ref

        name, version, alias = parse_ref(self.ref)
        existing_store(self.uri, self.ref)  # a lookup never creates a registry
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
        if is_language_run(local):
            return _language(name, version, alias, local, self.dtype)
        return LoadedModel(name, version, alias, load_backend(local, self.backend), local)

    @property
    def serves_language_model(self) -> bool:
        return is_language_run(self.local_dir())

    def local_dir(self) -> Path:
        """The local copy of the version the reference resolves to now (downloaded once, then cached)."""
        from modelfoundry.registry import download

        name, version, _ = self.resolve()
        return download(f"{name}/{version}", self.uri)


class BaseModelStore:
    """Serve a language model's base as it is: a short name (smollm2-135m) or a local Hugging Face causal-LM
    directory; version 'base', the server's default settings."""

    serves_language_model = True

    def __init__(self, base: str, dtype: str = "float32"):
        self.base, self.dtype = base, dtype

    def load(self, version: str | None = None) -> LoadedModel:
        from modelfoundry.models.llm import load_base_language_model

        language = load_base_language_model(self.base, self.dtype)
        return LoadedModel(language.name, "base", None, None, language=language)

    def local_dir(self) -> Path:
        from modelfoundry.models.llm_base import resolve_base

        return resolve_base(self.base).directory


def is_language_run(run_dir: Path) -> bool:
    """Whether a run directory holds a causal language model (model: {name: llm})."""
    from modelfoundry.artifacts.rundir import RunDir
    from modelfoundry.rundir import load_run_config

    return RunDir(run_dir).config.is_file() and load_run_config(run_dir).model.name == "llm"


def _language(name: str, version: str, alias: str | None, run_dir: Path, dtype: str) -> LoadedModel:
    from modelfoundry.rundir import load_language_model

    language = load_language_model(run_dir, dtype)
    language.name = name
    return LoadedModel(name, version, alias, None, run_dir, language=language)


def store_for(model: str, uri: str | None = None, backend: str = "onnx", dtype: str = "float32") -> Any:
    """A RunDirStore for a run directory, a BaseModelStore for a language model's base (short name or Hugging
    Face directory), a RegistryStore for NAME, NAME/VERSION or NAME@ALIAS."""
    from modelfoundry.errors import RunDirError
    from modelfoundry.models.llm_base import SHORT_NAMES
    from modelfoundry.registry import REF

    path = Path(model)
    if model in SHORT_NAMES or (path.is_dir() and (path / "config.json").is_file()
                                and not (path / "config.yaml").is_file()):
        return BaseModelStore(model, dtype)
    if path.is_dir():
        return RunDirStore(path, backend=backend, dtype=dtype)
    if path.exists():
        raise RunDirError(f"'{model}' is a file, not a run directory.",
                          "Pass a directory made by `foundry run` (under runs/), or NAME, NAME/VERSION or NAME@ALIAS.")
    if REF.match(str(model)):
        return RegistryStore(str(model), uri, backend, dtype)
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

    section = ServeConfig() if isinstance(store, BaseModelStore) else load_run_config(store.local_dir()).serve
    try:
        return ServeConfig.model_validate({**section.model_dump(), **overrides})
    except ValidationError as exc:
        problems = [f"serve.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("; ".join(problems), "Fix the option (or the model config's serve: section).") from None
