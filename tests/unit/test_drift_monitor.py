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
