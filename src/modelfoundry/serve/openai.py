"""The OpenAI-compatible API of a served language model (create_app mounts it for a causal LM).

    POST /v1/completions         {model, prompt, max_tokens, temperature, top_p, stop, seed, stream, ...}
    POST /v1/chat/completions    {model, messages: [{role, content}], ...the same}
    GET  /v1/models              the served model (its base's identity in `metadata`)

plus the server's /metrics, /v2/health/live and /v2/health/ready. Requests go to a GenerationEngine
(generation.py: continuous batching); `stream: true` answers server-sent events, `data: {chunk}` per
piece of text and `data: [DONE]` at the end. Every error of this app answers OpenAI's shape,
{"error": {"message", "type", "param", "code", "hint"}} (the openai client raises with the message): the
server's own {"error", "hint"} bodies are rewritten once, by OpenAIErrors; an error after a stream began
is one event `data: {"error": {...}}`. The request schemas, and which OpenAI fields are refused, are in
openai_schemas.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from modelfoundry.config import ServeConfig
from modelfoundry.errors import FoundryError, ModelNotFound
from modelfoundry.serve.generation import GenerationEngine, Stream
from modelfoundry.serve.metrics import MetricsMiddleware, ServerMetrics
from modelfoundry.serve.openai_schemas import ChatRequest, CompletionRequest, read_request
from modelfoundry.serve.security import BodySizeLimit
from modelfoundry.serve.store import LoadedModel

log = logging.getLogger(__name__)
INLINE_BODY_BYTES = 16_384  # larger bodies are tokenized off the event loop
ROUTES_HINT = ("Routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /v2/health/live, "
               "GET /v2/health/ready, GET /metrics.")


class ServedLanguageModel:
    """The language model being served and its engine. Setting `current` (a hot switch) starts an engine for
    the new model; the old one finishes the streams it has, then stops."""

    def __init__(self, settings: ServeConfig, metrics: ServerMetrics):
        self.settings, self.metrics = settings, metrics
        self.loaded: LoadedModel | None = None
        self.engine: GenerationEngine | None = None
        self.retired: list[GenerationEngine] = []

    @property
    def ready(self) -> bool:
        return self.loaded is not None

    @property
    def current(self) -> LoadedModel | None:
        return self.loaded

    @current.setter
    def current(self, loaded: LoadedModel) -> None:
        s = self.settings
        engine = GenerationEngine(loaded.language, max_streams=s.max_streams, max_queue_size=s.max_queue_size,
                                  queue_timeout_ms=s.llm_queue_timeout_s * 1000, gather_ms=s.max_latency_ms,
                                  on_first_token=self.metrics.first_token,
                                  on_tokens=self.metrics.generated.inc).start()
        old, self.loaded, self.engine = self.engine, loaded, engine  # new requests use the new engine now
        if old is not None:
            old.retire()
            self.retired.append(old)

    def engines(self) -> list[GenerationEngine]:
        """The current engine and the retired ones still finishing streams (finished ones are let go)."""
        self.retired = [e for e in self.retired if not e.idle]
        return [e for e in [self.engine, *self.retired] if e is not None]

    def get(self, name: str | None) -> tuple[LoadedModel, GenerationEngine]:
        if self.loaded is None or self.engine is None:
            raise FoundryError("The model is still loading.", "Retry when /v2/health/ready answers 200.")
        if name is not None and name != self.loaded.name:
            raise ModelNotFound(f"This server serves model '{self.loaded.name}', not '{name}'.",
                                f"Send \"model\": \"{self.loaded.name}\" (GET /v1/models lists it).")
        return self.loaded, self.engine

    def stop(self) -> None:
        for engine in self.engines():
            engine.stop()


def create_llm_app(settings: ServeConfig, store: Any, preloaded: LoadedModel | None = None) -> FastAPI:
    """The FastAPI app serving `store`'s language model (or `preloaded`) over the OpenAI API."""
    from modelfoundry.serve.app import (_add_error_handlers, _follow_alias, add_health_routes, max_body_bytes,
                                        request_guard)

    metrics = ServerMetrics(settings.max_batch_size)
    served = ServedLanguageModel(settings, metrics)
    metrics.add_generation(lambda: sum(e.active for e in served.engines()),
                           lambda: sum(e.queued for e in served.engines()),
                           lambda: sum(e.tokens_per_s for e in served.engines()))

    async def ready_model(loaded: LoadedModel) -> LoadedModel:
        await asyncio.to_thread(warm_up, loaded)
        return loaded

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        served.current = await ready_model(preloaded or await asyncio.to_thread(store.load))
        metrics.set_model(served.loaded.name, served.loaded.version, served.loaded.alias)
        watcher = None
        if settings.poll_s > 0 and hasattr(store, "resolve"):
            watcher = asyncio.get_running_loop().create_task(
                _follow_alias(store, served, metrics, settings.poll_s, ready_model))
        yield
        if watcher:
            watcher.cancel()
        await asyncio.to_thread(served.stop)

    guarded = request_guard(settings)
    app = FastAPI(title="modelfoundry language model server", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.served, app.state.metrics = served, metrics
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes(settings))
    app.add_middleware(OpenAIErrors)  # also the 413s of BodySizeLimit
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    _add_error_handlers(app, served, ROUTES_HINT)
    add_health_routes(app, served, metrics)

    @app.get("/v1/models", dependencies=guarded)
    async def models() -> dict[str, Any]:
        loaded, _ = served.get(None)
        identity = loaded.language.identity
        return {"object": "list", "data": [{"id": loaded.name, "object": "model", "created": 0,
                                            "owned_by": "modelfoundry",
                                            "metadata": {"version": loaded.version, "alias": loaded.alias,
                                                         "context_length": loaded.language.context_length,
                                                         "base": identity}}]}

    async def generation(request: Request, schema: type, chat: bool) -> Response:
        body = await read_request(request, schema)
        loaded, engine = served.get(body.model)
        prompt_ids = await _tokenized(request, body, loaded)
        return await _answer(request, body, loaded, engine, prompt_ids, chat=chat, limit=settings.max_new_tokens)

    @app.post("/v1/completions", dependencies=guarded)
    async def completions(request: Request) -> Response:
        return await generation(request, CompletionRequest, chat=False)

    @app.post("/v1/chat/completions", dependencies=guarded)
    async def chat_completions(request: Request) -> Response:
        return await generation(request, ChatRequest, chat=True)

    return app


async def _tokenized(request: Request, body: Any, loaded: LoadedModel) -> list[int]:
    """The prompt's token ids; a long body is tokenized in a thread, so the running streams go on meanwhile."""
    if int(request.headers.get("content-length") or 0) > INLINE_BODY_BYTES:
        return await asyncio.to_thread(body.prompt_ids, loaded.language)
    return body.prompt_ids(loaded.language)


def warm_up(loaded: LoadedModel) -> None:
    """One short generation, so the first request does not pay for the first forward passes."""
    from modelfoundry.models.generation import SamplingParams

    engine = GenerationEngine(loaded.language, max_streams=1).start()
    try:
        engine.submit(loaded.language.tokenizer("Hello")["input_ids"] or [0], SamplingParams(max_new_tokens=2)).text()
    finally:
        engine.stop()


async def _answer(request: Request, body: Any, loaded: LoadedModel, engine: GenerationEngine,
                  prompt_ids: list[int], chat: bool, limit: int) -> Response:
    """Run the request on `engine`: one JSON answer, or server-sent events with `stream: true`."""
    params = body.sampling(loaded.language, len(prompt_ids), limit)
    stream = engine.submit(prompt_ids, params, asyncio.get_running_loop())
    meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
            "model": loaded.name}
    pieces = stream.pieces()
    watcher = asyncio.get_running_loop().create_task(_hang_up(request, stream))
    try:  # errors before the first token are HTTP errors
        first = await anext(pieces, None)
        if not body.stream:
            text = "".join([first or "", *[piece async for piece in pieces]])
    except BaseException:
        stream.cancel()
        raise
    finally:
        watcher.cancel()
    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(_events(pieces, first, stream, meta, chat, include_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": stream.finish_reason}
    choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
    return JSONResponse({**meta, "object": "chat.completion" if chat else "text_completion", "choices": [choice],
                         "usage": _usage(stream)})


async def _hang_up(request: Request, stream: Stream) -> None:
    """Cancel `stream` when the client disconnects while the answer is made (the body is read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    stream.cancel()


async def _events(pieces: Any, first: str | None, stream: Stream, meta: dict[str, Any], chat: bool,
                  include_usage: bool):  # noqa: ANN202 - AsyncIterator[str]
    """Server-sent events; the engine drops the stream as soon as the client hangs up (this generator is
    closed then, and `finally` cancels the stream)."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text: str | None, finish: str | None = None, role: bool = False) -> str:
        if chat:
            delta = ({"role": "assistant"} if role else {}) | ({"content": text} if text is not None else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return f"data: {json.dumps({**meta, 'object': kind, 'choices': [choice]})}\n\n"

    try:
        if chat:
            yield chunk("", role=True)
        if first:
            yield chunk(first)
        try:
            async for piece in pieces:
                yield chunk(piece)
        except FoundryError as exc:  # the status line is sent: the error goes in the stream
            yield f"data: {json.dumps(openai_error(exc.message, exc.hint, exc.http_status))}\n\n"
            return
        yield chunk(None, stream.finish_reason)
        if include_usage:
            yield f"data: {json.dumps({**meta, 'object': kind, 'choices': [], 'usage': _usage(stream)})}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        stream.cancel()


def _usage(stream: Stream) -> dict[str, int]:
    return {"prompt_tokens": stream.prompt_tokens, "completion_tokens": stream.completion_tokens,
            "total_tokens": stream.prompt_tokens + stream.completion_tokens}


ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               429: "rate_limit_error"}


def openai_error(message: str, hint: str | None, status: int) -> dict[str, Any]:
    """An error body in OpenAI's shape (with the server's hint beside the message)."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None, "hint": hint}}


class OpenAIErrors:
    """ASGI middleware: the server's error bodies, {"error": message, "hint": hint}, in OpenAI's shape."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: dict | None = None
        chunks: list[bytes] = []

        async def rewrite(message: dict) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message  # held until the body is known
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = _rewritten(b"".join(chunks), start["status"])
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewrite)


def _rewritten(body: bytes, status: int) -> bytes:
    try:
        payload = json.loads(body)
    except ValueError:
        return body
    if not isinstance(payload, dict) or not isinstance(payload.get("error"), str):
        return body
    return json.dumps(openai_error(payload["error"], payload.get("hint"), status)).encode()
