"""In-server drift and out-of-distribution monitoring: the `DriftMonitor` server extension.

    app = create_app(settings, store, extensions=[DriftMonitor(config.monitor)])

Every answered batch goes into the open window of the version that answered it (monitor/window.py): on the event
loop, after the answers were sent, a few list appends (serve/extensions.py calls an async on_batch there, with no
thread hop per batch). When a window closes, the monitor's own thread (never a request's) turns its rows into
column values, compares each column and the predictions with the version's reference profile (`drift.compare`:
KS / chi-squared up to `large_sample` rows, Wasserstein / Jensen-Shannon above, or the configured test;
Benjamini-Hochberg over the window's p-values), updates the alert rule (`Alerts`: `patience` consecutive drifted
windows) and scores every row's Mahalanobis distance (one matrix product per window).

A hot switch to another version starts a fresh window against that version's own reference (each reference is
read once, from the run directory the version was served from). A model without a reference (a run older
than monitoring, a time series) is served as before: the monitor endpoint says why and how to get one, and
no drift series appear.

    GET /v2/models/{name}/monitor      the reference, the open window, the last tested windows, the alerts,
                                       the test per column and why it was chosen, the OOD share (JSON)

Prometheus (read from the monitor's state when scraped; nothing is done per batch for them):
    foundry_drift_score{column,test}   foundry_drift_p_value{column,test} (p-value tests)
    foundry_drift_alert{column} (0/1)  foundry_dataset_drift (0/1)       foundry_drift_windows_total
    foundry_ood_rows_total             foundry_ood_outliers_total         foundry_ood_outlier_share (last window)
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any


from modelfoundry.monitor.window import ClosedWindow, Window

if TYPE_CHECKING:
    from modelfoundry.config.monitor import MonitorConfig
    from modelfoundry.data.input_schema import CheckedRows
    from modelfoundry.monitor.drift import WindowDrift
    from modelfoundry.monitor.profile import Reference
    from modelfoundry.serve.extensions import BatchRecord, ModelIdentity

log = logging.getLogger(__name__)
STOP_S = 10.0  # at shutdown, how long windows still being tested may take
NO_REFERENCE_HINT = ("Train it again with this version of modelfoundry (`foundry run CONFIG.yaml`, or `foundry "
                     "retrain MODEL --data new.csv`): training saves model/reference.json, which drift monitoring "
                     "compares served data with. `foundry monitor MODEL --data new.csv` needs it too.")


@dataclass
class Watched:
    """The version being monitored: its reference, its open window and its tested windows."""

    identity: ModelIdentity
    task: str
    labels: list[Any] | None
    schema: Any  # its InputSchema (data/input_schema.py)
    reference: Reference | None
    why_none: str  # why there is no reference ('' when there is one)
    window: Window
    alerts: Any  # drift.Alerts
    history: deque = field(default_factory=deque)  # closed windows, newest last (endpoint.window_json reads them)
    last: WindowDrift | None = None
    alerting: dict[str, bool] = field(default_factory=dict)
    ood_share: float | None = None
    threshold: dict[str, Any] | None = None  # its tuned decision threshold: the prediction column is its decision


class DriftMonitor:
    """Drift and OOD monitoring of the served model (see the module docstring); a server extension."""

    name = "drift"

    def __init__(self, config: MonitorConfig):
        self.config = config
        self.context: Any = None
        self.watched: Watched | None = None
        self.windows = self.ood_rows = self.ood_outliers = 0  # totals over the process's life (counters)
        self._lock = threading.Lock()  # the watched version and its window: on_batch's thread vs the endpoint
        self._testing = threading.Lock()  # one window tested at a time, in order
        self._references: dict[tuple[str, str, str | None], tuple[Reference | None, str]] = {}
        self._pool: ThreadPoolExecutor | None = None  # tests closed windows (see _tests)

    # --------------------------------------------------------------------------------- server hooks
    def setup(self, context: Any) -> None:
        """Add GET /v2/models/{name}/monitor (behind the guard) and the drift series to the server."""
        from fastapi.responses import JSONResponse

        from modelfoundry.monitor.endpoint import Collector, finite

        self.context = context
        context.registry.register(Collector(self))

        @context.app.get("/v2/models/{name}/monitor", dependencies=context.guard)
        async def monitor(name: str) -> JSONResponse:
            model = context.served.get(name)  # another name: 404, as the other routes answer
            watched = self.watched
            if watched is not None and watched.window.due(time.time()):
                await asyncio.wrap_future(self._tests().submit(self.close_due))  # tested off the event loop
            return JSONResponse(finite(self.report(model)))

    async def start(self) -> None:
        """Read the served version's reference before the first request asks for OOD scores."""
        current = getattr(getattr(self.context, "served", None), "current", None)
        if current is not None:
            await asyncio.to_thread(self.reference, current.name, current.version, current.run_dir)

    async def stop(self) -> None:
        """Let the windows being tested finish (for at most STOP_S), then end the testing thread."""
        if self._pool is not None:
            await asyncio.to_thread(self.settle, STOP_S)
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def on_batch(self, batch: BatchRecord) -> None:
        """Add the batch to its version's window, on the event loop: a few list appends, no thread hop per batch
        (each hop is a GIL handoff between the loop and a worker thread). A window it closes is tested in the
        monitor's own thread; a batch of a version not seen before looks its reference up in a thread too."""
        watched = self.watched
        if watched is None or (watched.identity.name, watched.identity.version) != (batch.model.name,
                                                                                    batch.model.version):
            watched = await asyncio.to_thread(self._watching, batch)
        if watched is None or watched.reference is None:
            return
        with self._lock:
            closed = watched.window.add(batch.rows, batch.outputs, batch.answered_at)
        for window in closed:
            self._tests().submit(self._test, watched, window)

    def settle(self, timeout_s: float = 30.0) -> bool:
        """Wait (at most timeout_s) until the windows closed so far are tested (tests, shutdown); True if so."""
        from concurrent.futures import TimeoutError as Late

        if self._pool is not None:
            try:
                self._pool.submit(lambda: None).result(timeout_s)
            except Late:
                return False
        return True

    def close_due(self, now: float | None = None) -> None:
        """Close and test the open time window if its `seconds` have passed (the endpoint's read)."""
        watched, now = self.watched, time.time() if now is None else now
        if watched is None:
            return
        with self._lock:
            if not watched.window.due(now):
                return
            window = watched.window.close(now, "seconds")
        self._test(watched, window)

    def _tests(self) -> ThreadPoolExecutor:
        """The one thread that tests closed windows, in the order they closed."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="foundry-drift")
        return self._pool

    def row_scores(self, model: Any, rows: CheckedRows) -> dict[str, list]:
        """Per-row OOD scores for a request that asked ({"ood": true}): one matrix product. None per row when
        the model has no OOD scorer (no reference, OOD off, or a model reading only tokens)."""
        from modelfoundry.monitor.ood import ood_space

        reference, _ = self.reference(model.name, model.version, model.run_dir)
        scorer = reference.ood if reference is not None and self.config.ood.enabled else None
        space = ood_space(rows.inputs) if scorer is not None else None
        if space is None:
            return {"ood": [None] * len(rows)}
        scores, threshold = scorer.score(space), float(scorer.threshold_)
        return {"ood": [{"score": round(float(s), 4), "threshold": round(threshold, 4), "outlier": bool(s > threshold)}
                        for s in scores]}

    # ------------------------------------------------------------------------------------ references
    def reference(self, name: str, version: str, run_dir: str | Path | None) -> tuple[Reference | None, str]:
        """The version's reference (read once, then cached) and, when there is none, why."""
        key = (name, version, str(run_dir) if run_dir is not None else None)
        if key not in self._references:
            self._references[key] = _read_reference(run_dir)
        return self._references[key]

    def _watching(self, batch: BatchRecord) -> Watched | None:
        """The watched version for this batch: a new version starts afresh; a late batch of an older one is
        dropped (None)."""
        identity, watched = batch.model, self.watched
        if watched is not None and (watched.identity.name, watched.identity.version) == (identity.name,
                                                                                         identity.version):
            return watched
        current = getattr(getattr(self.context, "served", None), "current", None)
        if current is None or current.version != identity.version:
            return None  # answered by a version no longer served (a hot switch happened meanwhile)
        from modelfoundry.monitor.drift import Alerts

        run_dir = getattr(identity, "run_dir", None) or current.run_dir
        reference, why = self.reference(identity.name, identity.version, run_dir)
        if reference is None and current.schema is not None and current.schema.series:
            why = "time series models are not monitored for drift yet"
        watched = Watched(identity, batch.task, batch.labels, current.schema, reference, why,
                          Window(self.config.window), Alerts(self.config.drift.patience),
                          deque(maxlen=self.config.window.history), threshold=batch.threshold)
        with self._lock:
            self.watched = watched
        log.info("drift monitoring of %s v%s %s", identity.name, identity.version,
                 "started" if reference is not None else f"off: {why}")
        return watched

    # --------------------------------------------------------------------------------------- testing
    def _test(self, watched: Watched, window: ClosedWindow) -> None:
        """Compare a closed window with the reference, update the alerts and count its OOD rows; a failure is
        logged (the window is lost), never raised into the server."""
        try:
            self._run_test(watched, window)
        except Exception:  # noqa: BLE001 - monitoring must never take the server down
            log.exception("drift monitor: testing a window of %d rows failed", window.count)

    def _run_test(self, watched: Watched, window: ClosedWindow) -> None:
        with self._testing:
            if not window.tested:
                entry = {"rows": window.count, "started": window.started, "ended": window.ended, "tested": False,
                         "note": window.note(self.config.window.min_rows)}
                with self._lock:
                    watched.history.append(entry)
                return
            drift = self._compare(watched, window)
            alerting = watched.alerts.update(drift)
            outliers = self._outliers(watched.reference, window.rows)
            entry = {"drift": drift, "tested": True, "alerts": sorted(c for c, on in alerting.items() if on),
                     "ood_share": outliers / window.count if outliers is not None else None}  # JSON when read
            with self._lock:
                watched.history.append(entry)
                watched.last, watched.alerting = drift, alerting
                watched.ood_share = entry["ood_share"]
                self.windows += 1
                if outliers is not None:
                    self.ood_rows += window.count
                    self.ood_outliers += outliers

    def _compare(self, watched: Watched, window: ClosedWindow) -> WindowDrift:
        from modelfoundry.monitor.columns import PREDICTION, column_values, prediction_values
        from modelfoundry.monitor.drift import compare

        current = column_values(watched.schema, window.rows)
        if watched.reference.prediction is not None:
            current[PREDICTION] = prediction_values(watched.task, window.outputs, watched.labels, watched.threshold)
        return compare(watched.reference, current, self.config.drift, window.count, window.started, window.ended)

    def _outliers(self, reference: Reference, rows: CheckedRows) -> int | None:
        """How many of the window's rows are out of distribution (None: no OOD scorer for this model)."""
        from modelfoundry.monitor.ood import ood_space

        if not self.config.ood.enabled or reference.ood is None:
            return None
        space = ood_space(rows.inputs)
        return None if space is None else int((reference.ood.score(space) > reference.ood.threshold_).sum())

    # ---------------------------------------------------------------------------------------- report
    def snapshot(self, now: float) -> dict[str, Any] | None:
        """A consistent copy of the watched version's state (None before the first batch)."""
        with self._lock:
            watched = self.watched
            if watched is None:
                return None
            return {"version": watched.identity.version, "reference": watched.reference,
                    "why_none": watched.why_none, "last": watched.last, "alerting": dict(watched.alerting),
                    "history": list(watched.history), "window": watched.window.state(now),
                    "ood_share": watched.ood_share, "windows": self.windows, "ood_rows": self.ood_rows,
                    "ood_outliers": self.ood_outliers}

    def report(self, model: Any) -> dict[str, Any]:
        """The monitor endpoint's JSON for the served `model` (a LoadedModel)."""
        from modelfoundry.monitor.endpoint import model_report

        return model_report(self, model)


def _read_reference(run_dir: str | Path | None) -> tuple[Reference | None, str]:
    """The run's reference profile, or None and why (no run directory, none saved, unreadable)."""
    from modelfoundry.monitor.profile import load_reference

    if run_dir is None:
        return None, "the served model has no run directory to read model/reference.json from"
    try:
        reference = load_reference(Path(run_dir))
    except Exception as exc:
        log.warning("could not read the reference profile of %s: %s", run_dir, exc)
        return None, f"its reference profile could not be read ({type(exc).__name__}: {exc})"
    if reference is None:
        return None, "it has no reference profile (model/reference.json): it was trained before drift monitoring"
    return reference, ""
