"""The model being served, and how checked requests run on it, alone or batched.

A request is checked and converted on its own (`Job`, made by `prepare`) before it may join a batch, so
nothing in one request's data can fail another's. A batch is one model call over the joined rows plus one
vectorised pass for input warnings; if the model call itself fails, each request is retried alone, and an
unexpected error becomes a JSON 500 for the requests it hit, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from modelfoundry.data.input_schema import CheckedRows, InputSchema
from modelfoundry.errors import DataError, FoundryError, ModelNotFound, first_line
from modelfoundry.serve.batching import DynamicBatcher
from modelfoundry.serve.store import LoadedModel

if TYPE_CHECKING:
    from modelfoundry.serve.extensions import Extensions

log = logging.getLogger(__name__)
THREAD_CELLS = 16_384  # requests with more values (rows x columns) are checked in a worker thread, off the loop


@dataclass
class Job:
    """One request's rows, checked against `model`'s inputs; `check` redoes it for another model version.
    `id` is the request's id when it got one (extensions.py, id_share); `offset` the index of the first row here
    in the whole request (the batcher runs a request larger than a batch in slices)."""

    model: LoadedModel
    rows: CheckedRows
    check: Callable[[InputSchema], CheckedRows]
    id: str | None = None
    offset: int = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, part: slice) -> Job:  # the batcher runs a request larger than a batch in slices
        return Job(self.model, self.rows[part], lambda schema: self.check(schema)[part], self.id,
                   self.offset + (part.start or 0))


@dataclass
class Answer:
    """A request's outputs and its per-row input warnings (None when no row has any)."""

    output: np.ndarray
    warnings: list[list[dict[str, Any]]] | None

    @staticmethod
    def join(parts: Sequence[Answer]) -> Answer:
        warned = any(p.warnings is not None for p in parts)
        return Answer(np.concatenate([p.output for p in parts]),
                      [w for p in parts for w in (p.warnings or [[]] * len(p.output))] if warned else None)


async def prepare(model: LoadedModel, check: Callable[[InputSchema], CheckedRows], rows: int,
                  request_id: str | None = None) -> Job:
    """Check and convert one request for `model` (its id: `request_id`); any failure is this request's 4xx alone."""
    try:
        if rows * len(model.schema.columns) > THREAD_CELLS:
            checked = await asyncio.to_thread(check, model.schema)
        else:
            checked = check(model.schema)
    except FoundryError:
        raise
    except Exception as exc:  # noqa: BLE001 - an input nobody foresaw: still the request's fault, not a 500
        log.warning("unreadable request values: %r", exc)
        raise DataError(f"The request's values could not be read ({first_line(exc)}).",
                        "Send one JSON number, string or null per column and row.") from None
    return Job(model, checked, check, request_id)


class ServedModel:
    """The model being served. `predict` goes through the dynamic batcher (or straight to the model) and
    returns the answer with the model that produced it, so a hot switch never mixes versions."""

    def __init__(self, count_warnings: Callable[[dict[tuple[str, str], int]], None] | None = None) -> None:
        self.current: LoadedModel | None = None
        self.batcher: DynamicBatcher | None = None
        self.count_warnings = count_warnings
        self.extensions: Extensions | None = None  # see extensions.py; None: no record is built

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

    async def predict(self, job: Job) -> tuple[Answer, LoadedModel]:
        """The job's answer and the model that gave it; raises the job's own error."""
        if self.batcher is not None:
            answer, model = await self.batcher.submit(job)
        else:
            answers, model = await self.run_batch([job])
            answer = answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer, model

    async def run_batch(self, jobs: list[Job]) -> tuple[list[Answer | FoundryError], LoadedModel]:
        """One model call for all jobs' rows; each slot holds the job's Answer or its own error."""
        model = self.get()
        return await self._run(model, jobs), model

    async def _run(self, model: LoadedModel, jobs: list[Job]) -> list[Answer | FoundryError]:
        slots: list[Any] = [None] * len(jobs)
        live: list[tuple[int, CheckedRows]] = []
        for k, job in enumerate(jobs):
            try:  # checked for an older version before a hot switch: check again for this one
                live.append((k, job.rows if job.model is model else job.check(model.schema)))
            except Exception as exc:  # noqa: BLE001 - only this job fails
                slots[k] = _as_error(exc, model)
        if not live:
            return slots
        rows = CheckedRows.join([r for _, r in live])
        try:
            output = model.backend.predict_inputs(rows.inputs) if model.inline else \
                await asyncio.to_thread(model.backend.predict_inputs, rows.inputs)
        except Exception as exc:  # noqa: BLE001 - retry each job alone, so only a job that fails alone fails
            if len(live) == 1:
                slots[live[0][0]] = _as_error(exc, model)
                return slots
            alone = await asyncio.gather(*(self._run(model, [jobs[k]]) for k, _ in live))
            for (k, _), answers in zip(live, alone):
                slots[k] = answers[0]
            return slots
        warnings, counts = model.schema.warnings(rows)  # one vectorised pass for the whole batch
        if counts and self.count_warnings:
            self.count_warnings(counts)
        start = 0
        for k, part in live:
            stop = start + len(part)
            out, flagged = output[start:stop], warnings[start:stop] if warnings else None
            slots[k] = Answer(out, flagged if flagged and any(flagged) else None) if np.isfinite(out).all() else \
                FoundryError(f"The model gave a non-finite output for this request (model {model.name} "
                             f"v{model.version}).", "The inputs were valid; the model itself is broken. Check "
                             "its training run, or roll back to another version.")
            start = stop
        if self.extensions is not None:
            _publish(self.extensions, model, [jobs[k] for k, _ in live], [len(part) for _, part in live],
                     [slots[k] for k, _ in live], rows, output, warnings)
        return slots


def _publish(extensions: Extensions, model: LoadedModel, jobs: list[Job], sizes: list[int], answers: list[Any],
             rows: CheckedRows, output: np.ndarray, warnings: list[list[dict[str, Any]]] | None) -> None:
    """Hand the rows that got an answer (not those whose output was non-finite) to the extensions."""
    answered = [isinstance(a, Answer) for a in answers]
    if not any(answered):
        return
    if not all(answered):
        keep = np.repeat(answered, sizes)  # (N,) bool
        rows, output = rows[keep], output[keep]
        warnings = [w for w, kept in zip(warnings, keep) if kept] if warnings else None
        sizes = [size for size, kept in zip(sizes, answered) if kept]
        jobs = [job for job, kept in zip(jobs, answered) if kept]
    ids = [job.id for job in jobs] if any(job.id for job in jobs) else ()
    extensions.publish(model, rows, output, warnings if warnings and any(warnings) else None, sizes,
                       ids=ids, offsets=[job.offset for job in jobs] if ids else ())


def _as_error(exc: BaseException, model: LoadedModel) -> FoundryError:
    if isinstance(exc, FoundryError):
        return exc
    log.error("model %s v%s failed on a batch", model.name, model.version, exc_info=exc)
    return FoundryError(f"The model failed while predicting ({type(exc).__name__}: {first_line(exc)}).",
                        "This is a bug or a broken model, not a problem with the request; the server log has "
                        "the details.")
