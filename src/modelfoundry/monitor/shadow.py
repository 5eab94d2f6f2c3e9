"""Shadow mode: a challenger (a registry alias, e.g. NAME@challenger) sees a copy of the served traffic as a server
extension; its predictions are measured against the champion's and logged, never returned.

Per batch, off the request path: the challenger runs on the batch's rows - the champion's model inputs as they are
when both share one preprocessing (a warm retrain keeps it), else the raw columns rebuilt (`columns.raw_frame`) and
checked again through the challenger's own input schema. Prometheus series, labelled by the shadow reference:
`foundry_shadow_agreement` (share of rows where both predict the same class over the last AGREEMENT_ROWS rows;
regression: rows within AGREE_STD target standard deviations), `foundry_shadow_mean_abs_diff` (regression, same
rows), `foundry_shadow_rows_total`, `foundry_shadow_errors_total`. Rows with a request id get the challenger's
prediction in the request log (`RequestLog.add_shadow`). The alias is resolved again every `serve.poll_s`: a moved
alias is followed (and the window starts again). Whatever fails is counted and logged; it never fails a request.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelfoundry.errors import FoundryError

if TYPE_CHECKING:
    from modelfoundry.config import ServeConfig
    from modelfoundry.data.input_schema import InputSchema
    from modelfoundry.monitor.requestlog import RequestLog
    from modelfoundry.serve.extensions import BatchRecord, ServerContext
    from modelfoundry.serve.store import LoadedModel

log = logging.getLogger(__name__)
AGREEMENT_ROWS = 1000  # the sliding window of the agreement gauges
RETRY_S = 5.0  # a challenger that failed to load is tried again after this long (or poll_s)
AGREE_STD = 0.1  # regression: two predictions agree within this many target standard deviations


class Shadow:
    """A server extension running the challenger `ref` on every answered batch (see the module docstring).

    Args:
        ref: the challenger: NAME@ALIAS (followed), NAME/VERSION, or a run directory.
        uri: the registry it is looked up in (None: as the server's).
        config: the server's settings: `poll_s` (alias re-resolution) and `backend` (onnx or torch).
        log: the request log the shadow predictions of rows with ids are written to (None: not logged).
    """

    name = "shadow"

    def __init__(self, ref: str, uri: str | None, config: ServeConfig, log: RequestLog | None = None):
        self.ref, self.uri, self.config, self.log = str(ref), uri, config, log
        self.poll_s = float(config.poll_s)
        self.model: LoadedModel | None = None
        self.schema: InputSchema | None = None
        self._store: Any = None
        self._checked_at = 0.0
        self._agree: collections.deque[bool] = collections.deque(maxlen=AGREEMENT_ROWS)
        self._diffs: collections.deque[float] = collections.deque(maxlen=AGREEMENT_ROWS)
        self._champions: dict[str, tuple[dict[str, Any], InputSchema]] = {}  # champion run dir -> (desc, schema)
        self._lock = threading.Lock()
        from prometheus_client import CollectorRegistry

        self._series(CollectorRegistry())  # its own until setup() puts them in the app's

    # ------------------------------------------------------------------------------ server protocol
    def setup(self, context: ServerContext) -> None:
        """The Prometheus series, in the app's registry."""
        self._series(context.registry)

    def _series(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge

        self.agreement = Gauge("foundry_shadow_agreement", f"Share of the last {AGREEMENT_ROWS} shadowed rows where "
                               "the challenger predicts what the champion answered.", ["shadow"], registry=registry)
        self.mean_abs_diff = Gauge("foundry_shadow_mean_abs_diff", "Regression: mean absolute difference of challenger "
                                   f"and champion over the last {AGREEMENT_ROWS} rows.", ["shadow"], registry=registry)
        self.rows = Counter("foundry_shadow_rows", "Rows the challenger was run on.", ["shadow"], registry=registry)
        self.errors = Counter("foundry_shadow_errors", "Shadow batches that failed (the answers were unaffected).",
                              ["shadow"], registry=registry)
        for counter in (self.rows, self.errors):
            counter.labels(self.ref)  # shown at 0 from the start, not only after the first row or error

    async def start(self) -> None:
        """Load the challenger (in a thread: a registry download may take a while); a failure is counted, and
        tried again at the next poll."""
        import asyncio

        await asyncio.to_thread(self._refresh, True)

    def on_batch(self, batch: BatchRecord) -> None:
        """Run the challenger on the batch, update the agreement, log its predictions; never raises."""
        try:
            self._refresh(False)
            if self.model is None:
                return
            outputs = self._predict(batch)
            self._compare(batch, outputs)
        except Exception:  # noqa: BLE001 - a failing shadow is counted and logged, never a request's failure
            log.exception("shadow %s failed on a batch of %d rows", self.ref, len(batch.outputs))
            self._count_error()

    # ------------------------------------------------------------------------------------ internals
    def _refresh(self, first: bool) -> None:
        """Load the challenger, or load it again when its alias moved (checked every poll_s)."""
        now = time.monotonic()
        if not first and self.model is not None and (self.poll_s <= 0 or now - self._checked_at < self.poll_s):
            return
        if not first and self.model is None and now - self._checked_at < max(self.poll_s, RETRY_S):
            return  # a failed load is tried again at the poll period, not on every batch
        self._checked_at = now
        try:
            from modelfoundry.serve.store import store_for

            if self._store is None:
                self._store = store_for(self.ref, self.uri, backend=self.config.backend)
            resolve = getattr(self._store, "resolve", None)  # only a registry reference can move
            if self.model is not None and (not callable(resolve) or resolve()[1] == self.model.version):
                return
            self._load(self._store.load())
        except FoundryError as exc:  # an alias moved away, a store down: one line, counted, tried again
            log.warning("shadow %s could not be loaded: %s", self.ref, exc.message)
            self._count_error()
        except Exception:  # noqa: BLE001 - a broken challenger: counted, tried again
            log.exception("shadow %s could not be loaded", self.ref)
            self._count_error()

    def _load(self, loaded: LoadedModel) -> None:
        from modelfoundry.data.input_schema import InputSchema

        if loaded.backend is None:
            raise ValueError(f"the shadow {self.ref} is a language model; only classifiers and regressors are shadowed")
        self.schema = InputSchema(loaded.backend.desc, "warn")
        with self._lock:
            self.model = loaded
            self._agree.clear()
            self._diffs.clear()
        log.info("shadow %s: serving version %s in the shadow", self.ref, loaded.version)

    def _predict(self, batch: BatchRecord) -> np.ndarray:
        """The challenger's outputs on the batch: probabilities (N, K) or values (N,) in the target's units."""
        backend = self.model.backend
        if backend.task != batch.task:
            raise ValueError(f"the shadow {self.ref} is a {backend.task} model, the served one a {batch.task} model")
        desc, schema = self._champion(batch)
        if _same_preprocessing(desc, backend.desc):
            return backend.predict_inputs(batch.rows.inputs)
        from modelfoundry.monitor.columns import raw_frame

        frame = raw_frame(schema, batch.rows)
        missing = [c for c in self.schema.columns if c not in frame.columns]
        if missing:
            raise ValueError(f"the shadow {self.ref} reads columns the served rows do not keep: {missing[:5]}")
        return backend.predict_inputs(self.schema.from_frame(frame, "the shadowed rows").inputs)

    def _champion(self, batch: BatchRecord) -> tuple[dict[str, Any], InputSchema]:
        """The served model's preprocessing description and input schema (read once per run directory)."""
        run_dir = batch.model.run_dir
        if run_dir not in self._champions:
            from modelfoundry.artifacts.rundir import RunDir
            from modelfoundry.data.input_schema import InputSchema
            from modelfoundry.storage import read_json

            desc = read_json(RunDir(Path(run_dir)).preprocess)
            self._champions[run_dir] = (desc, InputSchema(desc, "warn"))
        return self._champions[run_dir]

    def _compare(self, batch: BatchRecord, outputs: np.ndarray) -> None:
        from modelfoundry.monitor.columns import prediction_values

        backend = self.model.backend
        served = prediction_values(batch.task, batch.outputs, batch.labels, batch.threshold)
        shadow = prediction_values(batch.task, outputs, backend.labels if batch.task == "classification" else None,
                                   getattr(backend, "threshold", None))
        with self._lock:
            if batch.task == "classification":
                self._agree.extend((served == shadow).tolist())
            else:
                diff = np.abs(served - shadow)
                scale = float(backend.desc.get("target", {}).get("std") or 1.0)
                self._agree.extend((diff <= AGREE_STD * scale).tolist())
                self._diffs.extend(diff.tolist())
                self.mean_abs_diff.labels(self.ref).set(float(np.mean(self._diffs)))
            self.agreement.labels(self.ref).set(float(np.mean(self._agree)))
        self.rows.labels(self.ref).inc(len(shadow))
        if self.log is not None and any(batch.ids):
            ids = batch.row_ids()
            kept = [i for i, row_id in enumerate(ids) if row_id is not None]
            if batch.task == "classification":  # the label as the model knows it (ints stay ints), as logged
                values = [backend.labels[k] for k in np.argmax(outputs[kept], axis=1)] if kept else []
            else:
                values = shadow[kept].tolist()
            self.log.add_shadow([ids[i] for i in kept], [_plain(v) for v in values])

    def _count_error(self) -> None:
        self.errors.labels(self.ref).inc()

    def agreement_now(self) -> float | None:
        """The current agreement (None before any row was shadowed)."""
        with self._lock:
            return float(np.mean(self._agree)) if self._agree else None


def _same_preprocessing(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two portable descriptions turn rows into the same model inputs (the target part aside)."""
    return {k: v for k, v in a.items() if k != "target"} == {k: v for k, v in b.items() if k != "target"}


def _plain(value: Any) -> Any:
    """A label or value as a plain JSON value (numpy scalars as Python numbers)."""
    return value.item() if isinstance(value, np.generic) else value
