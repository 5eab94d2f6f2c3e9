"""The drift monitor's window (monitor/window.py) and the DriftMonitor extension (monitor/server.py) on hand-built
batches: windows close by rows (splitting batches) or by time, versions are watched apart, the endpoint's JSON and
the Prometheus series follow the tested windows, and OOD scores come per row."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfoundry.config.monitor import WindowConfig
from modelfoundry.data.input_schema import CheckedRows
from modelfoundry.monitor.window import Window


def checked(values: np.ndarray) -> CheckedRows:
    """Rows of numeric columns only, as the server checks them."""
    n = len(values)
    return CheckedRows(values.astype(np.float64), np.empty((n, 0), np.int64), np.empty((n, 0), object),
                       {"numeric": values.astype(np.float32)})


# ------------------------------------------------------------------------------------------------ window
@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 130), min_size=1, max_size=25), size=st.integers(20, 60))
def test_rows_windows_hold_exactly_rows_in_order(sizes, size):
    window, closed, served = Window(WindowConfig(rows=size)), [], 0
    for n in sizes:
        values = np.arange(served, served + n, dtype=np.float64)[:, None]
        closed += window.add(checked(values), values[:, 0] * 10, now=1.0)
        served += n
    assert [w.count for w in closed] == [size] * (served // size)
    assert window.count == served % size
    seen = np.concatenate([w.rows.numeric[:, 0] for w in closed] + [np.empty(0)])
    np.testing.assert_array_equal(seen, np.arange(len(seen)))  # no row lost, doubled or reordered
    for w in closed:  # outputs stay aligned with their rows
        np.testing.assert_array_equal(w.outputs, w.rows.numeric[:, 0] * 10)
        assert w.tested and w.by == "rows"


def test_a_whole_batch_is_kept_without_a_copy():
    window, values = Window(WindowConfig(rows=100)), np.ones((5, 2))
    rows = checked(values)
    window.add(rows, values[:, 0], now=0.0)
    assert window._rows[0] is rows  # noqa: SLF001 - the hot path appends a reference, nothing more


def test_time_window_closes_on_the_next_batch_and_when_read():
    window = Window(WindowConfig(rows=1000, seconds=10, min_rows=10))
    values = np.zeros((12, 1))
    assert window.add(checked(values), values[:, 0], now=100.0) == []
    assert not window.due(105.0) and window.due(110.0)
    closed = window.add(checked(values), values[:, 0], now=111.0)  # the next batch closes the due window first
    assert [(w.count, w.by, w.tested) for w in closed] == [(12, "seconds", True)]
    assert window.count == 12 and window.started == 111.0  # the batch opened the next window
    late = window.close(125.0, "seconds")  # the endpoint's read
    assert (late.count, late.started, late.ended) == (12, 111.0, 125.0)


def test_a_time_window_with_too_few_rows_is_not_tested():
    window = Window(WindowConfig(rows=1000, seconds=5, min_rows=50))
    values = np.zeros((49, 1))
    window.add(checked(values), values[:, 0], now=0.0)
    closed = window.close(6.0, "seconds")
    assert not closed.tested and "fewer than monitor.window.min_rows=50" in closed.note(50)
    assert not Window(WindowConfig(rows=1000, seconds=5)).due(1e9)  # an empty window is never due


# ------------------------------------------------------------------------------------------ DriftMonitor
import asyncio  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from fastapi import FastAPI  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from modelfoundry.config.monitor import MonitorConfig  # noqa: E402
from modelfoundry.monitor.columns import PREDICTION  # noqa: E402
from modelfoundry.monitor.endpoint import finite  # noqa: E402
from modelfoundry.monitor.ood import MahalanobisScorer  # noqa: E402
from modelfoundry.monitor.profile import Reference, profile_column, save_reference  # noqa: E402
from modelfoundry.monitor.server import DriftMonitor  # noqa: E402
from modelfoundry.serve.extensions import BatchRecord, ModelIdentity, ServerContext  # noqa: E402
from modelfoundry.serve.runner import ServedModel  # noqa: E402
from modelfoundry.serve.store import LoadedModel  # noqa: E402

SCHEMA = SimpleNamespace(series=False, image=False, num_columns=["a", "b"], cat_columns=[], categorical=[],
                         text_columns=[])  # what column_values reads of an InputSchema: two numeric columns
LABELS = ["x", "y"]


def reference_run(path, seed: int = 0):
    """A run directory holding only a reference of two standard normal columns and balanced predictions."""
    rng = np.random.default_rng(seed)
    train, val = rng.normal(size=(600, 2)), rng.normal(size=(300, 2))
    predictions = np.array(LABELS * 150, dtype=object)
    reference = Reference("classification", LABELS, 900, {c: profile_column(c, "numeric", np.r_[train[:, j], val[:, j]])
                                                          for j, c in enumerate("ab")},
                          profile_column(PREDICTION, "categorical", predictions, LABELS), {"accuracy": 0.9},
                          MahalanobisScorer().fit(train).calibrate(val, 0.01))
    save_reference(path, reference)
    return path


def served(version: str, run_dir) -> LoadedModel:
    return LoadedModel("m", version, None, None, run_dir, schema=SCHEMA)


def monitored(tmp_path, **monitor):
    """A DriftMonitor set up in a bare app (as create_app does), serving version 1."""
    extension = DriftMonitor(MonitorConfig(window={"rows": 100, **monitor.pop("window", {})}, **monitor))
    model = ServedModel()
    model.current = served("1", reference_run(tmp_path / "v1"))
    registry = CollectorRegistry()
    extension.setup(ServerContext(FastAPI(), registry, [], model, None))
    return extension, model, registry


def batch(values: np.ndarray, version: str = "1", run_dir=None, now: float = 0.0) -> BatchRecord:
    n = len(values)
    outputs = np.tile([0.5, 0.5], (n, 1)) + np.where(np.arange(n) % 2, 0.1, -0.1)[:, None] * [1, -1]
    return BatchRecord(ModelIdentity("m", version, None, str(run_dir) if run_dir else None), "classification",
                       LABELS, ["a", "b"], checked(values), outputs, None, (n,), now)


def deliver(extension: DriftMonitor, *batches: BatchRecord) -> None:
    """Hand batches to the extension as the server does (its async on_batch), then wait for the window tests."""
    for record in batches:
        asyncio.run(extension.on_batch(record))
    extension.settle()


def test_a_shifted_column_alerts_and_the_series_follow(tmp_path):
    extension, model, registry = monitored(tmp_path)
    rng = np.random.default_rng(1)
    deliver(extension, batch(rng.normal(size=(100, 2)), run_dir=model.current.run_dir))
    assert registry.get_sample_value("foundry_drift_windows_total") == 1
    assert registry.get_sample_value("foundry_drift_alert", {"column": "a"}) == 0
    shifted = rng.normal(size=(100, 2)) + [2.0, 0.0]  # column a moves by two standard deviations
    deliver(extension, batch(shifted, run_dir=model.current.run_dir))
    assert registry.get_sample_value("foundry_drift_alert", {"column": "a"}) == 1
    assert registry.get_sample_value("foundry_drift_alert", {"column": "b"}) == 0
    assert registry.get_sample_value("foundry_drift_score", {"column": "a", "test": "ks"}) > 0.5
    assert registry.get_sample_value("foundry_drift_p_value", {"column": "a", "test": "ks"}) < 1e-6
    assert registry.get_sample_value("foundry_drift_windows_total") == 2
    assert registry.get_sample_value("foundry_ood_rows_total") == 200
    body = extension.report(model.current)
    assert body["alerts"] == ["a"] and len(body["history"]) == 2
    column_a = body["columns"][0]
    assert (column_a["column"], column_a["test"], column_a["reason"]) == ("a", "ks", "ks: numeric, 100 rows <= 1000")
    assert column_a["drifted"] and column_a["alerting"] and not body["columns"][1]["drifted"]


def test_patience_needs_consecutive_drifted_windows(tmp_path):
    extension, model, registry = monitored(tmp_path, drift={"patience": 2})
    shifted = np.random.default_rng(2).normal(size=(100, 2)) + [2.0, 0.0]
    deliver(extension, batch(shifted, run_dir=model.current.run_dir))
    assert registry.get_sample_value("foundry_drift_alert", {"column": "a"}) == 0  # drifted once: not yet
    deliver(extension, batch(shifted, run_dir=model.current.run_dir))
    assert registry.get_sample_value("foundry_drift_alert", {"column": "a"}) == 1


def test_a_hot_switch_starts_afresh_against_the_new_reference(tmp_path):
    extension, model, registry = monitored(tmp_path)
    rng = np.random.default_rng(3)
    deliver(extension, batch(rng.normal(size=(100, 2)) + [3.0, 0.0], run_dir=model.current.run_dir))
    deliver(extension, batch(rng.normal(size=(40, 2)), run_dir=model.current.run_dir))
    assert registry.get_sample_value("foundry_drift_alert", {"column": "a"}) == 1
    v2 = reference_run(tmp_path / "v2", seed=1)
    model.current = served("2", v2)
    deliver(extension, batch(rng.normal(size=(30, 2)), version="2", run_dir=v2))
    deliver(extension, batch(rng.normal(size=(30, 2)), version="1", run_dir=tmp_path / "v1"))  # late: dropped
    body = extension.report(model.current)
    assert body["version"] == "2" and body["history"] == [] and body["window"]["rows"] == 30
    assert registry.get_sample_value("foundry_drift_alert", {"column": "a"}) == 0  # no alert carried over
    assert registry.get_sample_value("foundry_drift_score", {"column": "a", "test": "ks"}) is None
    assert registry.get_sample_value("foundry_drift_windows_total") == 1  # a counter: it keeps its total


def test_time_windows_close_when_read_and_too_few_rows_are_not_tested(tmp_path):
    extension, model, registry = monitored(tmp_path, window={"rows": 1000, "seconds": 10, "min_rows": 50})
    deliver(extension, batch(np.zeros((20, 2)), run_dir=model.current.run_dir, now=100.0))
    extension.close_due(now=105.0)
    assert extension.report(model.current)["window"]["rows"] == 20  # not due yet
    extension.close_due(now=111.0)
    body = extension.report(model.current)
    assert body["window"]["rows"] == 0 and not body["history"][0]["tested"]
    assert "min_rows=50" in body["history"][0]["note"] and body["windows_tested"] == 0
    assert registry.get_sample_value("foundry_drift_windows_total") == 0


def test_ood_scores_per_row(tmp_path):
    extension, model, _ = monitored(tmp_path)
    rows = checked(np.r_[np.zeros((3, 2)), np.full((2, 2), 50.0)])
    scores = extension.row_scores(model.current, rows)["ood"]
    assert [s["outlier"] for s in scores] == [False, False, False, True, True]
    assert scores[3]["score"] > scores[3]["threshold"] > scores[0]["score"]


def test_no_reference_means_no_series_and_a_hint(tmp_path):
    extension = DriftMonitor(MonitorConfig(window={"rows": 20}))
    model, registry = ServedModel(), CollectorRegistry()
    model.current = served("1", tmp_path / "old")
    extension.setup(ServerContext(FastAPI(), registry, [], model, None))
    for _ in range(3):
        deliver(extension, batch(np.zeros((20, 2)), run_dir=tmp_path / "old"))
    body = extension.report(model.current)
    assert not body["monitoring"] and "no reference profile" in body["message"] and "foundry run" in body["hint"]
    assert registry.get_sample_value("foundry_drift_windows_total") is None
    assert extension.row_scores(model.current, checked(np.zeros((2, 2)))) == {"ood": [None, None]}


def test_json_has_no_nan():
    assert finite({"a": [float("nan"), np.float64(1.5), float("inf")], "b": (np.int64(2),)}) == \
        {"a": [None, 1.5, None], "b": [2]}


@settings(max_examples=200, deadline=None)
@given(n=st.integers(100, 600), m=st.integers(200, 1000), shift=st.floats(0, 0.5), ties=st.booleans(),
       seed=st.integers(0, 2**16))
def test_the_fast_ks_agrees_with_scipy(n, m, shift, ties, seed):
    from scipy import stats

    from modelfoundry.monitor.ks import ks_2samp

    rng = np.random.default_rng(seed)
    values, reference = rng.normal(shift, 1, n), rng.normal(0, 1, m)
    if ties:  # pixel-like values 0-16
        values, reference = np.round(values * 4 + 8), np.round(reference * 4 + 8)
    d, p = ks_2samp(values, np.sort(reference))
    expected = stats.ks_2samp(values, reference)
    assert d == pytest.approx(expected.statistic, abs=1e-12)
    # the asymptotic p-value vs scipy's exact one, at window (>= 100 rows) and reference (>= 200) sizes
    assert p == pytest.approx(expected.pvalue, abs=0.04)
    if expected.pvalue < 1e-4:  # beyond every Benjamini-Hochberg cutoff a window uses: the same decision (the
        assert p < 1e-3  # asymptotic tail is up to ~30% off in relative terms at p ~ 1e-10, which decides nothing)
    elif expected.pvalue < 0.1:  # where alerts are decided: close in relative terms too
        assert p == pytest.approx(expected.pvalue, rel=0.25)


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.tuples(st.integers(1, 200), st.integers(1, 300), st.booleans()), min_size=1, max_size=8),
       seed=st.integers(0, 2**16))
def test_ks_of_many_columns_at_once_is_ks_of_each(sizes, seed):
    from scipy import stats

    from modelfoundry.monitor.ks import ks_many

    rng = np.random.default_rng(seed)
    pairs = [(rng.normal(0.3, 1, n), np.sort(rng.normal(0, 1, m))) for n, m, _ in sizes]
    pairs = [(np.round(a * 3), np.round(b * 3)) if ties else (a, b) for (a, b), (_, _, ties) in zip(pairs, sizes)]
    d, p = ks_many([a for a, _ in pairs], [b for _, b in pairs])
    for (a, b), di, pi in zip(pairs, d, p):
        assert di == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-9)  # the statistic is exact
        assert 0.0 <= pi <= 1.0
