"""Continuous batching of a causal language model: many generations share each forward pass.

One worker thread owns the model. Between two decoding steps, requests waiting for a slot join: their
prompts are prefilled together and merged into the running batch's KV cache (batch_cache.py); then every
step is one forward of one new token per active stream. A stream that finishes (stop, length) or whose
client went away leaves the batch at once. A request's greedy text is the same alone or batched (tested).
Waiting requests are bounded (`max_queue_size`: Overloaded, HTTP 503 with Retry-After) and so is their
wait (`queue_timeout_ms`). Each request's text reaches its caller through a Stream (stream.py).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelfoundry.errors import Overloaded, RetryLater, first_line
from modelfoundry.serve.batch_cache import BatchCache, kv_cache_bytes_per_token, transpose_linear_weights
from modelfoundry.serve.stream import END, Stream

__all__ = ["GenerationEngine", "GenerationFailed", "Stream", "kv_cache_bytes_per_token"]

if TYPE_CHECKING:
    import asyncio

    import torch

    from modelfoundry.models.generation import SamplingParams
    from modelfoundry.models.llm import LanguageModel

log = logging.getLogger(__name__)


class GenerationFailed(RetryLater):
    """The engine failed on a step (a bug or a broken model, not the request): that step's requests end."""

    http_status = 503


@dataclass
class _Row:
    stream: Stream
    text: Any  # its TextStream
    budget: int  # new tokens it may still make (max_new_tokens, or the room the context leaves)
    generator: Any
    seen: torch.Tensor | None  # prompt + output ids, only for repetition_penalty
    params: Any = field(init=False)

    def __post_init__(self) -> None:
        self.params = self.stream.params


class GenerationEngine:
    """Continuous batching over `lm` with at most `max_streams` rows per step (see the module docstring).

    Args:
        lm: the language model; its weights' dtype is the one served.
        max_streams: rows decoded together; more requests wait.
        max_queue_size: waiting requests before `submit` raises Overloaded.
        queue_timeout_ms: a request waiting longer for a slot fails with Overloaded.
        gather_ms: with nothing running, how long the first request waits for others to prefill with it.
        on_first_token: called with (queue seconds, time-to-first-token seconds) of each request.
        on_tokens: called with the number of tokens each step made.
    """

    def __init__(self, lm: LanguageModel, *, max_streams: int = 8, max_queue_size: int = 1024,
                 queue_timeout_ms: float = 1000.0, gather_ms: float = 0.0, on_first_token: Any = None,
                 on_tokens: Any = None):
        self.lm = lm
        transpose_linear_weights(lm.model)
        self.max_streams, self.max_queue_size = max_streams, max_queue_size
        self.queue_timeout_s, self.gather_s = queue_timeout_ms / 1000, gather_ms / 1000
        self.on_first_token, self.on_tokens = on_first_token, on_tokens
        self.stop_ids = lm.stop_ids()
        self.pad_id = lm.tokenizer.pad_token_id or 0
        self._tokens_per_s = 0.0  # smoothed over the last steps
        self._counted_at: float | None = None
        self._pending: collections.deque[Stream] = collections.deque()
        self._cond = threading.Condition()
        self._rows: list[_Row] = []
        self._batch: BatchCache | None = None  # the running rows' KV cache, mask and next tokens
        self._state = "new"  # new -> running -> retiring (finish what it has) | stopped
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> int:
        return len(self._rows)

    @property
    def queued(self) -> int:
        return len(self._pending)

    @property
    def tokens_per_s(self) -> float:
        """Tokens generated per second over the last steps (0 when nothing runs)."""
        return self._tokens_per_s if self._rows else 0.0

    @property
    def idle(self) -> bool:
        return not self._rows and not self._pending

    def start(self) -> GenerationEngine:
        self._state = "running"
        self._thread = threading.Thread(target=self._work, name="foundry-generation", daemon=True)
        self._thread.start()
        return self

    def stop(self, wait_s: float = 10.0) -> None:
        """Stop now: waiting and running requests end with an error."""
        with self._cond:
            self._state = "stopped"
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(wait_s)

    def retire(self) -> None:
        """Finish the requests it has (a hot switch moved new ones elsewhere), then stop the thread."""
        with self._cond:
            self._state = "retiring"
            self._cond.notify_all()

    def submit(self, prompt_ids: list[int], params: SamplingParams,
               loop: asyncio.AbstractEventLoop | None = None) -> Stream:
        """Queue one generation (params already checked, prompt within the context); returns its Stream.

        Raises:
            Overloaded: `max_queue_size` requests already wait.
        """
        stream = Stream(list(prompt_ids), params, loop)
        with self._cond:
            if len(self._pending) >= self.max_queue_size:
                raise Overloaded(f"The server is overloaded ({len(self._pending)} generations waiting for one of "
                                 f"{self.max_streams} streams).", "Retry after the Retry-After delay.",
                                 retry_after_s=max(1.0, self.queue_timeout_s))
            if self._state not in ("new", "running"):
                raise Overloaded("This model version is shutting down.", "Retry now: a new version serves.",
                                 retry_after_s=1.0)
            self._pending.append(stream)
            self._cond.notify_all()
        return stream

    # -- the worker thread ---------------------------------------------------------------------------------

    def _work(self) -> None:
        import torch

        while True:
            with self._cond:
                while self._state != "stopped" and self.idle:
                    if self._state == "retiring":
                        return
                    self._cond.wait()
                if self._state == "stopped":
                    break
                self._gather()
                joiners = self._admit()
            with torch.inference_mode():
                if joiners:
                    self._guarded(self._join, joiners)
                if self._rows:
                    self._drop_cancelled()
                if self._rows:
                    self._guarded(self._step, [r.stream for r in self._rows])
        closing = Overloaded("The server is shutting down.", "Retry on another replica.", retry_after_s=1.0)
        for stream in [r.stream for r in self._rows] + list(self._pending):
            stream.put(closing)
        self._rows, self._pending = [], collections.deque()

    def _gather(self) -> None:
        """With nothing running, wait up to `gather_ms` after the first request for others arriving with it, so
        that their prompts are prefilled together (under the lock)."""
        if self._rows or not self.gather_s:
            return
        deadline = self._pending[0].enqueued + self.gather_s
        while len(self._pending) < self.max_streams and self._state != "stopped":
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self._cond.wait(left)

    def _admit(self) -> list[Stream]:
        """Waiting streams that get a slot now (under the lock); timed-out and cancelled ones end here."""
        joiners, now = [], time.perf_counter()
        while self._pending and len(self._rows) + len(joiners) < self.max_streams:
            stream = self._pending.popleft()
            if stream.cancelled:  # its client went away while it waited
                stream.put(END)
                continue
            waited = now - stream.enqueued
            if waited > self.queue_timeout_s:
                stream.put(Overloaded(f"The request waited {1000 * waited:.0f} ms for a free stream (limit "
                                      f"{1000 * self.queue_timeout_s:.0f} ms; {self.max_streams} streams busy).",
                                      "Retry later, or raise serve.max_streams / serve.llm_queue_timeout_s.",
                                      retry_after_s=1.0))
                continue
            stream.queue_s = waited
            joiners.append(stream)
        return joiners

    def _guarded(self, work: Any, streams: list[Stream]) -> None:
        """Run one prefill or step; if it fails, only its requests end (with GenerationFailed)."""
        try:
            work(streams)
        except Exception as exc:  # noqa: BLE001 - the engine keeps serving the other requests
            log.error("generation failed on %d stream(s)", len(streams), exc_info=exc)
            failed = GenerationFailed(f"Generation failed ({type(exc).__name__}: {first_line(exc)}).",
                                      "This is a bug or a broken model, not a problem with the request; the "
                                      "server log has the details. Retry.", retry_after_s=1.0)
            ids = {id(s) for s in streams}
            for stream in streams:
                stream.put(failed)
            keep = [i for i, r in enumerate(self._rows) if id(r.stream) not in ids]
            self._keep(keep)

    def _join(self, streams: list[Stream]) -> None:
        """Prefill the joiners' prompts together and merge them into the running batch."""
        import torch

        from modelfoundry.models.generation import TextStream, seeded_generator

        batch, logits = BatchCache.prefill(self.lm.model, [s.prompt_ids for s in streams], self.pad_id)
        context = self.lm.context_length
        rows = [_Row(s, TextStream(self.lm.tokenizer, s.params.stop, self.stop_ids),
                     min(s.params.max_new_tokens, context - len(s.prompt_ids)), seeded_generator(s.params.seed),
                     torch.tensor(s.prompt_ids) if s.params.repetition_penalty != 1.0 else None) for s in streams]
        if self._batch is None:
            self._batch = batch
        else:
            self._batch.merge(batch)
        self._rows = self._rows + rows
        self._advance(logits, len(self._rows) - len(rows))

    def _step(self, streams: list[Stream]) -> None:
        """One token for every active row: one batched forward over the cache."""
        self._advance(self._batch.step(self.lm.model), 0)

    def _advance(self, logits: torch.Tensor, first: int) -> None:
        """Pick the next token of rows `first:` from their (b, V) logits, hand out the text, drop finished rows."""
        import torch

        from modelfoundry.models.generation import next_tokens

        rows = self._rows[first:]
        params = [r.params for r in rows]
        if all(p.temperature == 0 and p.repetition_penalty == 1.0 for p in params):
            tokens = logits.argmax(-1)
        else:
            tokens = next_tokens(logits, params, [r.seen if r.seen is not None else logits.new_empty(0).long()
                                                  for r in rows], [r.generator for r in rows])
        self._batch.last[first:] = tokens
        now, keep, ended = time.perf_counter(), list(range(first)), []
        for k, (row, token) in enumerate(zip(rows, tokens.tolist())):
            stream = row.stream
            if stream.ttft_s is None:
                stream.ttft_s = now - stream.enqueued
                if self.on_first_token:
                    self.on_first_token(stream.queue_s or 0.0, stream.ttft_s)
            stream.completion_tokens += 1
            row.budget -= 1
            if row.seen is not None:
                row.seen = torch.cat([row.seen, tokens[k:k + 1]])
            piece = row.text.push(token)
            if not row.text.finished and row.budget <= 0:
                piece += row.text.flush()
            if piece:
                stream.put(piece)
            if row.text.finished:
                stream.finish_reason = row.text.finish_reason
                ended.append(stream)
            elif stream.cancelled:
                ended.append(stream)
            else:
                keep.append(first + k)
        self._count(len(rows), now)
        self._keep(keep)
        for stream in ended:  # told once it has left the batch: its answer never races the engine's counts
            stream.put(END)

    def _count(self, tokens: int, now: float) -> None:
        if self.on_tokens:
            self.on_tokens(tokens)
        since = now - (self._counted_at or now)
        self._counted_at = now
        if since > 0:
            self._tokens_per_s = 0.8 * self._tokens_per_s + 0.2 * tokens / since

    def _drop_cancelled(self) -> None:
        keep = [i for i, r in enumerate(self._rows) if not r.stream.cancelled]
        ended = [r.stream for r in self._rows if r.stream.cancelled]
        self._keep(keep)
        for stream in ended:
            stream.put(END)

    def _keep(self, keep: list[int]) -> None:
        """Only rows `keep` stay in the batch."""
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._batch = None
        else:
            self._batch.keep(keep)
