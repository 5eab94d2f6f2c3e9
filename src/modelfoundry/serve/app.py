"""The inference server: Open Inference Protocol v2 (KServe/Triton REST) plus a friendly /predict.

    GET  /v2/health/live            the process is up
    GET  /v2/health/ready           the model is loaded and warmed up (503 until then)
    GET  /v2/models/{name}          model metadata: version, platform, one input per raw column, outputs,
                                    and (parameters.model_inputs) the named tensors the model takes
    GET  /metrics                   Prometheus metrics (see metrics.py)
    GET  /openapi.json              the OpenAPI schema, only with serve.openapi (behind the API key if any)
    POST /v2/models/{name}/infer    OIP v2 inference: one input tensor per raw column
    POST /predict                   {"records": [{column: raw value, ...}]} -> predictions + probabilities

Built by `create_app(settings, store, extensions=...)` from the `serve:` config section; extensions see every
answered batch off the request path (extensions.py), and may add routes (the monitor's POST /feedback and
GET /v2/models/{name}/monitor), give requests ids ("ids": one per row) and per-row scores ({"ood": true}).
Every error answers one JSON shape, {"error", "hint"}:
FoundryErrors with their own HTTP status, unknown routes 404, wrong methods 405, and an unexpected failure 500.
Each request is checked on its own before it may share a batch (runner.py), so bad input is a 4xx for that
request alone, never a 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from modelfoundry.artifacts.records import decide_classes
from modelfoundry.config import ServeConfig
from modelfoundry.data.input_schema import InputSchema
from modelfoundry.errors import ConfigError, FoundryError, RetryLater
from modelfoundry.serve.backends import anomaly_flags, warm_up
from modelfoundry.serve.batching import DynamicBatcher
from modelfoundry.serve.extensions import Extension, Extensions, ServerContext
from modelfoundry.serve.metrics import MetricsMiddleware, ServerMetrics
from modelfoundry.serve.payloads import (InferRequest, PredictRequest, asks_scores, body_schema, infer_columns,
                                         infer_request, parse_json, predict_records)
from modelfoundry.serve.runner import THREAD_CELLS, Job, ServedModel, prepare
from modelfoundry.serve.security import ApiKeys, AuthError, BodySizeLimit, RateLimiter, key_from_headers
from modelfoundry.serve.store import LoadedModel, ModelStore

log = logging.getLogger(__name__)
INLINE_CALL_S = 0.0005  # a model whose full batch takes less runs on the event loop: a thread hop costs more
ROUTES_HINT = ("Routes: POST /predict, POST /v2/models/{name}/infer, GET /v2/models/{name}, GET /v2/health/live, "
               "GET /v2/health/ready, GET /metrics (with monitoring: POST /feedback, GET /v2/models/{name}/monitor).")


def add_health_routes(app: FastAPI, served: Any, metrics: Any) -> None:
    """GET /metrics (Prometheus), /v2/health/live and /v2/health/ready: every server has them, open to all."""

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": served.ready}, status_code=200 if served.ready else 503)


def max_body_bytes(settings: ServeConfig) -> int:
    """serve.max_body_mb in bytes (the body limit's one conversion)."""
    return int(settings.max_body_mb * 1024 * 1024)


def create_app(settings: ServeConfig, store: ModelStore, preloaded: LoadedModel | None = None,
               extensions: Sequence[Extension] = ()) -> FastAPI:
    """The FastAPI app serving `store`'s model (or `preloaded`, already loaded by the caller); it loads and warms
    up the model at start-up. Each of `extensions` sees every answered batch (extensions.py). A language model
    is served by the OpenAI-compatible app of openai.py instead."""
    if preloaded.language is not None if preloaded else getattr(store, "serves_language_model", False):
        from modelfoundry.serve.openai import create_llm_app

        return create_llm_app(settings, store, preloaded)
    metrics = ServerMetrics(settings.max_batch_size)
    served = ServedModel(metrics.count_warnings)
    hooks = Extensions(extensions, metrics.registry) if extensions else None

    def with_schema(loaded: LoadedModel) -> LoadedModel:
        group = getattr(loaded.backend, "schema", None)  # a served group checks a request for each member
        loaded.schema = group(settings.on_unseen) if callable(group) else InputSchema(loaded.backend.desc,
                                                                                      settings.on_unseen)
        return loaded

    async def warmed(loaded: LoadedModel) -> LoadedModel:
        call_s = await asyncio.to_thread(warm_up, loaded.backend, settings.max_batch_size)
        loaded.inline = call_s is not None and call_s < INLINE_CALL_S
        return loaded

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loaded = await warmed(with_schema(preloaded or await asyncio.to_thread(store.load)))
        served.current = loaded
        metrics.set_model(loaded.name, loaded.version, loaded.alias)
        import gc

        gc.freeze()  # the loaded model and libraries are long-lived: keep them out of every collection
        gc.set_threshold(50_000, 50, 100)  # per-request garbage is short-lived; collect it less often
        if settings.batching:
            served.batcher = DynamicBatcher(served.run_batch, max_batch_size=settings.max_batch_size,
                                            max_latency_ms=settings.max_latency_ms,
                                            max_queue_size=settings.max_queue_size,
                                            queue_timeout_ms=settings.queue_timeout_ms, observe=metrics.observe_batch)
            served.batcher.start()
        if hooks:
            await hooks.start()
            served.extensions = hooks
        watcher = None
        if settings.poll_s > 0 and hasattr(store, "resolve"):
            watcher = asyncio.get_running_loop().create_task(
                _follow_alias(store, served, metrics, settings.poll_s, lambda m: warmed(with_schema(m))))
        log.info("serving %s v%s on %s", loaded.name, loaded.version, loaded.backend.platform)
        yield
        if watcher:
            watcher.cancel()
        if served.batcher:
            await served.batcher.stop()
        if hooks:
            await hooks.stop()

    guarded = request_guard(settings)

    # no /docs or /redoc (their pages load scripts from a CDN); /openapi.json only when asked, below
    app = FastAPI(title="modelfoundry inference server", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.served, app.state.metrics = served, metrics
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes(settings))
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: also counts 413s
    _add_error_handlers(app, served)
    add_health_routes(app, served, metrics)

    if settings.openapi:
        @app.get("/openapi.json", dependencies=guarded, include_in_schema=False)
        async def openapi() -> JSONResponse:
            return JSONResponse(app.openapi())

    @app.get("/v2/models/{name}", dependencies=guarded)
    async def metadata(name: str) -> dict[str, Any]:
        model = served.get(name)
        backend = model.backend
        outputs = [{"name": "predictions", "datatype": _prediction_datatype(backend.task), "shape": [-1]}]
        if backend.task == "anomaly":  # predictions: above the threshold or not; scores: the anomaly scores
            outputs.append({"name": "scores", "datatype": "FP64", "shape": [-1]})
        if backend.task == "classification":
            outputs.append({"name": "probabilities", "datatype": "FP64", "shape": [-1, len(backend.labels)]})
        outputs.append({"name": "warnings", "datatype": "BYTES", "shape": [-1]})  # only when a row has any
        kinds = model.schema.kinds
        inputs = [{"name": c, "datatype": "BYTES" if kinds.get(c) in ("categorical", "text") else "FP64", "shape": [-1]}
                  for c in backend.columns]
        if model.schema.series:  # a time series: each record holds a list of past values per column (not the time)
            inputs = [{"name": c, "datatype": "FP64", "shape": [-1, -1]} for c in backend.columns[1:]]
        # the requests send raw columns (`inputs`); the model takes the named tensors they become (`model_inputs`)
        tensors = [{"name": f.name, "datatype": "FP32" if f.dtype == "float32" else "INT64", "shape": [-1, *f.shape]}
                   for f in model.schema.input_spec]
        return {"name": model.name, "versions": [model.version], "platform": backend.platform, "inputs": inputs,
                "outputs": outputs, "parameters": {"alias": model.alias, "task": backend.task,
                                                   "labels": backend.labels, "on_unseen": settings.on_unseen,
                                                   "decision_threshold": (getattr(backend, "threshold", None)
                                                                          or {}).get("value"),
                                                   "model_inputs": tensors}}

    @app.post("/v2/models/{name}/infer", dependencies=guarded, openapi_extra=body_schema(InferRequest))
    async def infer(name: str, request: Request) -> JSONResponse:
        body = infer_request(parse_json(await request.body(), request.headers.get("content-type")))
        scores = asks_scores(body.parameters, "parameters") and _scorer(hooks)
        model = served.get(name)
        columns, n = infer_columns(body.inputs, model.schema, settings.max_records)
        request_id = hooks.new_id() if hooks else None
        job = await prepare(model, lambda s: s.from_columns(columns, n), n, request_id)
        answer, model = await served.predict(job)
        predictions, probabilities = _decode(model, answer.output)
        outputs = [{"name": "predictions", "shape": [len(predictions)],
                    "datatype": _prediction_datatype(model.backend.task), "data": predictions}]
        if model.backend.task == "anomaly":
            outputs.append({"name": "scores", "shape": [n], "datatype": "FP64", "data": answer.output.tolist()})
        if probabilities is not None:
            outputs.append({"name": "probabilities", "shape": list(answer.output.shape), "datatype": "FP64",
                            "data": [p for row in probabilities for p in row]})
        if answer.warnings is not None:  # one JSON list per row, as BYTES: OIP parameters hold only scalars
            outputs.append({"name": "warnings", "shape": [n], "datatype": "BYTES",
                            "data": [json.dumps(row) for row in answer.warnings]})
        if request_id is not None:
            outputs.append({"name": "ids", "shape": [n], "datatype": "BYTES", "data": row_ids(request_id, n)})
        if scores:  # one JSON value per row, as BYTES (as warnings are)
            outputs.extend({"name": field, "shape": [n], "datatype": "BYTES", "data": [json.dumps(v) for v in values]}
                           for field, values in (await _row_scores(scores, model, job)).items())
        return JSONResponse({"model_name": model.name, "model_version": model.version, "id": body.id,
                             "outputs": outputs})

    @app.post("/predict", dependencies=guarded, openapi_extra=body_schema(PredictRequest))
    async def predict(request: Request) -> JSONResponse:
        payload = parse_json(await request.body(), request.headers.get("content-type"))
        records = predict_records(payload, settings.max_records)
        scores = asks_scores(payload, "body") and _scorer(hooks)
        model = served.get()
        request_id = hooks.new_id() if hooks else None
        job = await prepare(model, lambda s: s.from_records(records), len(records), request_id)
        answer, model = await served.predict(job)
        predictions, probabilities = _decode(model, answer.output)
        body: dict[str, Any] = {"predictions": predictions, "model": model.name, "version": model.version}
        if probabilities is not None:
            body["probabilities"] = probabilities
        if model.backend.task == "anomaly":  # beside the true/false predictions
            body["scores"] = answer.output.tolist()
        if answer.warnings is not None:
            body["warnings"] = answer.warnings
        if request_id is not None:
            body["ids"] = row_ids(request_id, len(records))
        if scores:
            body.update(await _row_scores(scores, model, job))
        return JSONResponse(body)

    if hooks:  # last: the extensions' routes never shadow the model's
        hooks.setup(ServerContext(app, metrics.registry, guarded, served, settings))
    return app


def _prediction_datatype(task: str) -> str:
    """The OIP datatype of the predictions: class labels BYTES, an anomaly detector's flags BOOL, values FP64."""
    return {"classification": "BYTES", "anomaly": "BOOL"}.get(task, "FP64")


def row_ids(request_id: str, rows: int) -> list[str]:
    """The ids of a request's rows: "<request id>-<row index>" (what POST /feedback takes)."""
    return [f"{request_id}-{i}" for i in range(rows)]


def _scorer(hooks: Extensions | None) -> Extensions:
    """The extensions that give per-row scores, for a request that asked for them; a 400 when none does."""
    if hooks is None or not hooks.scorers:
        raise ConfigError("This server computes no per-row scores, so it cannot answer 'ood': true.",
                          "Serve with monitoring on (`foundry serve MODEL --monitor`, monitor.ood.enabled: true) a "
                          "model trained with a reference profile; or leave 'ood' out.")
    return hooks


async def _row_scores(hooks: Extensions, model: LoadedModel, job: Job) -> dict[str, list[Any]]:
    """The per-row fields of the extensions' row_scores, on the rows as checked for the model that answered."""
    rows = job.rows if job.model is model else job.check(model.schema)
    if len(rows) * max(1, len(model.schema.columns)) > THREAD_CELLS:
        return await asyncio.to_thread(hooks.row_scores, model, rows)
    return hooks.row_scores(model, rows)


def request_guard(settings: ServeConfig) -> list[Any]:
    """The dependencies of the routes that run the model: API key (when configured) and rate limit."""
    keys = ApiKeys.from_file(Path(settings.api_keys_file)) if settings.api_keys_file else None
    limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_burst) if settings.rate_limit_per_s else None

    async def authorize(request: Request) -> None:
        who = keys.verify(key_from_headers(request.headers)) if keys else (request.client.host if request.client
                                                                           else "anonymous")
        if limiter:
            limiter.acquire(who)

    return [Depends(authorize)] if keys or limiter else []  # no dependency to solve when nothing is checked


def _add_error_handlers(app: FastAPI, served: Any, routes_hint: str = ROUTES_HINT) -> None:
    """One error body everywhere: {"error": what was wrong, "hint": what to do}."""

    @app.exception_handler(FoundryError)
    async def foundry_error(request: Request, exc: FoundryError) -> JSONResponse:
        status = 503 if not served.ready else exc.http_status
        headers = {}
        if isinstance(exc, RetryLater):  # Overloaded (503), RateLimited (429)
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        if isinstance(exc, AuthError):
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse({"error": exc.message, "hint": exc.hint or "See docs/serving.md."}, status_code=status,
                            headers=headers or None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"error": "; ".join(problems[:10]), "hint": "See docs/serving.md for the request "
                             "formats."}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            error, hint = f"No route {request.method} {request.url.path}.", routes_hint
        elif exc.status_code == 405:
            error = f"{request.method} is not allowed on {request.url.path}."
            hint = f"Use {(exc.headers or {}).get('Allow', 'another method')}."
        else:
            error, hint = str(exc.detail), "See docs/serving.md."
        return JSONResponse({"error": error, "hint": hint}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:  # logged by the server with its traceback
        return JSONResponse({"error": f"Internal server error ({type(exc).__name__}).",
                             "hint": "This is a bug, not a problem with the request; the server log has the "
                                     "details."}, status_code=500)


async def _follow_alias(store: Any, served: ServedModel, metrics: ServerMetrics, poll_s: float,
                        ready_model: Any) -> None:
    """Hot switch: when the alias moves, load and warm the new version in the background, then swap it in
    at once. Batches already running finish on the old version; later ones use the new."""
    while True:
        await asyncio.sleep(poll_s)
        try:
            name, version, alias = await asyncio.to_thread(store.resolve)
            if served.current is None or version == served.current.version:
                continue
            loaded = await ready_model(await asyncio.to_thread(store.load, version))
            served.current = loaded  # one assignment on the event loop: atomic for every request
            metrics.set_model(loaded.name, loaded.version, loaded.alias)
            log.info("switched %s to v%s", name, version)
        except Exception as exc:  # noqa: BLE001 - keep serving the current version; try again next poll
            log.warning("could not follow %s: %s", getattr(store, "ref", "the alias"), exc)


def _decode(model: LoadedModel, output: np.ndarray) -> tuple[list[Any], list[list[float]] | None]:
    if model.backend.task == "anomaly":  # true/false per row: the score above the model's threshold
        return anomaly_flags(model.backend, output), None
    if model.backend.task == "classification":  # the most probable class, or the tuned threshold's decision
        labels = model.backend.labels
        chosen = decide_classes(output, getattr(model.backend, "threshold", None))
        return [labels[i] for i in chosen], output.round(8).tolist()
    return output.tolist(), None
