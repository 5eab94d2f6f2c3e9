"""The `serve:` section: the server's settings for a model (`foundry serve` flags override them)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from modelfoundry.config.base import Section


class ServeConfig(Section):
    """`foundry serve`: the server's settings for this model; each `foundry serve` flag overrides one key."""

    host: str = "127.0.0.1"  # interface to bind
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1)  # server processes
    backend: Literal["onnx", "torch"] = "onnx"  # ONNX Runtime (exported and parity-checked on first use) or PyTorch
    batching: bool = True  # coalesce concurrent requests into one model call
    max_batch_size: int = Field(64, ge=1)  # rows per model call
    max_latency_ms: float = Field(5.0, ge=0)  # how long a batch waits for more requests after its first
    max_queue_size: int = Field(1024, ge=1)  # waiting requests before 503
    queue_timeout_ms: float = Field(1000.0, gt=0)  # a request waiting longer in the queue gets 503
    max_records: int = Field(10_000, ge=1)  # rows per request
    max_body_mb: float = Field(4.0, gt=0)  # larger request bodies get 413
    poll_s: float = Field(2.0, ge=0)  # how often a registry alias is checked for a move (hot switch); 0: never
    api_keys_file: str | None = None  # NAME:SHA256 lines from `foundry keys create`; None: no authentication
    rate_limit_per_s: float | None = Field(None, gt=0)  # per API key (per client address without keys)
    rate_burst: int = Field(20, ge=1)  # requests allowed at once above the rate
    on_unseen: Literal["warn", "reject"] = "warn"  # a category the model never saw: predict and warn, or 422
    openapi: bool = False  # serve /openapi.json (behind the API key when keys are set); no HTML docs page
    access_log: bool = False  # log every request (costs ~5% of throughput)
    # language models (POST /v1/completions, /v1/chat/completions; docs/serving.md)
    max_streams: int = Field(8, ge=1, le=256)  # generations decoded together; more wait in the queue (as above)
    max_new_tokens: int = Field(512, ge=1)  # the most tokens one request may generate: a larger max_tokens is a 400
    llm_dtype: Literal["float32", "bfloat16"] = "float32"  # the weights' dtype when served (bfloat16 halves memory)
    # a generation waiting longer than this for a stream gets 503 (generations take seconds, predictions milliseconds:
    # queue_timeout_ms is for the latter)
    llm_queue_timeout_s: float = Field(120.0, gt=0)
