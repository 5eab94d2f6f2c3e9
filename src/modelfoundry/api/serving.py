"""`serve`: the server's settings (the model's serve: section, each given value overriding its key), the API
keys and the model checked and loaded once before the server starts, then uvicorn with one or more workers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class ServerPlan:
    """What `start_server` runs: the model reference, its store and loaded model, and the resolved settings."""

    model: str
    uri: str | None
    settings: Any  # serve.store's settings: the serve: section with the overrides applied
    store: Any
    loaded: Any  # the model, loaded once: an unloadable model fails before the server starts
    memory: Any = None  # a language model's memory estimate (api/estimation.py EstimateResult), else None


def prepare_server(model: str | Path, overrides: dict[str, Any], uri: str | None = None) -> ServerPlan:
    """Resolve the settings and load the model, so that every problem shows here as one paragraph.

    Args:
        model: a run directory or a registered NAME, NAME/VERSION or NAME@ALIAS; for a language model also its
            base (a short name such as smollm2-135m, or a local Hugging Face directory).
        overrides: serve: keys to override (None values are left to the model's config).
        uri: the tracking URI of the registry, for a registered model.
    """
    from modelfoundry.serve.store import serve_settings, store_for

    model = str(model)
    settings = serve_settings(store_for(model, uri), {k: v for k, v in overrides.items() if v is not None})
    if settings.api_keys_file:
        from modelfoundry.serve.security import ApiKeys

        settings.api_keys_file = str(Path(settings.api_keys_file).resolve())
        ApiKeys.from_file(Path(settings.api_keys_file))  # a bad file fails here, with its line, not in every worker
    store = store_for(model, uri, settings.backend, settings.llm_dtype)
    memory = _preflight(store, settings)  # a language model that won't fit fails before it loads
    loaded = store.load()  # an unloadable model fails here, as one paragraph; downloaded and exported once
    return ServerPlan(model, uri, settings, store, loaded, memory)


def _preflight(store: Any, settings: Any) -> Any:
    """The memory a language model's server needs (weights + a KV cache per stream), checked before loading it;
    None for other models (and for a registered one, known only once downloaded)."""
    from modelfoundry.serve.store import BaseModelStore, RunDirStore

    if isinstance(store, BaseModelStore):
        base = store.base
    else:
        from modelfoundry.rundir import is_language_model, load_run_config

        if not (isinstance(store, RunDirStore) and is_language_model(store.run_dir)):
            return None
        base = load_run_config(store.run_dir).model.base
    from modelfoundry.api.estimation import preflight_serving

    return preflight_serving(base, dtype=settings.llm_dtype, max_streams=settings.max_streams)


def start_server(plan: ServerPlan, extensions: tuple[Any, ...] = ()) -> None:
    """Run uvicorn until it is stopped: the preloaded app in this process, or `settings.workers` processes that
    each build theirs from the environment. `extensions` (serve/extensions.py) see every answered batch; they
    are Python objects, so they run in a one-process server only."""
    import uvicorn

    from modelfoundry.serve.main import ENV_MODEL, ENV_SETTINGS, ENV_URI

    settings = plan.settings
    options = {"host": settings.host, "port": settings.port, "timeout_graceful_shutdown": 30, "log_level": "info",
               "access_log": settings.access_log}
    if settings.workers == 1:
        from modelfoundry.serve.app import create_app

        uvicorn.run(create_app(settings, plan.store, preloaded=plan.loaded, extensions=extensions), **options)
        return
    if extensions:
        from modelfoundry.errors import ConfigError

        raise ConfigError(f"Server extensions run in one process, but serve.workers is {settings.workers}.",
                          "Serve with workers: 1 (run replicas behind a load balancer to scale out).")
    os.environ.update({ENV_MODEL: plan.model, ENV_URI: plan.uri or "", ENV_SETTINGS: settings.model_dump_json()})
    uvicorn.run("modelfoundry.serve.main:build", factory=True, workers=settings.workers, **options)


def serve(model: str | Path, *, uri: str | None = None, extensions: tuple[Any, ...] = (), **overrides: Any) -> None:
    """Serve a model over HTTP (Open Inference Protocol v2 and POST /predict; a language model: the OpenAI API,
    POST /v1/completions and /v1/chat/completions) until stopped; `overrides` are
    serve: keys (host, port, workers, backend, max_batch_size, ...); `extensions` objects with an
    `on_batch(record)` method (serve/extensions.py) that see every answered batch, off the request path."""
    start_server(prepare_server(model, overrides, uri), tuple(extensions))
