"""The request log and feedback in the server: the `FeedbackLog` server extension.

    app = create_app(settings, store, extensions=[FeedbackLog(config.monitor)])

A share of the requests (`monitor.log.sample`) gets an id; their rows ("<id>-<row>", answered as "ids") are
written to the request log (monitor/requestlog.py) by the thread that delivers batches, never the request's:
raw inputs (hashed / excluded as `monitor.log` says), the prediction and, when the run has a reference profile
with an out-of-distribution scorer, each row's OOD score.

    POST /feedback   {"id": "<row id>", "label": <true label>}  or  {"feedback": [{"id", "label"}, ...]} (<= 1000)

stores the true labels (behind the API key and rate limit of the model routes). All or nothing: an unknown id is
a 404 naming it, a label of the wrong type a 422 listing the model's labels; nothing is stored then. Feedback
sent right after its prediction waits (at most SETTLE_S) for the row to be written.

Prometheus: foundry_feedback_accuracy (classification) or foundry_feedback_mae (regression) over the latest
`monitor.feedback_window` labelled rows of the served version, foundry_feedback_rows (how many rows that is),
read from the log (so every worker process reports the same; refreshed every REFRESH_S and after each feedback),
and foundry_feedback_total{outcome}: correct / incorrect (classification), labelled (regression), unknown_id,
invalid (per process).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelfoundry.errors import DataError, FoundryError
from modelfoundry.monitor.requestlog import RequestLog, frame_records

if TYPE_CHECKING:
    from modelfoundry.config.monitor import MonitorConfig
    from modelfoundry.serve.extensions import BatchRecord, ServerContext

log = logging.getLogger(__name__)
MAX_FEEDBACK = 1000  # labels per request
MAX_ID_CHARS = 80
SETTLE_S = 2.0  # how long feedback for a row not yet in the log waits for the batches being written
REFRESH_S = 5.0  # how often the live metric is read from the log (other workers' feedback included)
BODY_HINT = ('Send {"id": "<a row id from the prediction\'s \\"ids\\">", "label": <the true label>}, or '
             '{"feedback": [{"id": ..., "label": ...}, ...]} (at most 1000).')


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

        async def feedback(request: Request) -> dict[str, Any]:
            from modelfoundry.serve.payloads import parse_json

            try:
                items = feedback_items(parse_json(await request.body(), request.headers.get("content-type")))
                model = context.served.get()
                for i, (_, label) in enumerate(items):
                    check_label(label, model.backend.task, model.backend.labels, f"feedback.{i}.label"
                                if len(items) > 1 else "label")
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
            name, about = ("foundry_feedback_accuracy", "Accuracy") if model.backend.task == "classification" \
                else ("foundry_feedback_mae", "Mean absolute error")
            Gauge(name, f"{about} on the latest monitor.feedback_window labelled rows of the served version.",
                  registry=self.context.registry).set_function(lambda: self.live[0])
            Gauge("foundry_feedback_rows", "Labelled rows the live feedback metric is computed on.",
                  registry=self.context.registry).set_function(lambda: self.live[1])
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_every(REFRESH_S))

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
            self._refresher = None

    def on_batch(self, batch: BatchRecord) -> None:
        """Write the batch's rows that have ids (one transaction), in the extensions' thread."""
        import numpy as np

        row_ids = batch.row_ids()
        keep = [i for i, rid in enumerate(row_ids) if rid is not None]
        if not keep:
            return
        rows, outputs = batch.rows, batch.outputs
        if len(keep) < len(row_ids):
            rows, outputs = rows[np.asarray(keep)], outputs[np.asarray(keep)]
        schema, scorer = self._version(batch)
        inputs = raw_records(schema, rows) if schema is not None else [{}] * len(keep)
        if batch.task == "classification":
            predictions = [batch.labels[i] for i in outputs.argmax(1)]
        else:
            predictions = [float(v) for v in outputs]
        scores = _ood_scores(scorer, rows) if scorer is not None else None
        self.log.add(batch.model.name, batch.model.version, [row_ids[i] for i in keep], inputs, predictions,
                     time=batch.answered_at, ood_scores=scores)

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
        missing = [rid for rid in ids if rid not in found]
        if missing:
            self.outcomes.labels("unknown_id").inc(len(missing))
            raise RowNotFound(*self._missing(model, missing))
        await asyncio.to_thread(self.log.label, dict(items))
        counts = {"correct": 0, "incorrect": 0, "labelled": 0}
        for rid, label in items:
            prediction = found[rid][1]
            outcome = "labelled" if model.backend.task != "classification" else \
                "correct" if _same(prediction, label) else "incorrect"
            counts[outcome] += 1
            self.outcomes.labels(outcome).inc()
        await asyncio.to_thread(self.refresh)
        answer = {"accepted": len(items), "model": model.name, "version": model.version}
        return answer | ({"correct": counts["correct"]} if model.backend.task == "classification" else {})

    def _missing(self, model: Any, missing: list[str]) -> tuple[str, str]:
        from modelfoundry.redact import redact

        shown = ", ".join(repr(m[:MAX_ID_CHARS]) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
        single = [m for m in missing if "-" not in m]
        guess = f" Row ids end in '-<row>': for the first row of request '{single[0]}' send '{single[0]}-0'." \
            if single else ""
        return (f"No logged row of model '{model.name}' has the id {shown} ({len(missing)} of the feedback's ids); "
                "nothing was stored.",
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
        elif model.backend.task == "classification":
            self.live = (sum(_same(p, lab) for p, lab in pairs) / len(pairs), len(pairs))
        else:
            self.live = (sum(abs(float(p) - float(lab)) for p, lab in pairs) / len(pairs), len(pairs))
        return self.live

    async def _refresh_every(self, seconds: float) -> None:
        while True:
            try:
                await asyncio.to_thread(self.refresh)
            except Exception as exc:  # noqa: BLE001 - the log may be unreachable for a while: keep serving
                log.warning("could not read the live feedback metric from the request log: %s", exc)
            await asyncio.sleep(seconds)

    def _version(self, batch: BatchRecord) -> tuple[Any, Any]:
        """(InputSchema, OOD scorer or None) of the version that answered `batch`, cached per version."""
        key = (batch.model.name, batch.model.version)
        if key not in self._versions:
            current = self.context.served.current if self.context else None
            if current is None or (current.name, current.version) != key:
                return None, None  # a version no longer served: log its rows without inputs
            self._versions[key] = (current.schema, _scorer(batch.model.run_dir) if self.config.ood.enabled else None)
        return self._versions[key]


def feedback_items(payload: Any) -> list[tuple[str, Any]]:
    """The (row id, label) pairs of a feedback body; a DataError (422) saying what is wrong otherwise."""
    if not isinstance(payload, dict):
        raise DataError(f"The feedback body must be a JSON object, not {_kind(payload)}.", BODY_HINT)
    if "feedback" in payload:
        extra = sorted(str(k)[:40] for k in payload if k != "feedback")
        items = payload["feedback"]
        if extra:
            raise DataError(f"body: unknown field(s) {', '.join(map(repr, extra[:5]))} beside 'feedback'.", BODY_HINT)
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_FEEDBACK:
            what = f"{len(items)} items" if isinstance(items, list) else _kind(items)
            raise DataError(f"feedback: a list of 1 to {MAX_FEEDBACK} items is required, got {what}.", BODY_HINT)
        where = "feedback.{}"
    else:
        items, where = [payload], "body"
    pairs, seen = [], set()
    for i, item in enumerate(items):
        place = where.format(i)
        if not isinstance(item, dict) or set(item) != {"id", "label"}:
            got = f"the fields {', '.join(sorted(repr(str(k)[:40]) for k in item)[:5]) or 'none'}" \
                if isinstance(item, dict) else _kind(item)
            raise DataError(f"{place}: an object with exactly 'id' and 'label' is required, got {got}.", BODY_HINT)
        rid = item["id"]
        if not isinstance(rid, str) or not 0 < len(rid) <= MAX_ID_CHARS:
            raise DataError(f"{place}.id: a row id (a string of 1 to {MAX_ID_CHARS} characters) is required, got "
                            f"{_kind(rid) if not isinstance(rid, str) else f'{len(rid)} characters'}.", BODY_HINT)
        if rid in seen:
            raise DataError(f"{place}.id: '{rid}' appears twice in the feedback.", "Send one label per row id.")
        seen.add(rid)
        pairs.append((rid, item["label"]))
    return pairs


def check_label(label: Any, task: str, labels: list[Any] | None, where: str) -> None:
    """A DataError (422) unless `label` is one of the model's class labels, with their JSON type
    (classification), or a finite number (regression)."""
    if task == "classification":
        if not any(_same(label, known) for known in labels):
            shown = ", ".join(_json(v) for v in labels[:20]) + (", ..." if len(labels) > 20 else "")
            raise DataError(f"{where}: {_json(label)[:60]} is not one of the model's labels: {shown}.",
                            "Send one of these labels with the same JSON type (e.g. 1, not \"1\").")
        return
    finite = isinstance(label, (int, float)) and not isinstance(label, bool)
    try:
        finite = finite and math.isfinite(float(label))
    except OverflowError:
        finite = False
    if not finite:
        raise DataError(f"{where}: a finite number is required for a regression model, got {_json(label)[:60]}.",
                        "Send the true value as a JSON number.")


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same JSON type (True is not 1, "1" is not 1; 1 and 1.0 are both numbers)."""
    number = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, number) and isinstance(b, number):
        return a == b
    return type(a) is type(b) and a == b


def _json(value: Any) -> str:
    import json

    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def raw_records(schema: Any, rows: Any) -> list[dict[str, Any]]:
    """The raw input columns of `rows` as one {column: value} per row (None where missing), as
    `columns.raw_frame` gives them; tabular rows straight from their arrays (a DataFrame costs ~1 ms a batch)."""
    import numpy as np

    if schema.series or schema.image:
        from modelfoundry.monitor.columns import raw_frame

        return frame_records(raw_frame(schema, rows))
    names = [*schema.num_columns, *schema.cat_columns]
    numeric = rows.numeric.astype(object)  # (N, Fn) Python floats
    numeric[np.isnan(rows.numeric)] = None
    return [dict(zip(names, a + b)) for a, b in zip(numeric.tolist(), rows.texts.tolist())]


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


def _ood_scores(scorer: Any, rows: Any) -> list[float] | None:
    from modelfoundry.monitor.ood import ood_space

    space = ood_space(rows.inputs)
    return None if space is None else scorer.score(space).tolist()
