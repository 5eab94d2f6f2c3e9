"""In-server drift and OOD monitoring (monitor/server.py) on real data: tiny digits and breast_cancer models served
with the DriftMonitor extension. Held-out rows raise no alert window after window; shifted rows (noise, inverted
pixels, a removed class; scaled columns) alert within two windows, in /metrics and at the monitor endpoint; far-away
rows get OOD outliers per row when asked; a slow statistics call never slows /predict."""

from __future__ import annotations

import re
import shutil
import threading
import time

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from modelfoundry.api.training import run
from modelfoundry.config import ServeConfig, load_config
from modelfoundry.config.monitor import MonitorConfig
from modelfoundry.experiment import prepare
from modelfoundry.monitor import drift
from modelfoundry.monitor.server import DriftMonitor
from modelfoundry.serve.app import create_app
from modelfoundry.serve.store import RunDirStore
from tests.conftest import tiny_config

DIGITS = {"source": "sklearn:digits", "target": "target", "split": {"val": 0.15, "test": 0.15, "stratify": True},
          "features": {"pixel_*": {"type": "image", "shape": [1, 8, 8], "scale": "minmax"}}}
CANCER = {"source": "sklearn:breast_cancer", "target": "target", "split": {"val": 0.15, "test": 0.15,
                                                                          "stratify": True}}


def trained(tmp_path_factory, name: str, data: dict) -> tuple:
    """A tiny model on `data` (run directory, its held-out test rows without the target)."""
    config = load_config(tiny_config(name=name, data=data, model={"name": "mlp", "hidden": [32]},
                                     training={"epochs": 5, "batch_size": 64}))
    run_dir = tmp_path_factory.mktemp(name) / "run"
    run(config, run_dir=run_dir, progress=False)
    assert (run_dir / "model" / "reference.json").is_file()  # training saved the reference profile
    test = prepare(config).frames["test"]
    return run_dir, test.drop(columns="target").reset_index(drop=True), test["target"].reset_index(drop=True)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return trained(tmp_path_factory, "digits", DIGITS)


@pytest.fixture(scope="module")
def cancer(tmp_path_factory):
    return trained(tmp_path_factory, "cancer", CANCER)


def serving(run_dir, rows: int = 100, **monitor) -> tuple[TestClient, DriftMonitor]:
    extension = DriftMonitor(MonitorConfig(**{"window": {"rows": rows}, **monitor}))
    return TestClient(create_app(ServeConfig(), RunDirStore(run_dir), extensions=[extension])), extension


def send(client: TestClient, frame: pd.DataFrame, chunk: int = 25) -> None:
    for start in range(0, len(frame), chunk):
        answer = client.post("/predict", json={"records": frame.iloc[start:start + chunk].to_dict("records")})
        assert answer.status_code == 200, answer.text


def report(client: TestClient, name: str, windows: int, timeout_s: float = 30.0) -> dict:
    """The monitor endpoint once `windows` windows were tested (they are tested off the request path)."""
    deadline = time.monotonic() + timeout_s
    while True:
        body = client.get(f"/v2/models/{name}/monitor").json()
        if body["windows_tested"] >= windows:
            return body
        assert time.monotonic() < deadline, f"only {body['windows_tested']} of {windows} windows were tested"
        time.sleep(0.02)


def alert_series(client: TestClient) -> dict[str, float]:
    text = client.get("/metrics").text
    return {m[0]: float(m[1]) for m in re.findall(r'^foundry_drift_alert\{column="([^"]+)"\} (\S+)$', text, re.M)}


def windows_of(frame: pd.DataFrame, windows: int, rows: int, seed: int = 0) -> pd.DataFrame:
    """`windows` windows of `rows` rows drawn from `frame` (without replacement within a window)."""
    rng = np.random.default_rng(seed)
    return pd.concat([frame.iloc[rng.permutation(len(frame))[:rows]] for _ in range(windows)], ignore_index=True)


# --------------------------------------------------------------------------------------------------- digits
@pytest.mark.slow
def test_digits_held_out_rows_raise_no_alert_over_20_windows(digits):
    run_dir, test, _ = digits
    client, _ = serving(run_dir, rows=100)
    with client:
        send(client, windows_of(test, 20, 100))
        body = report(client, "digits", 20)
        assert alert_series(client) and not any(alert_series(client).values())
    tested = [w for w in body["history"] if w["tested"]]
    assert len(tested) == 20 and all(w["rows"] == 100 for w in tested)
    false_alarms = sum(len(w["drifted"]) for w in tested) / sum(len(w["columns"]) for w in tested)
    assert false_alarms <= 0.05  # the target, per column-window
    assert not any(w["dataset_drift"] for w in tested)
    assert body["reference"]["columns"] == 64 and body["reference"]["prediction"]
    pixel = next(c for c in body["columns"] if c["column"] == "pixel_3_4")
    assert (pixel["test"], pixel["reason"]) == ("ks", "ks: numeric, 100 rows <= 1000")
    assert body["ood"]["rows"] == 2000 and body["ood"]["last_window_share"] < 0.2


def noisy(frame: pd.DataFrame) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return (frame + rng.normal(0, 4, frame.shape)).clip(0, 16)


def inverted(frame: pd.DataFrame) -> pd.DataFrame:
    return 16 - frame


@pytest.mark.slow
@pytest.mark.parametrize("shift", ["noise", "inverted", "removed_class"])
def test_digits_shifted_rows_alert_within_two_windows(digits, shift):
    run_dir, test, target = digits
    # a missing tenth of the classes moves the predictions' distribution by little: windows of 200 rows tell it
    size = 200 if shift == "removed_class" else 100
    rows = test[target != 0] if shift == "removed_class" else test  # the 0s never come
    shifted = {"noise": noisy, "inverted": inverted}.get(shift, lambda f: f)(windows_of(rows, 2, size, seed=3))
    client, _ = serving(run_dir, rows=size)
    with client:
        send(client, shifted)
        body = report(client, "digits", 2)
        alerts = alert_series(client)
    assert body["alerts"] and all(alerts[c] == 1.0 for c in body["alerts"])
    assert {c for c, v in alerts.items() if v == 1.0} == set(body["alerts"])
    if shift == "removed_class":
        assert "__prediction__" in body["alerts"]
    else:
        assert body["dataset_drift"] and body["ood"]["last_window_share"] > 0.5


# --------------------------------------------------------------------------------------------- breast_cancer
@pytest.mark.slow
def test_breast_cancer_held_out_then_scaled_columns(cancer):
    run_dir, test, _ = cancer
    client, _ = serving(run_dir, rows=50)
    with client:
        send(client, windows_of(test, 10, 50))
        quiet = report(client, "cancer", 10)
        assert not quiet["alerts"] and not any(alert_series(client).values())
        scaled = windows_of(test, 2, 50, seed=5)
        columns = ["mean radius", "mean perimeter", "mean area", "worst radius"]
        scaled[columns] *= 1.5
        send(client, scaled)
        body = report(client, "cancer", 12)
        alerts = alert_series(client)
    assert set(columns) <= set(body["alerts"])
    assert all(alerts[c] == 1.0 for c in columns) and alerts["mean texture"] == 0.0
    drifted = {c["column"]: c for c in body["columns"]}
    assert drifted["mean area"]["drifted"] and drifted["mean area"]["p_value"] < 0.05
    assert len(body["history"]) == 12


# ------------------------------------------------------------------------------------------- OOD per row
def test_ood_scores_per_row_when_asked(cancer):
    run_dir, test, _ = cancer
    client, _ = serving(run_dir)
    far = test.head(5) * 10
    with client:
        plain = client.post("/predict", json={"records": test.head(3).to_dict("records")}).json()
        near = client.post("/predict", json={"records": test.to_dict("records"), "ood": True}).json()
        away = client.post("/predict", json={"records": far.to_dict("records"), "ood": True}).json()
        threshold = client.get("/v2/models/cancer/monitor").json()["ood"]["threshold"]
    assert "ood" not in plain
    assert len(near["ood"]) == len(test) and {"score", "threshold", "outlier"} <= set(near["ood"][0])
    assert sum(r["outlier"] for r in near["ood"]) <= 0.1 * len(test)
    assert all(r["outlier"] and r["score"] > r["threshold"] == pytest.approx(threshold, rel=1e-3)
               for r in away["ood"])


def test_the_monitor_endpoint_before_any_window_and_for_another_name(cancer):
    run_dir, _, _ = cancer
    client, _ = serving(run_dir, rows=50)
    with client:
        body = client.get("/v2/models/cancer/monitor").json()
        other = client.get("/v2/models/other/monitor")
        metrics = client.get("/metrics").text
    assert body["monitoring"] and body["window"]["rows"] == 0 and body["history"] == []
    assert body["columns"][-1]["column"] == "__prediction__" and body["columns"][-1]["test"] == "chi2"
    assert other.status_code == 404 and "cancer" in other.json()["hint"]
    assert "foundry_drift_score" not in metrics  # nothing tested yet


def test_a_model_without_a_reference_is_served_and_says_how_to_get_one(cancer, tmp_path):
    run_dir, test, _ = cancer
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    (old / "model" / "reference.json").unlink()
    client, _ = serving(old, rows=20)
    with client:
        send(client, test.head(60))
        answer = client.post("/predict", json={"records": test.head(2).to_dict("records"), "ood": True})
        body = client.get("/v2/models/cancer/monitor").json()
        metrics = client.get("/metrics").text
    assert answer.status_code == 200 and answer.json()["ood"] == [None, None]
    assert not body["monitoring"] and body["reference"] is None
    assert "reference" in body["message"] and "foundry run" in body["hint"]
    assert "foundry_drift" not in metrics and "foundry_ood" not in metrics


@pytest.mark.slow  # waits out a deliberately slow statistics call (~3 s)
def test_predict_never_waits_for_the_statistics(cancer, monkeypatch):
    run_dir, test, _ = cancer
    started, real = threading.Event(), drift.compare

    def slow_compare(*args, **kwargs):
        started.set()
        time.sleep(1.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(drift, "compare", slow_compare)
    client, _ = serving(run_dir, rows=20)
    with client:
        send(client, test.head(20), chunk=20)  # fills a window: its test starts in the extension thread
        assert started.wait(10)
        begin = time.perf_counter()
        for _ in range(5):
            assert client.post("/predict", json={"records": test.head(4).to_dict("records")}).status_code == 200
        elapsed = time.perf_counter() - begin
        body = report(client, "cancer", 1)
    assert elapsed < 1.0  # five answers while one 1.5 s window test runs
    assert body["history"][0]["tested"]


def test_a_time_window_is_closed_and_tested_when_the_endpoint_reads_it(cancer):
    run_dir, test, _ = cancer
    client, _ = serving(run_dir, window={"rows": 1000, "seconds": 0.3, "min_rows": 10})
    with client:
        send(client, test.head(30))
        early = client.get("/v2/models/cancer/monitor").json()
        time.sleep(0.4)
        late = client.get("/v2/models/cancer/monitor").json()  # no batch came since: the read closes it
    assert early["windows_tested"] == 0 and early["window"]["rows"] == 30
    assert late["windows_tested"] == 1 and late["window"]["rows"] == 0
    assert late["history"][0]["rows"] == 30 and late["history"][0]["tested"]
