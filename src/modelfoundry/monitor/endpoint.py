"""What the drift monitor shows: the monitor endpoint's JSON and the Prometheus series, both read from the
monitor's state (monitor/server.py) when asked, so serving does no work for them."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from modelfoundry.config.monitor import DriftConfig
    from modelfoundry.monitor.profile import ColumnProfile, Reference
    from modelfoundry.monitor.server import DriftMonitor


def model_report(monitor: DriftMonitor, model: Any) -> dict[str, Any]:
    """GET /v2/models/{name}/monitor for the served `model` (a LoadedModel): see docs/monitoring.md."""
    from modelfoundry.monitor.server import NO_REFERENCE_HINT
    from modelfoundry.monitor.window import Window

    now = time.time()
    body: dict[str, Any] = {"model": model.name, "version": model.version, "alias": model.alias}
    snap = monitor.snapshot(now)
    if snap is not None and snap["version"] != model.version:
        snap = None  # switched to another version that has not answered yet
    reference, why = (snap["reference"], snap["why_none"]) if snap else \
        monitor.reference(model.name, model.version, model.run_dir)
    if reference is None:
        if model.schema is not None and getattr(model.schema, "series", False):
            why = "time series models are not monitored for drift yet"
        return body | {"monitoring": False, "reference": None, "message": f"No drift monitoring for this model: "
                       f"{why}.", "hint": NO_REFERENCE_HINT}
    config = monitor.config
    last, alerting = (snap["last"], snap["alerting"]) if snap else (None, {})
    window = snap["window"] if snap else Window(config.window).state(now)
    return body | {
        "monitoring": True,
        "reference": reference_summary(reference),
        "window": window,
        "columns": column_table(reference, last, alerting, config.drift, config.window.rows),
        "alerts": sorted(c for c, on in alerting.items() if on),
        "dataset_drift": bool(last.dataset_drift) if last else False,
        "drifted_share": last.share if last else None,
        "ood": {"enabled": config.ood.enabled and reference.ood is not None,
                "threshold": float(reference.ood.threshold_) if reference.ood is not None else None,
                "false_alarm_rate": config.ood.false_alarm_rate,
                "last_window_share": snap["ood_share"] if snap else None,
                "rows": snap["ood_rows"] if snap else 0, "outliers": snap["ood_outliers"] if snap else 0},
        "windows_tested": snap["windows"] if snap else 0,
        "history": [window_json(entry) for entry in snap["history"]] if snap else [],
    }


def window_json(entry: dict[str, Any]) -> dict[str, Any]:
    """A closed window of the monitor's history as JSON: its tests per column when it was tested."""
    if "drift" not in entry:
        return entry
    return entry["drift"].to_json() | {k: v for k, v in entry.items() if k != "drift"}


def reference_summary(reference: Reference) -> dict[str, Any]:
    """What the served data is compared with: its size, columns, predictions and validation metrics."""
    return {"task": reference.task, "labels": reference.labels, "rows": reference.rows,
            "columns": len(reference.columns), "prediction": reference.prediction is not None,
            "metrics": reference.metrics}


def monitored_names(reference: Reference) -> list[str]:
    """The reference's columns in order, then the predictions when it has them."""
    from modelfoundry.monitor.columns import PREDICTION

    return [*reference.columns, *([PREDICTION] if reference.prediction is not None else [])]


def test_choice(profile: ColumnProfile, rows: int, drift: DriftConfig) -> tuple[str, str]:
    """The test `drift.compare` runs on a column over a window of `rows` rows, and why (Evidently's rule)."""
    from modelfoundry.monitor.drift import choose_test

    test, kind = choose_test(profile, drift, rows), profile.kind
    key = "numeric_test" if kind == "numeric" else "categorical_test"
    if getattr(drift, key) == test:
        return test, f"{test}: {kind}, set by monitor.drift.{key}"
    if profile.name.endswith(":tokens"):
        return test, f"{test}: token ids (a row's tokens are not independent draws: no p-value)"
    if rows <= drift.large_sample:
        return test, f"{test}: {kind}, {rows} rows <= {drift.large_sample}"
    return test, f"{test}: {kind}, {rows} rows > {drift.large_sample} (monitor.drift.large_sample)"


def column_table(reference: Reference, last: Any, alerting: dict[str, bool], drift: DriftConfig,
                 window_rows: int) -> list[dict[str, Any]]:
    """Per monitored column: its test and why, and the last tested window's score, p-value, threshold, drift
    and alert (None before the first tested window)."""
    tested = {c.column: c for c in last.columns} if last is not None else {}
    table = []
    for name in monitored_names(reference):
        profile = reference.columns.get(name) or reference.prediction
        result = tested.get(name)
        test, reason = test_choice(profile, last.rows if last is not None else window_rows, drift)
        table.append({"column": name, "kind": profile.kind, "test": test, "reason": reason,
                      "score": result.score if result else None, "p_value": result.p_value if result else None,
                      "threshold": result.threshold if result else None,
                      "drifted": bool(result.drifted) if result else None, "alerting": bool(alerting.get(name)),
                      "note": result.note if result else ""})
    return table


def finite(value: Any) -> Any:
    """`value` for JSON: NaN and infinities as null, numpy scalars as Python numbers (JSONResponse rejects NaN)."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Collector:
    """The drift series, built from the monitor's state at each scrape (a prometheus-client custom collector).
    No series while the served model has no reference."""

    def __init__(self, monitor: DriftMonitor):
        self.monitor = monitor

    def describe(self) -> list:
        return []  # the series depend on the model; nothing to check against other collectors' names

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self.monitor.snapshot(time.time())
        if snap is None or snap["reference"] is None:
            return
        last, alerting = snap["last"], snap["alerting"]
        score = GaugeMetricFamily("foundry_drift_score", "The last tested window's drift score per column, by the "
                                  "test that ran.", labels=["column", "test"])
        p_value = GaugeMetricFamily("foundry_drift_p_value", "The last tested window's p-value per column "
                                    "(p-value tests: ks, chi2).", labels=["column", "test"])
        for result in last.columns if last is not None else []:
            score.add_metric([result.column, result.test], result.score)
            if result.p_value is not None:
                p_value.add_metric([result.column, result.test], result.p_value)
        alert = GaugeMetricFamily("foundry_drift_alert", "1 while the column alerts (drifted in monitor.drift."
                                  "patience consecutive windows).", labels=["column"])
        for name in monitored_names(snap["reference"]):
            alert.add_metric([name], float(bool(alerting.get(name))))
        yield from (score, p_value, alert)
        yield GaugeMetricFamily("foundry_dataset_drift", "1 when at least monitor.drift.share of the columns "
                                "drifted in the last tested window.", value=float(bool(last and last.dataset_drift)))
        yield CounterMetricFamily("foundry_drift_windows", "Windows of served rows tested for drift.",
                                  value=snap["windows"])
        yield CounterMetricFamily("foundry_ood_rows", "Served rows scored for out-of-distribution.",
                                  value=snap["ood_rows"])
        yield CounterMetricFamily("foundry_ood_outliers", "Served rows beyond the OOD threshold.",
                                  value=snap["ood_outliers"])
        if snap["ood_share"] is not None:
            yield GaugeMetricFamily("foundry_ood_outlier_share", "Share of the last tested window's rows beyond the "
                                    "OOD threshold.", value=snap["ood_share"])
