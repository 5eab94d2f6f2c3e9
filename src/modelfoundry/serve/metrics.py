"""Prometheus metrics of the server, named as Prometheus asks (snake_case, _total, _seconds).

    foundry_requests_total{route,status}        foundry_request_duration_seconds{route} (histogram)
    foundry_queue_duration_seconds (histogram)  foundry_batch_size (histogram)
    foundry_inflight_requests (gauge)           foundry_model_info{model,version,alias} = 1
    foundry_input_warnings_total{column,kind}   values the model did not see in training (kind: unseen_category,
                                                imputed, out_of_range; see data/input_schema.py)
    foundry_extension_errors_total{extension}   only with server extensions (extensions.py), which add
    foundry_extension_dropped_total             these two themselves (and the monitor its own series)

A language model's server (openai.py) adds, and counts its queue time in foundry_queue_duration_seconds:
    foundry_time_to_first_token_seconds (histogram)    foundry_generated_tokens_total
    foundry_generated_tokens_per_second (gauge)        foundry_active_streams (gauge)
    foundry_queued_requests (gauge)

Each app has its own registry, so several apps (tests) never collide. With several worker processes each
worker reports its own series (set PROMETHEUS_MULTIPROC_DIR for prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

ROUTES = ("/v2/health/live", "/v2/health/ready", "/predict", "/metrics", "/openapi.json", "/v1/completions",
          "/v1/chat/completions", "/v1/models", "/feedback")
MODEL_ROUTES = ("infer", "monitor")  # /v2/models/{name}/<route>


class ServerMetrics:
    def __init__(self, max_batch_size: int):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        latency = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
        self.requests = Counter("foundry_requests", "HTTP requests by route and status code.", ["route", "status"],
                                registry=self.registry)
        self.duration = Histogram("foundry_request_duration_seconds", "Request latency, end to end.", ["route"],
                                  buckets=latency, registry=self.registry)
        self.queue = Histogram("foundry_queue_duration_seconds", "Time a request waited for its batch.",
                               buckets=latency, registry=self.registry)
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, max_batch_size})
        self.batch = Histogram("foundry_batch_size", "Rows per model call.",
                               buckets=[s for s in sizes if s <= max_batch_size], registry=self.registry)
        self.inflight = Gauge("foundry_inflight_requests", "Requests being handled now.", registry=self.registry)
        self.info = Gauge("foundry_model_info", "The model version being served (value 1).",
                          ["model", "version", "alias"], registry=self.registry)
        self.input_warnings = Counter("foundry_input_warnings", "Input values the model did not see in training, "
                                      "by column and kind.", ["column", "kind"], registry=self.registry)

    def add_generation(self, active: Callable[[], float], queued: Callable[[], float],
                       tokens_per_s: Callable[[], float]) -> None:
        """The language model's series; the gauges read `active`, `queued` and `tokens_per_s` when scraped."""
        from prometheus_client import Counter, Gauge, Histogram

        self.ttft = Histogram("foundry_time_to_first_token_seconds", "Time from a generation request to its first "
                              "token.", buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
                              registry=self.registry)
        self.generated = Counter("foundry_generated_tokens", "Tokens generated.", registry=self.registry)
        for name, about, read in (("foundry_generated_tokens_per_second", "Tokens generated per second, over the "
                                   "last steps.", tokens_per_s),
                                  ("foundry_active_streams", "Generations being decoded now.", active),
                                  ("foundry_queued_requests", "Generations waiting for a stream.", queued)):
            Gauge(name, about, registry=self.registry).set_function(read)

    def first_token(self, queue_s: float, ttft_s: float) -> None:
        self.queue.observe(queue_s)
        self.ttft.observe(ttft_s)

    def set_model(self, name: str, version: str, alias: str | None) -> None:
        self.info.clear()
        self.info.labels(name, version, alias or "").set(1)

    def observe_batch(self, rows: int, waits_s: list[float]) -> None:
        self.batch.observe(rows)
        for wait in waits_s:
            self.queue.observe(wait)

    def count_warnings(self, counts: dict[tuple[str, str], int]) -> None:
        for (column, kind), n in counts.items():
            self.input_warnings.labels(column, kind).inc(n)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def route_of(path: str) -> str:
    """The route template of a path, so label values stay few ('other' for unknown paths)."""
    if path in ROUTES:
        return path
    if path.startswith("/v2/models/"):
        last = path.rsplit("/", 1)[-1]
        return f"/v2/models/{{name}}/{last}" if last in MODEL_ROUTES and path.count("/") > 3 else "/v2/models/{name}"
    return "other"


class MetricsMiddleware:
    """Pure ASGI middleware: counts requests by route and status, times them, tracks in-flight requests."""

    def __init__(self, app: Any, metrics: ServerMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route, status, start = route_of(scope["path"]), 500, time.perf_counter()

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.inflight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.inflight.dec()
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.duration.labels(route).observe(time.perf_counter() - start)
