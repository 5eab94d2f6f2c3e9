"""How a generation's text travels from the engine's thread to the request that waits for it."""

from __future__ import annotations

import collections
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

    from modelfoundry.models.generation import SamplingParams

END = object()  # the last item of a stream's channel


class Stream:
    """One request's generation as the engine runs it: text pieces arrive on a channel; usage and timings
    are set by the engine. `cancel()` (thread-safe) makes the engine drop the row before its next step."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, loop: asyncio.AbstractEventLoop | None):
        self.prompt_ids, self.params = prompt_ids, params
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self.enqueued = time.perf_counter()
        self.queue_s: float | None = None  # submitted -> prefill began
        self.ttft_s: float | None = None  # submitted -> first token
        self.cancelled = False
        self._items: collections.deque = collections.deque()
        self._loop = loop
        if loop is None:
            self._wake: Any = threading.Event()
        else:
            import asyncio

            self._wake = asyncio.Event()

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    def cancel(self) -> None:
        self.cancelled = True

    def put(self, item: Any) -> None:
        """Engine side: a text piece, an exception, or END."""
        self._items.append(item)
        if self._loop is None:
            self._wake.set()
            return
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:  # the loop is closed: nobody reads any more
            self.cancelled = True

    def _take(self) -> tuple[str | None, bool]:
        """The next item off the channel, one at a time (an iterator given up on leaves the rest for the next):
        (a text piece, or None when none waits; whether the stream ended). Raises the engine's error."""
        if not self._items:
            return None, False
        item = self._items.popleft()
        if item is END:
            return None, True
        if isinstance(item, BaseException):
            raise item
        return item, False

    async def pieces(self):  # noqa: ANN201 - AsyncIterator[str]
        """The text pieces as they come (async); raises the engine's error for this request, if any."""
        while True:
            self._wake.clear()
            piece, done = self._take()
            if done:
                return
            if piece is not None:
                yield piece
            elif not self._items:
                await self._wake.wait()

    def __iter__(self):  # noqa: ANN204 - Iterator[str], blocking (tests, benchmarks without a loop)
        while True:
            self._wake.clear()
            piece, done = self._take()
            if done:
                return
            if piece is not None:
                yield piece
            elif not self._items:
                self._wake.wait()

    def text(self) -> str:
        """The whole answer, blocking (a stream made without a loop)."""
        return "".join(self)
