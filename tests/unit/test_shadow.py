"""Shadow mode (monitor/shadow.py): a challenger runs on every served batch off the request path; its agreement
with the champion is a metric, its predictions are logged for rows with ids, and the answers never change."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from modelfoundry.api.training import run
from modelfoundry.config import ServeConfig, load_config
from modelfoundry.data.sources import load_source
from modelfoundry.monitor.shadow import Shadow
from modelfoundry.serve.app import create_app
from modelfoundry.serve.backends import TorchBackend
from modelfoundry.serve.store import RunDirStore
from modelfoundry.storage import read_json
from tests.conftest import tiny_config

SHADOW_SETTINGS = ServeConfig(backend="torch", poll_s=0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A champion and a challenger trained on other splits (seed): their preprocessing differs."""
    tmp = tmp_path_factory.mktemp("shadow")
    run(load_config(tiny_config(seed=0)), run_dir=tmp / "champion", progress=False)
    run(load_config(tiny_config(seed=7, model={"name": "mlp", "hidden": [4]})), run_dir=tmp / "other",
        progress=False)
    run(load_config(tiny_config(name="reg", data={"source": "sklearn:diabetes", "target": "target"})),
        run_dir=tmp / "reg", progress=False)
    return tmp


@pytest.fixture(scope="module")
def rows():
    return load_source("sklearn:iris").drop(columns="target").sample(40, random_state=1)


class FakeLog:
    def __init__(self):
        self.calls: list[tuple[list[str], list]] = []

    def add_shadow(self, row_ids, predictions):
        self.calls.append((list(row_ids), list(predictions)))


class GiveIds:
    """Asks the server for request ids (as the request log does) and records which ones were given."""

    id_share = 1.0

    def __init__(self):
        self.ids: list[str] = []

    def on_batch(self, batch):
        self.ids += [i for i in batch.row_ids() if i is not None]


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_until(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the shadow did not see the batch in time"
        time.sleep(0.02)


def serve(champion, shadow, body, extra=()):
    with TestClient(create_app(ServeConfig(backend="torch"), RunDirStore(champion),
                               extensions=[*extra, shadow])) as client:
        answer = client.post("/predict", json=body).json()
        wait_until(lambda: shadow.agreement_now() is not None or metric(client.get("/metrics").text,
                                                                         "foundry_shadow_errors_total"))
        return answer, client.get("/metrics").text


def test_same_preprocessing_uses_the_served_inputs_and_agrees_fully(runs, rows, monkeypatch):
    from modelfoundry.monitor import columns

    body = {"records": rows.to_dict(orient="records")}
    with TestClient(create_app(ServeConfig(backend="torch"), RunDirStore(runs / "champion"))) as plain:
        expected = plain.post("/predict", json=body).json()
    log, ids = FakeLog(), GiveIds()
    shadow = Shadow(str(runs / "champion"), None, SHADOW_SETTINGS, log=log)
    rebuilt = []
    monkeypatch.setattr(columns, "raw_frame", lambda *a: rebuilt.append(1))  # the other path: not taken
    answer, metrics = serve(runs / "champion", shadow, body, extra=[ids])
    assert {k: v for k, v in answer.items() if k != "ids"} == {k: v for k, v in expected.items() if k != "ids"}
    assert rebuilt == []  # the served model inputs were used as they were
    assert metric(metrics, "foundry_shadow_agreement") == 1.0
    assert metric(metrics, "foundry_shadow_rows_total") == len(rows)
    assert metric(metrics, "foundry_shadow_errors_total") == 0.0  # present from the start
    logged_ids, predictions = log.calls[0]
    assert logged_ids == answer["ids"] == ids.ids and predictions == answer["predictions"]


def test_other_preprocessing_rechecks_raw_rows_and_measures_agreement(runs, rows):
    champion_desc = read_json(runs / "champion" / "preprocess.json")
    other_desc = read_json(runs / "other" / "preprocess.json")
    assert champion_desc["features"] != other_desc["features"]  # fitted on another split: other scaling
    log = FakeLog()
    shadow = Shadow(str(runs / "other"), None, SHADOW_SETTINGS, log=log)
    body = {"records": rows.to_dict(orient="records")}
    answer, metrics = serve(runs / "champion", shadow, body, extra=[GiveIds()])
    own = TorchBackend(runs / "other")
    expected = [own.labels[k] for k in own.predict_frame(rows.reset_index(drop=True)).argmax(1)]
    assert log.calls[0][1] == expected  # the challenger's own predictions on the raw rows
    agreement = metric(metrics, "foundry_shadow_agreement")
    assert agreement == pytest.approx(np.mean(np.asarray(expected) == np.asarray(answer["predictions"])))
    assert 0.0 <= agreement <= 1.0


def test_regression_reports_the_mean_absolute_difference(runs):
    frame = load_source("sklearn:diabetes").drop(columns="target").head(30)
    shadow = Shadow(str(runs / "reg"), None, SHADOW_SETTINGS)
    _, metrics = serve(runs / "reg", shadow, {"records": frame.to_dict(orient="records")})
    assert metric(metrics, "foundry_shadow_mean_abs_diff") == pytest.approx(0.0, abs=1e-6)
    assert metric(metrics, "foundry_shadow_agreement") == 1.0


def test_a_broken_shadow_never_fails_a_request(runs, rows, tmp_path):
    shadow = Shadow(str(tmp_path / "missing-run"), None, SHADOW_SETTINGS)
    body = {"records": rows.head(3).to_dict(orient="records")}
    with TestClient(create_app(ServeConfig(backend="torch"), RunDirStore(runs / "champion"),
                               extensions=[shadow])) as client:
        answers = [client.post("/predict", json=body) for _ in range(2)]
        text = client.get("/metrics").text
    assert [a.status_code for a in answers] == [200, 200]
    assert metric(text, "foundry_shadow_errors_total") >= 1 and shadow.agreement_now() is None


def test_a_shadow_of_another_task_is_counted_as_an_error(runs, rows):
    shadow = Shadow(str(runs / "reg"), None, SHADOW_SETTINGS)
    answer, metrics = serve(runs / "champion", shadow, {"records": rows.head(3).to_dict(orient="records")})
    assert len(answer["predictions"]) == 3
    assert metric(metrics, "foundry_shadow_errors_total") == 1 and shadow.agreement_now() is None
