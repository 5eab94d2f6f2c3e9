"""Server extensions: code that sees every batch the model answered, off the request path.

An extension is any object with an `on_batch(batch: BatchRecord)` method, plain or `async`:

    class RequestLog:
        def on_batch(self, batch: BatchRecord) -> None:
            ...  # batch.rows.numeric / .texts (raw checked values), batch.rows.inputs (named model inputs), batch.outputs

    app = create_app(settings, store, extensions=[RequestLog()])

Drift monitoring, request logging and explanations plug in here without touching the app factory. The
server hands each answered batch to a background task after the model call; the requests' answers never
wait for an extension. A plain `on_batch` runs in one worker thread of its own (never the one the model
uses), an async one on the event loop (it must not block). Records are delivered in order, one at a time;
when extensions fall `QUEUE_SIZE` records behind, new records are dropped and counted instead of queuing
without bound. An extension that raises is logged and counted; it never fails a request. With no
extensions nothing of this runs: no record is built and /metrics is unchanged.

Optional members, looked up with getattr (an extension may have any of them):

    setup(context: ServerContext)   once, when the app is built: add routes (dependencies=context.guard, so the
                                    API key and rate limit apply) and Prometheus series (registry=context.registry)
    async start() / async stop()    in the app's lifespan: after the model is loaded / after the queued records
                                    were delivered
    id_share: float                 the share of requests that get an id (uuid4 hex; row i of a request is
                                    "<id>-<i>", see BatchRecord.row_ids); ids exist only when some extension asks
    row_scores(model, rows)         per-row fields computed on the request path, only for a request that asks
                                    ({"ood": true}); returns {field: [one value per row]}, merged into the answer

Prometheus (only with extensions): foundry_extension_errors_total{extension},
foundry_extension_dropped_total (records not delivered because the queue was full).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from modelfoundry.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    from fastapi import FastAPI

    from modelfoundry.config import ServeConfig
    from modelfoundry.data.input_schema import CheckedRows
    from modelfoundry.serve.runner import ServedModel
    from modelfoundry.serve.store import LoadedModel

log = logging.getLogger(__name__)
QUEUE_SIZE = 1024  # batch records waiting for slow extensions before new ones are dropped
DRAIN_S = 5.0  # at shutdown, how long the records still queued may take to be delivered


@dataclass(frozen=True)
class ModelIdentity:
    """Which model answered: the served name, its version ('run' for a run directory) and the alias followed."""

    name: str
    version: str
    alias: str | None
    run_dir: str | None = None  # the served run directory (a registered version: its local copy)


@dataclass
class ServerContext:
    """What an extension's `setup(context)` may use to add routes and metrics to the app being built."""

    app: FastAPI
    registry: Any  # the app's prometheus_client CollectorRegistry (each app has its own)
    guard: list[Any]  # the route dependencies of the model routes: API key and rate limit, when configured
    served: ServedModel  # .current is the LoadedModel (None until loaded), .get() raises while loading
    settings: ServeConfig


@dataclass(frozen=True)
class BatchRecord:
    """One model call's answered rows. Arrays are read-only views: copy before changing them.

    `rows` holds the raw checked values (`numeric` (N, Fn) float64 with NaN where missing, `codes` and
    `texts` (N, Fc) of the categorical columns) and the named model inputs (`inputs`, e.g. {"numeric": (N, F) float32});
    `outputs` are class probabilities (N, K) in the order of `labels`, or values (N,) in the target's units.
    `requests` gives the rows of each request in the batch, in order (they sum to N).
    """

    model: ModelIdentity
    task: str  # "classification" or "regression"
    labels: list[Any] | None  # class labels, None for regression
    columns: list[str]  # the raw input columns the model reads
    rows: CheckedRows
    outputs: np.ndarray
    warnings: list[list[dict[str, Any]]] | None  # per row (empty list: none), None when no row has any
    requests: tuple[int, ...]
    answered_at: float  # time.time() when the batch was answered
    ids: tuple[str | None, ...] = ()  # per request: its id when it got one (see id_share), else None; () when none
    offsets: tuple[int, ...] = ()  # per request: the index of its first row here (a request larger than a batch
    # is run in slices), so its rows are "<id>-<offset + i>"; () when all are 0
    threshold: dict[str, Any] | None = None  # a binary classifier's tuned decision threshold (model.json's)

    def row_ids(self) -> list[str | None]:
        """One id per row, "<request id>-<row index in its request>", None for the rows of requests without one."""
        if not any(self.ids):
            return [None] * len(self.outputs)
        offsets = self.offsets or (0,) * len(self.requests)
        return [None if rid is None else f"{rid}-{start + i}" for rid, start, n in zip(self.ids, offsets, self.requests)
                for i in range(n)]


@runtime_checkable
class Extension(Protocol):
    def on_batch(self, batch: BatchRecord) -> None | Awaitable[None]: ...


def extension_name(extension: Any) -> str:
    return str(getattr(extension, "name", None) or type(extension).__name__)


class Extensions:
    """Delivers batch records to the extensions from one background task; see the module docstring."""

    def __init__(self, extensions: Sequence[Extension], registry: Any):
        from prometheus_client import Counter

        for extension in extensions:
            if not callable(getattr(extension, "on_batch", None)):
                raise ConfigError(f"The server extension {extension!r} has no on_batch(batch) method.",
                                  "Give it `def on_batch(self, batch: BatchRecord) -> None` (or async def); see "
                                  "docs/serving.md#extensions.")
        self.extensions = list(extensions)
        self.id_share = max((float(getattr(e, "id_share", 0.0) or 0.0) for e in self.extensions), default=0.0)
        self.scorers = [e for e in self.extensions if callable(getattr(e, "row_scores", None))]
        self.errors = Counter("foundry_extension_errors", "Server extensions that raised, by extension.",
                              ["extension"], registry=registry)
        self.dropped = Counter("foundry_extension_dropped", "Batch records not delivered to the extensions "
                               "because they fell too far behind.", registry=registry)
        self.queue: asyncio.Queue[BatchRecord] | None = None
        self.task: asyncio.Task | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.enqueued = self.settled = 0  # records queued / delivered or dropped so far (see settle)

    def setup(self, context: ServerContext) -> None:
        """Each extension's optional setup(context), once, while the app is built."""
        for extension in self.extensions:
            if callable(getattr(extension, "setup", None)):
                extension.setup(context)

    def new_id(self) -> str | None:
        """A fresh request id for id_share of the requests (None for the others)."""
        if self.id_share <= 0 or (self.id_share < 1 and random.random() >= self.id_share):
            return None
        return uuid.uuid4().hex

    def row_scores(self, model: LoadedModel, rows: CheckedRows) -> dict[str, list[Any]]:
        """The per-row fields of every extension with row_scores (on the request path; a request asked)."""
        fields: dict[str, list[Any]] = {}
        for extension in self.scorers:
            fields.update(extension.row_scores(model, rows))
        return fields

    async def start(self) -> None:
        self.queue = asyncio.Queue(maxsize=QUEUE_SIZE)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="foundry-extension")
        self.task = asyncio.get_running_loop().create_task(self._deliver())
        for extension in self.extensions:
            if callable(getattr(extension, "start", None)):
                await extension.start()

    async def stop(self) -> None:
        """Deliver what is queued (for at most DRAIN_S), then stop the extensions and the delivery."""
        if self.task is None:
            return
        try:
            await asyncio.wait_for(self.queue.join(), DRAIN_S)
        except asyncio.TimeoutError:
            log.warning("server extensions: %d batch records left undelivered at shutdown", self.queue.qsize())
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        for extension in self.extensions:
            if callable(getattr(extension, "stop", None)):
                try:
                    await extension.stop()
                except Exception:  # noqa: BLE001 - one extension's failure must not keep the others from stopping
                    log.exception("server extension %s failed to stop", extension_name(extension))
        self.pool.shutdown(wait=False)
        self.task = None

    async def settle(self, timeout_s: float) -> bool:
        """Wait (at most timeout_s) until every record queued before this call was delivered (or dropped): a
        route that reads what an extension wrote, e.g. feedback right after its prediction. True when settled."""
        target, deadline = self.enqueued, time.monotonic() + timeout_s
        while self.settled < target:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.002)
        return True

    def publish(self, model: LoadedModel, rows: CheckedRows, outputs: np.ndarray,
                warnings: list[list[dict[str, Any]]] | None, requests: Sequence[int],
                ids: Sequence[str | None] = (), offsets: Sequence[int] = ()) -> None:
        """Queue one answered batch for the extensions (called by the runner after the model call); never
        raises, never waits. `ids` and `offsets` per request (see BatchRecord), empty when no request has an id."""
        if self.queue is None:
            return
        backend = model.backend
        identity = ModelIdentity(model.name, model.version, model.alias,
                                 str(model.run_dir) if model.run_dir is not None else None)
        record = BatchRecord(identity, backend.task, list(backend.labels) if backend.task == "classification" else None,
                             list(backend.columns), _read_only_rows(rows), _read_only(outputs), warnings,
                             tuple(requests), time.time(), tuple(ids) if any(ids) else (),
                             tuple(offsets) if any(offsets) else (), getattr(backend, "threshold", None))
        asyncio.get_running_loop().call_soon(self._enqueue, record)  # after the answers just set

    def _enqueue(self, record: BatchRecord) -> None:
        self.enqueued += 1
        try:
            self.queue.put_nowait(record)
        except asyncio.QueueFull:
            self.dropped.inc()
            self.settled += 1

    async def _deliver(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            record = await self.queue.get()
            try:
                for extension in self.extensions:
                    try:
                        if inspect.iscoroutinefunction(extension.on_batch):
                            result = extension.on_batch(record)
                        else:
                            result = await loop.run_in_executor(self.pool, extension.on_batch, record)
                        if inspect.isawaitable(result):
                            await result
                    except Exception:  # noqa: BLE001 - an extension's failure is logged and counted, never a request's
                        log.exception("server extension %s failed on a batch of %d rows", extension_name(extension),
                                      len(record.outputs))
                        self.errors.labels(extension_name(extension)).inc()
            finally:
                self.settled += 1
                self.queue.task_done()


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


def _read_only_rows(rows: CheckedRows) -> CheckedRows:
    """The same rows with every array field a read-only view (the request's own arrays stay as they were)."""
    import numpy as np

    arrays = {f.name: _read_only(getattr(rows, f.name)) for f in dataclasses.fields(rows)
              if isinstance(getattr(rows, f.name), np.ndarray)}
    return dataclasses.replace(rows, **arrays)
