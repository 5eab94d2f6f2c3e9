"""The request log and feedback in the server: the `FeedbackLog` server extension.

    app = create_app(settings, store, extensions=[FeedbackLog(config.monitor)])

A share of the requests (`monitor.log.sample`) gets an id; their rows ("<id>-<row>", answered as "ids") are
written to the request log (monitor/requestlog.py): raw inputs (hashed / excluded as `monitor.log` says), the
prediction and, when the run has a reference profile with an out-of-distribution scorer, each row's OOD score.
On the event loop a batch is only queued (a reference to its read-only arrays; no thread hop per batch, which
would hand the GIL back and forth with the serving loop); the log's own writer thread encodes the queued
batches together (whole columns at a time, one JSON object per row, one OOD matrix product per chunk) and
inserts them, every BUFFER_ROWS rows or BUFFER_S seconds; any read or update of the log (feedback, the live
metric) writes what is queued first. At most MAX_QUEUED rows wait; beyond that, batches are dropped and
counted (foundry_request_log_dropped_rows_total) rather than held without bound.

    POST /feedback   {"id": "<row id>", "label": <true label>}  or  {"feedback": [{"id", "label"}, ...]} (<= 1000)

stores the true labels (behind the API key and rate limit of the model routes). All or nothing: an unknown id is
a 404 naming it, a label of the wrong type a 422 listing the model's labels; nothing is stored then. Feedback
sent right after its prediction waits (at most SETTLE_S) for the row to be written. Rows are written together, at
most BUFFER_S after they were answered (a report reading the log meanwhile sees them that much later).

Labels: a classifier's class labels (with their JSON type), an anomaly detector's true (anomaly) / false, a
regressor's finite numbers.

Prometheus: foundry_feedback_accuracy (classification, anomaly) or foundry_feedback_mae (regression) over the latest
`monitor.feedback_window` labelled rows of the served version, foundry_feedback_rows (how many rows that is),
read from the log (so every worker process reports the same; refreshed every REFRESH_S and after each feedback),
and foundry_feedback_total{outcome}: correct / incorrect (classification, anomaly), labelled (regression), unknown_id,
invalid (per process).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelfoundry.errors import DataError, FoundryError
from modelfoundry.monitor.labels import (
    MAX_ID_CHARS,
    check_label,
    classes,
    feedback_items,
    same_label,
)
from modelfoundry.monitor.logdb import encode_batches
from modelfoundry.monitor.requestlog import RequestLog

if TYPE_CHECKING:
    from modelfoundry.config.monitor import MonitorConfig
    from modelfoundry.serve.extensions import BatchRecord, ServerContext

log = logging.getLogger(__name__)
SETTLE_S = 2.0  # how long feedback for a row not yet in the log waits for the batches being written
REFRESH_S = 5.0  # how often the live metric is read from the log (other workers' feedback included)
BUFFER_ROWS, BUFFER_S = 512, 0.5  # queued rows are written together: at this many, or every BUFFER_S
MAX_QUEUED = 64 * BUFFER_ROWS  # rows waiting for the writer beyond which batches are dropped (and counted)


class RowNotFound(FoundryError):
    """A feedback id that is not in the request log (HTTP 404)."""

    exit_code = 4
    http_status = 404


class FeedbackLog:
    """The request log as a server extension; see the module docstring."""

    name = "request_log"

    def __init__(self, config: MonitorConfig, request_log: RequestLog | None = None):
        self.config = config
        self.log = request_log or RequestLog(config.log.url, max_rows=config.log.max_rows,
                                             hash_columns=config.log.hash_columns,
                                             exclude_columns=config.log.exclude_columns)
        self.log.source = self._drain  # every flush of the log encodes the queued batches first
        self._queue: deque[tuple[BatchRecord, Any]] = deque()  # (batch, the model served when it was queued)
        self._queued = 0  # rows in _queue (approximate: added on the loop, taken off in the writer)
        self._writing = False  # a flush is submitted to the writer thread
        self._writer: ThreadPoolExecutor | None = None
        self.dropped: Any = None
        self.id_share = config.log.sample
        self.context: ServerContext | None = None
        self.live: tuple[float, int] = (math.nan, 0)  # the metric over the labelled window, and its rows
        self.outcomes: Any = None
        self._gauges = False
        self._refresher: asyncio.Task | None = None
        self._versions: dict[tuple[str, str], tuple[Any, Any]] = {}  # (name, version) -> (InputSchema, OOD scorer)

    # --------------------------------------------------------------------------------- server hooks
    def setup(self, context: ServerContext) -> None:
        """Add POST /feedback (behind the guard) and the feedback counter."""
        from fastapi import Request
        from prometheus_client import Counter

        self.context = context
        self.outcomes = Counter("foundry_feedback", "Feedback labels by outcome (correct, incorrect, labelled, "
                                "unknown_id, invalid).", ["outcome"], registry=context.registry)
        self.dropped = Counter("foundry_request_log_dropped_rows", "Answered rows with ids not logged because the "
                               "request log's writer fell behind.", registry=context.registry)

        async def feedback(request: Request) -> dict[str, Any]:
            from modelfoundry.serve.payloads import parse_json

            try:
                items = feedback_items(parse_json(await request.body(), request.headers.get("content-type")))
                model = context.served.get()
                for i, (_, label) in enumerate(items):
                    check_label(label, *classes(model.backend), f"feedback.{i}.label" if len(items) > 1 else "label")
            except DataError:
                self.outcomes.labels("invalid").inc()
                raise
            return await self.accept(model, items)

        feedback.__annotations__["request"] = Request  # the class itself: FastAPI can't see this function's imports
        context.app.add_api_route("/feedback", feedback, methods=["POST"], dependencies=context.guard)

    async def start(self) -> None:
        """The live metric's gauges (now that the task is known) and their refresh from the log."""
        model = self.context.served.current if self.context else None
        if model is None:
            return
        if not self._gauges:
            from prometheus_client import Gauge

            self._gauges = True
            name, about = ("foundry_feedback_accuracy", "Accuracy") if classes(model.backend)[1] is not None \
                else ("foundry_feedback_mae", "Mean absolute error")
            Gauge(name, f"{about} on the latest monitor.feedback_window labelled rows of the served version.",
                  registry=self.context.registry).set_function(lambda: self.live[0])
            Gauge("foundry_feedback_rows", "Labelled rows the live feedback metric is computed on.",
                  registry=self.context.registry).set_function(lambda: self.live[1])
        self._refresher = asyncio.get_running_loop().create_task(self._background())

    async def stop(self) -> None:
        """Stop the background task, write the rows still queued, end the writer thread."""
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
            self._refresher = None
        await asyncio.get_running_loop().run_in_executor(self._thread(), self.log.flush)
        self._writer, writer = None, self._writer
        writer.shutdown(wait=False)

    async def on_batch(self, batch: BatchRecord) -> None:
        """Queue the batch if some of its requests have ids, on the event loop: an append, no work per row; the
        writer thread is woken once BUFFER_ROWS rows wait (else the background task writes them every BUFFER_S)."""
        if not batch.ids:  # () when none of its requests has an id
            return
        rows = len(batch.outputs)
        if self._queued >= MAX_QUEUED:
            if self.dropped is not None:
                self.dropped.inc(rows)
            return
        self._queue.append((batch, self.context.served.current if self.context else None))
        self._queued += rows
        if self._queued >= BUFFER_ROWS and not self._writing:
            self._writing = True
            self._thread().submit(self._write)

    def _write(self) -> None:
        """Flush the log in the writer thread (a failure is logged: the log may be unreachable for a while)."""
        try:
            self.log.flush()
        except Exception as exc:  # noqa: BLE001 - never raised into the server: the log may be unreachable for a while
            log.warning("request log: %s", exc)
        finally:
            self._writing = False

    def _thread(self) -> ThreadPoolExecutor:
        """The log's writer thread (one, so that chunks are written in order)."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="foundry-request-log")
        return self._writer

    def _drain(self) -> list[list[Any]]:
        """The log's source (called by its flush, under its lock): the queued batches' logged rows, encoded a
        chunk of one version at a time; a chunk that cannot be encoded is logged and skipped."""
        taken = [self._queue.popleft() for _ in range(len(self._queue))]
        self._queued = max(0, self._queued - sum(len(batch.outputs) for batch, _ in taken))
        rows: list[list[Any]] = []
        for _, chunk in groupby(taken, key=lambda entry: (entry[0].model.name, entry[0].model.version)):
            batches = list(chunk)
            try:
                rows += encode_batches([b for b, _ in batches], *self._version(*batches[-1]), self.log)
            except Exception:  # a chunk that fails must not lose the others, nor fail a feedback
                log.exception("request log: %d batches could not be logged", len(batches))
        return rows

    # --------------------------------------------------------------------------------- feedback
    async def accept(self, model: Any, items: list[tuple[str, Any]]) -> dict[str, Any]:
        """Store the labels of `items` if every id is logged for `model`; else a 404 naming the missing ones."""
        ids = [rid for rid, _ in items]
        found = await asyncio.to_thread(self.log.find, model.name, ids)
        if len(found) < len(ids):  # maybe not written yet: wait for the batches being delivered, then look again
            extensions = getattr(self.context.served, "extensions", None)
            if extensions is not None:
                await extensions.settle(SETTLE_S)
            found.update(await asyncio.to_thread(self.log.find, model.name, [i for i in ids if i not in found]))
            if len(found) < len(ids):  # another worker may still hold it in its buffer
                await asyncio.sleep(2 * BUFFER_S)
                found.update(await asyncio.to_thread(self.log.find, model.name, [i for i in ids if i not in found]))
        missing = [rid for rid in ids if rid not in found]
        if missing:
            self.outcomes.labels("unknown_id").inc(len(missing))
            raise RowNotFound(*self._missing(model, missing))
        await asyncio.to_thread(self.log.label, dict(items))
        counts = {"correct": 0, "incorrect": 0, "labelled": 0}
        for rid, label in items:
            prediction = found[rid][1]
            outcome = "labelled" if classes(model.backend)[1] is None else \
                "correct" if same_label(prediction, label) else "incorrect"
            counts[outcome] += 1
            self.outcomes.labels(outcome).inc()
        await asyncio.to_thread(self.refresh)
        answer = {"accepted": len(items), "model": model.name, "version": model.version}
        return answer | ({"correct": counts["correct"]} if classes(model.backend)[1] is not None else {})

    def _missing(self, model: Any, missing: list[str]) -> tuple[str, str]:
        from modelfoundry.redact import redact

        shown = ", ".join(repr(m[:MAX_ID_CHARS]) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
        single = [m for m in missing if "-" not in m]
        guess = f" Row ids end in '-<row>': for the first row of request '{single[0]}' send '{single[0]}-0'." \
            if single else ""
        error = f"No logged row of model '{model.name}' has the id {shown} ({len(missing)} of the feedback's ids); " \
            "nothing was stored."
        return (error,
                f"Send the ids the prediction answered (\"ids\"). An id may be missing because its request was "
                f"not sampled (monitor.log.sample is {self.config.log.sample}: only requests answered with ids "
                f"are logged), because it was evicted (the log keeps the newest {self.config.log.max_rows} rows per "
                f"model), because it was not written yet (the server waited {SETTLE_S:g} s), or because another "
                f"model or log ({redact(self.log.url)}) served it.{guess}")

    # --------------------------------------------------------------------------------- live metric
    def refresh(self) -> tuple[float, int]:
        """Read the live metric from the log: accuracy (or MAE) over the latest labelled rows of the served
        version."""
        model = self.context.served.current if self.context else None
        if model is None:
            return self.live
        pairs = self.log.labelled(model.name, model.version, self.config.feedback_window)
        if not pairs:
            self.live = (math.nan, 0)
        elif classes(model.backend)[1] is not None:
            self.live = (sum(same_label(p, lab) for p, lab in pairs) / len(pairs), len(pairs))
        else:
            self.live = (sum(abs(float(p) - float(lab)) for p, lab in pairs) / len(pairs), len(pairs))
        return self.live

    async def _background(self) -> None:
        """Every BUFFER_S: write the queued rows (in the writer thread); every REFRESH_S: read the live metric
        from the log."""
        loop, refreshed = asyncio.get_running_loop(), -math.inf
        while True:
            try:
                if (self._queue or self.log.dirty) and not self._writing:
                    await loop.run_in_executor(self._thread(), self.log.flush)
                if time.monotonic() - refreshed >= REFRESH_S:
                    refreshed = time.monotonic()
                    await asyncio.to_thread(self.refresh)
            except Exception as exc:  # noqa: BLE001 - the log may be unreachable for a while: keep serving
                log.warning("request log: %s", exc)
            await asyncio.sleep(BUFFER_S)

    def _version(self, batch: BatchRecord, current: Any) -> tuple[Any, Any]:
        """(InputSchema, OOD scorer or None) of the version that answered `batch` (`current`: the model served
        when it was queued), cached per version."""
        key = (batch.model.name, batch.model.version)
        if key not in self._versions:
            if current is None or (current.name, current.version) != key:
                return None, None  # a version no longer served: log its rows without inputs
            self._versions[key] = (current.schema, _scorer(batch.model.run_dir) if self.config.ood.enabled else None)
        return self._versions[key]


def _scorer(run_dir: str | None) -> Any:
    """The run's OOD scorer (from its reference profile), None when it has none."""
    if run_dir is None:
        return None
    from modelfoundry.monitor.profile import load_reference

    try:
        reference = load_reference(Path(run_dir))
    except FoundryError as exc:
        log.warning("request log: no OOD scores (%s)", exc.message)
        return None
    return reference.ood if reference is not None else None
