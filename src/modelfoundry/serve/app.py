"""The inference server: Open Inference Protocol v2 (KServe/Triton REST) plus a friendly /predict.

    GET  /v2/health/live            the process is up
    GET  /v2/health/ready           the model is loaded and warmed up (503 until then)
    GET  /v2/models/{name}          model metadata: version, platform, one input per raw column, outputs
    GET  /metrics                   Prometheus metrics (see metrics.py)
    POST /v2/models/{name}/infer    OIP v2 inference: one input tensor per raw column
    POST /predict                   {"records": [{column: raw value, ...}]} -> predictions + probabilities

Built by `create_app(settings, store)`; every FoundryError maps to its own HTTP status in one handler, and
request validation errors name the field, so bad input never yields a 500.
"""

from __future__ import annotations

import asyncio
import logging
import math
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from modelfoundry.errors import FoundryError, ModelNotFound, RetryLater
from modelfoundry.serve.backends import warm_up
from modelfoundry.serve.batching import DynamicBatcher
from modelfoundry.serve.metrics import MetricsMiddleware, ServerMetrics
from modelfoundry.serve.security import ApiKeys, AuthError, BodySizeLimit, RateLimiter, key_from_headers
from modelfoundry.serve.store import LoadedModel, ModelStore

log = logging.getLogger(__name__)
OIP_TYPES = {"BOOL": bool, "INT8": int, "INT16": int, "INT32": int, "INT64": int, "UINT8": int, "UINT16": int,
             "UINT32": int, "UINT64": int, "FP16": float, "FP32": float, "FP64": float, "BYTES": str}


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    max_records: int = 10_000  # rows per request
    batching: bool = True
    max_batch_size: int = 64  # rows per model call
    max_latency_ms: float = 5.0  # how long a batch waits for more requests after its first
    max_queue_size: int = 1024  # waiting requests before 503
    queue_timeout_ms: float = 1000.0  # a request waiting longer gets 503
    poll_s: float = 2.0  # how often a registry alias is checked for a move (hot switch); 0 disables
    api_keys_file: str | None = None  # NAME:SHA256 lines (see security.py); None: no authentication
    max_body_bytes: int = 4 * 1024 * 1024  # larger request bodies get 413
    rate_limit_per_s: float | None = None  # per API key (or per client address without keys); None: no limit
    rate_burst: int = 20


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    records: list[dict[str, Any]] = Field(min_length=1)


class InferInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[dict[str, Any]] | None = None
    parameters: dict[str, Any] | None = None


class ServedModel:
    """The model being served. `predict` goes through the dynamic batcher (or straight to the backend) and
    returns the outputs with the model that produced them, so a hot switch never mixes versions."""

    def __init__(self) -> None:
        self.current: LoadedModel | None = None
        self.batcher: DynamicBatcher | None = None

    @property
    def ready(self) -> bool:
        return self.current is not None

    def get(self, name: str | None = None) -> LoadedModel:
        if self.current is None:
            raise FoundryError("The model is still loading.", "Retry when /v2/health/ready answers 200.")
        if name is not None and name != self.current.name:
            raise ModelNotFound(f"This server serves model '{self.current.name}', not '{name}'.",
                                f"Use /v2/models/{self.current.name}/infer.")
        return self.current

    async def predict(self, rows: Any) -> tuple[np.ndarray, LoadedModel]:
        """`rows`: a DataFrame or a list of record dicts."""
        if self.batcher is not None:
            return await self.batcher.submit(rows)
        model = self.get()
        return await asyncio.to_thread(model.backend.predict_frame, _as_frame(rows)), model

    async def run_batch(self, frames: list[Any]) -> tuple[list[Any], LoadedModel]:
        """One model call for all frames; if it fails on bad input, each frame alone, so only the bad
        request fails (its slot then holds the exception)."""
        model = self.get()
        if len(frames) == 1:
            return [await asyncio.to_thread(model.backend.predict_frame, _as_frame(frames[0]))], model
        try:
            output = await asyncio.to_thread(model.backend.predict_frame, _one_frame(frames))
        except FoundryError:
            return [await self._alone(model, _as_frame(f)) for f in frames], model
        return np.split(output, np.cumsum([len(f) for f in frames])[:-1]), model

    @staticmethod
    async def _alone(model: LoadedModel, frame: Any) -> Any:
        try:
            return await asyncio.to_thread(model.backend.predict_frame, frame)
        except FoundryError as exc:
            return exc


def create_app(settings: ServeSettings, store: ModelStore) -> FastAPI:
    """The FastAPI app serving `store`'s model; it loads and warms up the model at start-up."""
    served = ServedModel()
    metrics = ServerMetrics(settings.max_batch_size)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loaded = await asyncio.to_thread(store.load)
        await asyncio.to_thread(warm_up, loaded.backend)
        served.current = loaded
        metrics.set_model(loaded.name, loaded.version, loaded.alias)
        import gc

        gc.freeze()  # the loaded model and libraries are long-lived: keep them out of every collection
        gc.set_threshold(50_000, 50, 100)  # per-request garbage is short-lived; collect it less often
        if settings.batching:
            served.batcher = DynamicBatcher(served.run_batch, settings.max_batch_size, settings.max_latency_ms,
                                            settings.max_queue_size, settings.queue_timeout_ms, metrics.observe_batch)
            served.batcher.start()
        watcher = None
        if settings.poll_s > 0 and hasattr(store, "resolve"):
            watcher = asyncio.get_running_loop().create_task(_follow_alias(store, served, metrics, settings.poll_s))
        log.info("serving %s v%s on %s", loaded.name, loaded.version, loaded.backend.platform)
        yield
        if watcher:
            watcher.cancel()
        if served.batcher:
            await served.batcher.stop()

    keys = ApiKeys.from_file(Path(settings.api_keys_file)) if settings.api_keys_file else None
    limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_burst) if settings.rate_limit_per_s else None

    async def authorize(request: Request) -> None:
        """API key (when configured) and rate limit, for the routes that run the model."""
        who = keys.verify(key_from_headers(request.headers)) if keys else (request.client.host if request.client
                                                                           else "anonymous")
        if limiter:
            limiter.acquire(who)

    app = FastAPI(title="modelfoundry inference server", lifespan=lifespan)
    app.state.served, app.state.metrics = served, metrics
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: also counts 413s

    @app.exception_handler(FoundryError)
    async def foundry_error(request: Request, exc: FoundryError) -> JSONResponse:
        status = 503 if not served.ready else exc.http_status
        headers = {}
        if isinstance(exc, RetryLater):  # Overloaded (503), RateLimited (429)
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        if isinstance(exc, AuthError):
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse({"error": exc.message, "hint": exc.hint}, status_code=status, headers=headers or None)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"error": "; ".join(problems[:10])}, status_code=422)

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": served.ready}, status_code=200 if served.ready else 503)

    @app.get("/v2/models/{name}", dependencies=[Depends(authorize)])
    async def metadata(name: str) -> dict[str, Any]:
        model = served.get(name)
        backend = model.backend
        outputs = [{"name": "predictions", "datatype": "BYTES" if backend.task == "classification" else "FP64",
                    "shape": [-1]}]
        if backend.task == "classification":
            outputs.append({"name": "probabilities", "datatype": "FP64", "shape": [-1, len(backend.labels)]})
        return {"name": model.name, "versions": [model.version], "platform": backend.platform,
                "inputs": [{"name": c, "datatype": "FP64", "shape": [-1]} for c in backend.columns],
                "outputs": outputs, "parameters": {"alias": model.alias, "task": backend.task,
                                                   "labels": backend.labels}}

    @app.post("/v2/models/{name}/infer", dependencies=[Depends(authorize)])
    async def infer(name: str, request: InferRequest) -> dict[str, Any]:
        served.get(name)
        frame = _frame_from_inputs(request.inputs, settings.max_records)
        output, model = _raise_if_error(await served.predict(frame))
        predictions, probabilities = _decode(model, output)
        outputs = [{"name": "predictions", "shape": [len(predictions)],
                    "datatype": "BYTES" if model.backend.task == "classification" else "FP64", "data": predictions}]
        if probabilities is not None:
            outputs.append({"name": "probabilities", "shape": list(output.shape), "datatype": "FP64",
                            "data": [p for row in probabilities for p in row]})
        return {"model_name": model.name, "model_version": model.version, "id": request.id, "outputs": outputs}

    @app.post("/predict", dependencies=[Depends(authorize)])
    async def predict(request: PredictRequest) -> dict[str, Any]:

        if len(request.records) > settings.max_records:
            raise _too_many(len(request.records), settings.max_records)
        served.get()  # records stay a list of dicts: the batch builds one DataFrame for all its requests
        output, model = _raise_if_error(await served.predict(request.records))
        predictions, probabilities = _decode(model, output)
        body: dict[str, Any] = {"predictions": predictions, "model": model.name, "version": model.version}
        if probabilities is not None:
            body["probabilities"] = probabilities
        return body

    return app


def _as_frame(rows: Any) -> Any:
    import pandas as pd

    return pd.DataFrame.from_records(rows) if isinstance(rows, list) else rows


def _one_frame(parts: list[Any]) -> Any:
    """One DataFrame for a whole batch: record lists are joined first (one from_records, not one per request)."""
    import pandas as pd

    if all(isinstance(p, list) for p in parts):
        return pd.DataFrame.from_records([record for part in parts for record in part])
    return pd.concat([_as_frame(p) for p in parts], ignore_index=True)


def _raise_if_error(result: tuple[Any, LoadedModel]) -> tuple[np.ndarray, LoadedModel]:
    if isinstance(result[0], Exception):  # this request's rows failed inside a shared batch
        raise result[0]
    return result


async def _follow_alias(store: Any, served: ServedModel, metrics: ServerMetrics, poll_s: float) -> None:
    """Hot switch: when the alias moves, load and warm the new version in the background, then swap it in
    at once. Batches already running finish on the old version; later ones use the new."""
    while True:
        await asyncio.sleep(poll_s)
        try:
            name, version, alias = await asyncio.to_thread(store.resolve)
            if served.current is None or version == served.current.version:
                continue
            loaded = await asyncio.to_thread(store.load, version)
            await asyncio.to_thread(warm_up, loaded.backend)
            served.current = loaded  # one assignment on the event loop: atomic for every request
            metrics.set_model(loaded.name, loaded.version, loaded.alias)
            log.info("switched %s to v%s", name, version)
        except Exception as exc:  # noqa: BLE001 - keep serving the current version; try again next poll
            log.warning("could not follow %s: %s", getattr(store, "ref", "the alias"), exc)


def _decode(model: LoadedModel, output: np.ndarray) -> tuple[list[Any], list[list[float]] | None]:
    if model.backend.task == "classification":
        labels = model.backend.labels
        return [labels[i] for i in output.argmax(1)], output.round(8).tolist()
    return output.tolist(), None


def _frame_from_inputs(inputs: list[InferInput], max_records: int) -> Any:
    """OIP v2 inputs, one per raw column (shape [N] or [N, 1]), as a DataFrame; errors name the input."""
    import pandas as pd

    from modelfoundry.errors import DataError

    columns: dict[str, list[Any]] = {}
    rows = None
    for tensor in inputs:
        if tensor.datatype not in OIP_TYPES:
            raise DataError(f"Input '{tensor.name}' has datatype '{tensor.datatype}'; expected one of "
                            f"{', '.join(OIP_TYPES)}.", "Use FP32/FP64 for numbers and BYTES for text.")
        n = tensor.shape[0] if tensor.shape else 0
        if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1) \
                or len(tensor.data) != n:
            raise DataError(f"Input '{tensor.name}' has shape {tensor.shape} and {len(tensor.data)} values; each "
                            "input is one column, shape [N] or [N, 1] with N values.", "Send one tensor per column.")
        if rows is not None and n != rows:
            raise DataError(f"Input '{tensor.name}' has {n} rows but an earlier input has {rows}.",
                            "Send the same number of rows for every column.")
        rows = n
        columns[tensor.name] = tensor.data
    if rows and rows > max_records:
        raise _too_many(rows, max_records)
    return pd.DataFrame(columns)


def _too_many(n: int, limit: int) -> FoundryError:
    from modelfoundry.errors import DataError

    return DataError(f"The request holds {n} rows; this server takes at most {limit} per request.",
                     "Split the request into smaller batches.")
