"""`serve`: the server's settings (the model's serve: section, each given value overriding its key), the API
keys and the model checked and loaded once before the server starts, then uvicorn with one or more workers.

Monitoring (the model's monitor: section) adds server extensions: the request log and POST /feedback
(monitor/feedback.py), drift and out-of-distribution monitoring (monitor/server.py) and a shadow model
(monitor/shadow.py). With several workers each worker process builds its own (`build_worker_app`): its own drift
windows (each sees its share of the traffic), its own shadow copy and its own counters, while all write to the
one request log, from which the live feedback metric is read (so every worker reports the same)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_MONITOR = "FOUNDRY_SERVE_MONITOR"  # a worker's monitor: section as JSON ("" : monitoring off)
ENV_SHADOW = "FOUNDRY_SERVE_SHADOW"  # a worker's shadow reference ("" : none)


@dataclass
class ServerPlan:
    """What `start_server` runs: the model reference, its store and loaded model, and the resolved settings."""

    model: str
    uri: str | None
    settings: Any  # serve.store's settings: the serve: section with the overrides applied
    store: Any
    loaded: Any  # the model, loaded once: an unloadable model fails before the server starts
    memory: Any = None  # a language model's memory estimate (api/estimation.py EstimateResult), else None
    monitor: Any = None  # the monitor: section the server's monitoring follows (MonitorConfig); None: off
    shadow: str | None = None  # the challenger shadowing the served model (NAME@ALIAS, NAME/VERSION or a run)


def prepare_server(model: str | Path, overrides: dict[str, Any], uri: str | None = None, *,
                   monitor: bool | None = None, shadow: str | None = None) -> ServerPlan:
    """Resolve the settings and load the model, so that every problem shows here as one paragraph.

    Args:
        model: a run directory or a registered NAME, NAME/VERSION or NAME@ALIAS; for a language model also its
            base (a short name such as smollm2-135m, or a local Hugging Face directory).
        overrides: serve: keys to override (None values are left to the model's config).
        uri: the tracking URI of the registry, for a registered model.
        monitor: request log, feedback, drift and OOD monitoring on or off (None: the model's monitor.enabled).
        shadow: a challenger to shadow (None: the model's monitor.shadow).
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
    section, shadow = _monitoring(store, loaded, monitor, shadow)
    if shadow:
        _check_shadow(shadow, uri)
    return ServerPlan(model, uri, settings, store, loaded, memory, section, shadow)


def _check_shadow(ref: str, uri: str | None) -> None:
    """A shadow that does not exist fails before the server starts, as one paragraph (once serving, a shadow that
    cannot be loaded is only logged and retried: it must never fail the served model)."""
    from modelfoundry.serve.store import RegistryStore, store_for

    from modelfoundry.artifacts.rundir import RunDir

    shadow = store_for(ref, uri)  # a path that does not exist and is no reference: RunDirError
    if isinstance(shadow, RegistryStore):
        shadow.resolve()  # an unknown model, version or alias: ModelNotFound naming it
    elif not RunDir(shadow.local_dir()).config.is_file():  # a language model's base, or any other directory
        from modelfoundry.errors import RunDirError

        raise RunDirError(f"The shadow '{ref}' is not a run directory or a registered model.",
                          "Pass --shadow NAME@ALIAS, NAME/VERSION or a run directory made by `foundry run`.")


def _monitoring(store: Any, loaded: Any, monitor: bool | None, shadow: str | None) -> tuple[Any, str | None]:
    """(the monitor: section when monitoring is on, else None; the shadow reference) for the served model."""
    from modelfoundry.errors import ConfigError

    if loaded.language is not None or loaded.backend is None:  # language models are not monitored
        if shadow:
            raise ConfigError("--shadow works for tabular, image and text classifiers and regressors, not for a "
                              "language model.", "Serve the language model without --shadow.")
        return None, None
    from modelfoundry.rundir import load_run_config

    section = load_run_config(loaded.run_dir or store.local_dir()).monitor
    on = section.enabled if monitor is None else monitor
    return (section if on else None), shadow or (section.shadow if on else None)


def monitor_extensions(monitor: Any, *, shadow: str | None = None, uri: str | None = None,
                       settings: Any = None) -> list[Any]:
    """The server extensions `foundry serve` adds for a model's monitor: section (a MonitorConfig; None: only the
    shadow): the request log and POST /feedback (when monitor.log.enabled), drift and OOD monitoring, and the
    challenger `shadow` (else monitor.shadow) run on a copy of the traffic (looked up in the registry at `uri`,
    with the `settings`' backend and poll_s). The request log comes first, so a shadow's predictions find their
    rows."""
    extensions: list[Any] = []
    request_log = None
    if monitor is not None and monitor.log.enabled:
        from modelfoundry.monitor.feedback import FeedbackLog

        feedback = FeedbackLog(monitor)
        extensions.append(feedback)
        request_log = feedback.log
    if monitor is not None:
        from modelfoundry.monitor.server import DriftMonitor

        extensions.append(DriftMonitor(monitor))
    ref = shadow or (monitor.shadow if monitor is not None else None)
    if ref:
        from modelfoundry.config import ServeConfig
        from modelfoundry.monitor.shadow import Shadow

        extensions.append(Shadow(ref, uri, settings or ServeConfig(), request_log))
    return extensions


def plan_extensions(plan: ServerPlan) -> list[Any]:
    """The monitoring extensions of a plan (none when monitoring is off and nothing is shadowed)."""
    return monitor_extensions(plan.monitor, shadow=plan.shadow, uri=plan.uri, settings=plan.settings)


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
    each build theirs from the environment (`build_worker_app`). `extensions` (serve/extensions.py) see every
    answered batch; they are Python objects, so they run in a one-process server only. The plan's monitoring
    extensions (`plan_extensions`) are added after them, in every worker."""
    import uvicorn

    from modelfoundry.serve.main import ENV_MODEL, ENV_SETTINGS, ENV_URI

    settings = plan.settings
    options = {"host": settings.host, "port": settings.port, "timeout_graceful_shutdown": 30, "log_level": "info",
               "access_log": settings.access_log}
    if settings.workers == 1:
        from modelfoundry.serve.app import create_app

        app = create_app(settings, plan.store, preloaded=plan.loaded,
                         extensions=[*extensions, *plan_extensions(plan)])
        uvicorn.run(app, **options)
        return
    if extensions:
        from modelfoundry.errors import ConfigError

        raise ConfigError(f"Server extensions run in one process, but serve.workers is {settings.workers}.",
                          "Serve with workers: 1 (run replicas behind a load balancer to scale out).")
    os.environ.update({ENV_MODEL: plan.model, ENV_URI: plan.uri or "", ENV_SETTINGS: settings.model_dump_json(),
                       ENV_MONITOR: plan.monitor.model_dump_json() if plan.monitor is not None else "",
                       ENV_SHADOW: plan.shadow or ""})
    uvicorn.run("modelfoundry.api.serving:build_worker_app", factory=True, workers=settings.workers, **options)


def build_worker_app() -> Any:
    """The app of one worker process (`foundry serve --workers N`): serve/main.py's settings and model from the
    environment, plus this worker's own monitoring extensions."""
    import json

    from modelfoundry.config import ServeConfig
    from modelfoundry.config.monitor import MonitorConfig
    from modelfoundry.serve.app import create_app
    from modelfoundry.serve.main import ENV_MODEL, ENV_SETTINGS, ENV_URI
    from modelfoundry.serve.store import store_for

    settings = ServeConfig.model_validate(json.loads(os.environ.get(ENV_SETTINGS) or "{}"))
    uri = os.environ.get(ENV_URI) or None
    monitor = os.environ.get(ENV_MONITOR)
    monitor = MonitorConfig.model_validate_json(monitor) if monitor else None
    shadow = os.environ.get(ENV_SHADOW) or None
    extensions = monitor_extensions(monitor, shadow=shadow, uri=uri, settings=settings) \
        if monitor is not None or shadow else []
    return create_app(settings, store_for(os.environ[ENV_MODEL], uri, settings.backend, settings.llm_dtype),
                      extensions=extensions)


def serve(model: str | Path, *, uri: str | None = None, extensions: tuple[Any, ...] = (), monitor: bool | None = None,
          shadow: str | None = None, **overrides: Any) -> None:
    """Serve a model over HTTP (Open Inference Protocol v2 and POST /predict; a language model: the OpenAI API,
    POST /v1/completions and /v1/chat/completions) until stopped; `overrides` are
    serve: keys (host, port, workers, backend, max_batch_size, ...); `extensions` objects with an
    `on_batch(record)` method (serve/extensions.py) that see every answered batch, off the request path.
    `monitor` turns the model's monitoring (request log, feedback, drift, OOD) on or off (None: its
    monitor.enabled); `shadow` runs a challenger on a copy of the traffic (None: its monitor.shadow)."""
    start_server(prepare_server(model, overrides, uri, monitor=monitor, shadow=shadow), tuple(extensions))
