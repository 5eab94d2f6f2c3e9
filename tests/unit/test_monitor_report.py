"""foundry monitor's pieces: windows over a file, the CI gate, live figures from the request log, and the report
(markdown and HTML naming the PNGs it wrote, monitor.json)."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfoundry.api.monitoring import ColumnSummary, MonitorResult, window_bounds
from modelfoundry.monitor.logview import live_figures
from modelfoundry.errors import ConfigError
from modelfoundry.monitor.report import plotted_columns, write_report


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 5000), rows=st.integers(20, 600))
def test_windows_cover_every_row_once_and_only_a_lone_window_is_short(n, rows):
    bounds = window_bounds(n, rows)
    covered = [i for start, stop in bounds for i in range(start, stop)]
    assert covered == list(range(n))
    if n:
        assert len(bounds) == max(1, n // rows)
    if len(bounds) > 1:
        assert all(rows <= stop - start < 2 * rows for start, stop in bounds)


class Profile:
    def __init__(self, kind, values):
        self.kind, self.values = kind, np.asarray(values)

    def sample(self):
        return self.values


def window(drifted, share=0.0, dataset=False):
    return SimpleNamespace(drifted=drifted, share=share, dataset_drift=dataset,
                           to_json=lambda: {"drifted": drifted, "share": share, "dataset_drift": dataset})


def summary(column, kind="numeric", drifted=0, alert=False, p=0.5, score=0.1):
    return ColumnSummary(column, kind, "ks" if kind == "numeric" else "chi2", score, p, 0.05, drifted, 2, alert)


def make_result(columns, windows=None, live=None):
    rng = np.random.default_rng(0)
    reference = SimpleNamespace(columns={}, prediction=None, metrics={"accuracy": 0.93})
    current = {}
    for c in columns:
        if c.kind == "numeric":
            reference.columns[c.column] = Profile("numeric", np.sort(rng.normal(0, 1, 200)))
            current[c.column] = rng.normal(3 if c.windows_drifted else 0, 1, 100)
        else:
            reference.columns[c.column] = Profile("categorical", ["a"] * 50 + ["b"] * 50)
            current[c.column] = np.array(["a"] * 90 + ["<unseen>"] * 10, dtype=object)
    windows = windows or [window([c.column for c in columns if c.windows_drifted]), window([])]
    return MonitorResult("bc", None, Path("runs/bc"), "new.csv", "classification", 100, 50, windows,
                         [(0, 50), (50, 100)], columns, 0.02, reference, current, ["a note"], live or {})


def test_markdown_report_embeds_a_png_per_drifted_column_and_the_closest_others(tmp_path):
    columns = [summary("x", drifted=2, alert=True, p=1e-9, score=0.8), summary("<b>a|b</b>", "categorical", drifted=1,
               p=0.001), *[summary(f"quiet{k}", p=0.9 - 0.1 * k) for k in range(5)]]
    result = make_result(columns)
    path = write_report(result, tmp_path / "rep")
    text = path.read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    # drifted first (worst first), then the 3 quiet columns closest to drifting (smallest p-values)
    assert plotted_columns(result) == ["x", "<b>a|b</b>", "quiet4", "quiet3", "quiet2"]
    assert len(images) == 5 and all((tmp_path / "rep" / image).is_file() for image in images)
    assert all((tmp_path / "rep" / image).read_bytes()[:4] == b"\x89PNG" for image in images)
    assert "**ALERT** on x" in text and "| x | numeric | ks |" in text and "| 2/2 | ALERT |" in text
    assert "<b>a\\|b</b>" in text  # a pipe in a column name does not break the table
    assert "out-of-distribution rows: 2.0%" in text and "a note" in text
    saved = json.loads((tmp_path / "rep" / "monitor.json").read_text())
    assert saved["alerts"] == ["x"] and saved["drifted"] == ["x", "<b>a|b</b>"] and len(saved["windows"]) == 2


def test_html_report_escapes_names_and_links_the_same_plots(tmp_path):
    columns = [summary("<script>alert(1)</script>", drifted=1, p=1e-6)]
    path = write_report(make_result(columns, live={"feedback_rows": 40.0, "live_accuracy": 0.75,
                                                   "shadow_rows": 10.0, "shadow_agreement": 0.9}),
                        tmp_path / "rep", fmt="html")
    text = path.read_text()
    assert path.name == "report.html" and "<script>" not in text and "&lt;script&gt;" in text
    sources = re.findall(r'<img src="([^"]+)"', text)
    assert sources and all((tmp_path / "rep" / s).is_file() for s in sources)
    assert "live accuracy on 40 rows with feedback: 0.7500 (validation: 0.9300)" in text
    assert "shadow agreement on 10 rows: 0.9000" in text


def test_no_drift_reports_so_and_plots_only_the_closest_columns(tmp_path):
    result = make_result([summary(f"c{k}", p=0.2 + 0.1 * k) for k in range(6)])
    text = write_report(result, tmp_path / "rep").read_text()
    assert "Result: no drift, no alert." in text and "ALERT" not in text
    assert len(list((tmp_path / "rep" / "plots").glob("*.png"))) == 3
    assert result.failed("alert") == [] and result.failed("drift") == [] and result.failed("never") == []


def test_the_ci_gate_follows_fail_on():
    result = make_result([summary("x", drifted=1, alert=False, p=1e-4), summary("y", drifted=2, alert=True, p=1e-9)])
    assert result.failed("alert") == ["y"]
    assert result.failed("drift") == ["x", "y"]
    assert result.failed("never") == []
    with pytest.raises(ConfigError, match="--fail-on"):
        result.failed("sometimes")


def test_live_figures_from_feedback_and_shadow_rows():
    log = pd.DataFrame({"prediction": ["1", "0", "1", "1", "0"], "label": ["1", "1", None, "1", None],
                        "shadow_prediction": [None, "0", "0", "1", None]})
    live = live_figures(log, "classification")
    assert live["feedback_rows"] == 3 and live["live_accuracy"] == pytest.approx(2 / 3)
    assert live["shadow_rows"] == 3 and live["shadow_agreement"] == pytest.approx(2 / 3)
    log = pd.DataFrame({"prediction": [1.0, 2.0, 4.0], "label": [2.0, None, 1.0], "shadow_prediction": [None] * 3})
    live = live_figures(log, "regression")
    assert live["live_mae"] == pytest.approx(2.0) and live["live_rmse"] == pytest.approx(np.sqrt(5.0))
    assert live["shadow_rows"] == 0 and "shadow_mean_abs_difference" not in live


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="md, html"):
        write_report(make_result([summary("x")]), tmp_path / "rep", fmt="pdf")
