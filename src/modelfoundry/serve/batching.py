"""Dynamic batching: concurrent requests are coalesced into one model call.

A batch closes when it holds `max_batch_size` rows or `max_latency_ms` after its first request arrived;
a batch never exceeds `max_batch_size` rows (a larger request is run in slices of that size). The queue
is bounded: when `max_queue_size` requests wait, or one waited longer than `queue_timeout_ms`, the request
fails at once with Overloaded (HTTP 503 with Retry-After) instead of the queue growing without bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelfoundry.errors import Overloaded


@dataclass
class _Pending:
    frame: Any  # one request's rows: anything with len() and slicing (a checked request, a DataFrame)
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


# run(frames) -> (outputs, tag): one call for the whole batch; tag travels back with every result (the version).
# An output may be an exception: that request alone fails with it.
BatchRunner = Callable[[list[Any]], Awaitable[tuple[list[np.ndarray], Any]]]


class DynamicBatcher:
    def __init__(self, run: BatchRunner, *, max_batch_size: int, max_latency_ms: float, max_queue_size: int,
                 queue_timeout_ms: float, observe: Callable[[int, list[float]], None] | None = None):
        """The limits are the `serve:` section's (config/serve.py holds their defaults, once)."""
        self.run = run
        self.max_batch_size = max_batch_size
        self.max_latency_s = max_latency_ms / 1000
        self.queue_timeout_s = queue_timeout_ms / 1000
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=max_queue_size)
        self.observe = observe  # (batch rows, queue seconds of each request) -> metrics
        self.task: asyncio.Task | None = None
        self._carry: _Pending | None = None  # a request that did not fit the last batch; it opens the next

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def submit(self, frame: Any) -> tuple[np.ndarray, Any]:
        """Queue the rows of one request; returns their outputs and the tag of the batch that ran them."""
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(_Pending(frame, future))
        except asyncio.QueueFull:
            raise Overloaded(f"The server is overloaded ({self.queue.maxsize} requests waiting).",
                             "Retry after the Retry-After delay, or add workers/replicas.",
                             retry_after_s=max(1.0, self.queue_timeout_s)) from None
        return await future

    async def _loop(self) -> None:
        while True:
            first = self._carry or await self.queue.get()
            self._carry = None
            batch, rows = [first], len(first.frame)
            deadline = first.enqueued + self.max_latency_s
            while rows < self.max_batch_size:
                remaining = deadline - time.perf_counter()
                try:
                    item = self.queue.get_nowait() if remaining <= 0 else \
                        await asyncio.wait_for(self.queue.get(), remaining)
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                if rows + len(item.frame) > self.max_batch_size:  # it starts the next batch instead
                    self._carry = item
                    break
                batch.append(item)
                rows += len(item.frame)
            await self._run(batch)

    async def _run(self, batch: list[_Pending]) -> None:
        now = time.perf_counter()
        live = []
        for item in batch:
            if item.future.done():  # the client went away
                continue
            if now - item.enqueued > self.queue_timeout_s:
                item.future.set_exception(Overloaded(
                    f"The request waited {1000 * (now - item.enqueued):.0f} ms in the queue (limit "
                    f"{1000 * self.queue_timeout_s:.0f} ms).", "Retry later, or add workers/replicas.",
                    retry_after_s=1.0))
                continue
            live.append(item)
        if not live:
            return
        if self.observe:
            self.observe(sum(len(i.frame) for i in live), [now - i.enqueued for i in live])
        try:
            outputs, tag = await self._run_sliced([i.frame for i in live])
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the error, the loop goes on
            for item in live:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        for item, output in zip(live, outputs):
            if not item.future.done():
                if isinstance(output, BaseException):
                    item.future.set_exception(output)
                else:
                    item.future.set_result((output, tag))

    async def _run_sliced(self, frames: list[Any]) -> tuple[list[np.ndarray], Any]:
        """One call, or, for a single request larger than max_batch_size, one call per slice."""
        if len(frames) > 1 or len(frames[0]) <= self.max_batch_size:
            return await self.run(frames)
        frame, parts, tag = frames[0], [], None
        for start in range(0, len(frame), self.max_batch_size):
            part = frame.iloc[start:start + self.max_batch_size] if hasattr(frame, "iloc") else \
                frame[start:start + self.max_batch_size]
            out, tag = await self.run([part])
            if isinstance(out[0], BaseException):  # a slice failed: so does the request
                return [out[0]], tag
            parts.append(out[0])
        return [parts[0].join(parts) if hasattr(parts[0], "join") else np.concatenate(parts)], tag
