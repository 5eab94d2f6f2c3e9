"""The request log in the server and POST /feedback (monitor/feedback.py): logged rows carry the ids the
predictions answered, feedback labels them, the live accuracy (or error) follows, bad feedback is a clear 4xx."""

from __future__ import annotations

import json
import math
import time

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelfoundry.api.training import run
from modelfoundry.config import ServeConfig, load_config
from modelfoundry.config.monitor import MonitorConfig
from modelfoundry.data.sources import load_source
from modelfoundry.monitor.feedback import FeedbackLog
from modelfoundry.monitor.requestlog import RequestLog
from modelfoundry.serve.app import create_app
from modelfoundry.serve.store import RunDirStore
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def iris_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("feedback-iris")
    run(load_config(tiny_config(monitor={"log": {"sample": 1.0}})), run_dir=tmp / "run", progress=False)  # all ids
    return tmp / "run"


@pytest.fixture(scope="module")
def diabetes_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("feedback-diabetes")
    cfg = tiny_config(name="diab", data={"source": "sklearn:diabetes", "task": "regression"})
    run(load_config(cfg), run_dir=tmp / "run", progress=False)
    return tmp / "run"


@pytest.fixture(scope="module")
def iris():
    return load_source("sklearn:iris")


def monitored(run_dir, tmp_path, **log):
    config = MonitorConfig.model_validate({"log": {"url": f"sqlite:///{tmp_path / 'requests.db'}", "sample": 1.0,
                                                   **log},
                                           "feedback_window": 4})
    extension = FeedbackLog(config)
    return TestClient(create_app(ServeConfig(), RunDirStore(run_dir), extensions=[extension])), extension


def metric(client, name: str) -> float:
    line = next(line for line in client.get("/metrics").text.splitlines() if line.startswith(name + " ")
                or line.startswith(name + "{"))
    return float(line.split()[-1])


def test_logged_rows_get_feedback_and_the_live_accuracy_follows(iris_run, iris, tmp_path):
    records = iris.drop(columns="target").head(6).to_dict(orient="records")
    client, extension = monitored(iris_run, tmp_path)
    with client:
        answer = client.post("/predict", json={"records": records}).json()
        ids, predictions = answer["ids"], answer["predictions"]
        assert math.isnan(metric(client, "foundry_feedback_accuracy"))  # no feedback yet
        # feedback at once after the prediction: the row is written (or waited for) first
        first = client.post("/feedback", json={"id": ids[0], "label": predictions[0]})
        wrong = [label for label in (0, 1, 2) if label != predictions[1]][0]
        batch = client.post("/feedback", json={"feedback": [{"id": ids[1], "label": wrong},
                                                            {"id": ids[2], "label": predictions[2]}]})
        assert first.status_code == 200 and first.json()["accepted"] == 1 and first.json()["correct"] == 1
        assert batch.status_code == 200 and batch.json() == {"accepted": 2, "model": "tiny", "version": "run",
                                                             "correct": 1}
        assert metric(client, "foundry_feedback_accuracy") == pytest.approx(2 / 3)
        assert metric(client, "foundry_feedback_rows") == 3
        text = client.get("/metrics").text
        assert 'foundry_feedback_total{outcome="correct"} 2.0' in text
        assert 'foundry_feedback_total{outcome="incorrect"} 1.0' in text
        # the window holds the latest 4 labelled rows: three more correct ones push the wrong one out
        client.post("/feedback", json={"feedback": [{"id": i, "label": p} for i, p in zip(ids[3:], predictions[3:])]})
        assert metric(client, "foundry_feedback_accuracy") == 1.0 and metric(client, "foundry_feedback_rows") == 4
    logged = RequestLog(extension.log.url).read("tiny")
    assert logged["id"].tolist() == ids and logged["prediction"].tolist() == predictions
    assert logged["label"].tolist()[:3] == [predictions[0], wrong, predictions[2]]
    assert logged["sepal length (cm)"].tolist() == [r["sepal length (cm)"] for r in records]  # raw inputs


def test_unknown_ids_and_wrong_labels_are_clear_4xx_and_store_nothing(iris_run, iris, tmp_path):
    records = iris.drop(columns="target").head(2).to_dict(orient="records")
    client, extension = monitored(iris_run, tmp_path)
    with client:
        ids = client.post("/predict", json={"records": records}).json()["ids"]
        unknown = client.post("/feedback", json={"feedback": [{"id": ids[0], "label": 0},
                                                              {"id": "nope-0", "label": 1}]})
        request_id = client.post("/feedback", json={"id": ids[0].rsplit("-", 1)[0], "label": 0})
        as_text = client.post("/feedback", json={"id": ids[0], "label": "1"})
        unseen = client.post("/feedback", json={"id": ids[0], "label": 7})
        as_bool = client.post("/feedback", json={"id": ids[0], "label": True})
        malformed = client.post("/feedback", content=b"{not json", headers={"content-type": "application/json"})
        too_many = client.post("/feedback", json={"feedback": [{"id": f"x-{i}", "label": 0} for i in range(1001)]})
        counted = client.get("/metrics").text
    assert unknown.status_code == 404 and "'nope-0'" in unknown.json()["error"]
    assert "sample" in unknown.json()["hint"] and "evicted" in unknown.json()["hint"]
    assert request_id.status_code == 404 and "-0'" in request_id.json()["hint"]  # the hint names the row id
    for answer in (as_text, unseen, as_bool):
        assert answer.status_code == 422 and "0, 1, 2" in answer.json()["error"], answer.json()
    assert malformed.status_code == 422 and set(malformed.json()) == {"error", "hint"}
    assert too_many.status_code == 422 and "1 to 1000" in too_many.json()["error"]
    assert RequestLog(extension.log.url).read("tiny")["label"].tolist() == [None, None]  # all or nothing
    assert 'foundry_feedback_total{outcome="unknown_id"}' in counted
    assert 'foundry_feedback_total{outcome="invalid"}' in counted


def test_regression_feedback_gives_the_live_mae(diabetes_run, tmp_path):
    rows = load_source("sklearn:diabetes").drop(columns="target").head(3).to_dict(orient="records")
    client, _ = monitored(diabetes_run, tmp_path)
    with client:
        answer = client.post("/predict", json={"records": rows}).json()
        ids, predictions = answer["ids"], answer["predictions"]
        ok = client.post("/feedback", json={"feedback": [{"id": ids[0], "label": predictions[0] + 10},
                                                         {"id": ids[1], "label": predictions[1] - 20}]})
        assert ok.status_code == 200 and "correct" not in ok.json()
        assert metric(client, "foundry_feedback_mae") == pytest.approx(15, abs=1e-6)
        bad = client.post("/feedback", content=b'{"id": "%s", "label": NaN}' % ids[2].encode(),
                          headers={"content-type": "application/json"})
        text = client.post("/feedback", json={"id": ids[2], "label": "12"})
    assert bad.status_code == 422 and "finite number" in bad.json()["error"]
    assert text.status_code == 422


def test_sampling_privacy_and_the_bound(iris_run, iris, tmp_path):
    records = iris.drop(columns="target").head(4).to_dict(orient="records")
    client, extension = monitored(iris_run, tmp_path, sample=0.0)
    with client:
        answer = client.post("/predict", json={"records": records}).json()
    assert "ids" not in answer  # nothing sampled: no ids, nothing logged
    assert RequestLog(extension.log.url).read("tiny").empty
    client, extension = monitored(iris_run, tmp_path / "private", hash_columns=["sepal width (cm)"],
                                  exclude_columns=["petal width (cm)"], max_rows=100)
    with client:
        for _ in range(30):  # 120 rows: more than max_rows
            client.post("/predict", json={"records": records})
        client.app.state.served.extensions  # noqa: B018
        deadline = time.monotonic() + 10
        while len(extension.log.read("tiny")) < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
    logged = extension.log.read("tiny")
    assert 100 <= len(logged) <= 110  # the oldest were deleted (checked every tenth of max_rows)
    assert "petal width (cm)" not in logged.columns
    hashed = logged["sepal width (cm)"].iloc[-1]
    assert hashed == extension.log.hash_value(records[-1]["sepal width (cm)"]) and len(hashed) == 64
    assert str(records[-1]["sepal width (cm)"]) not in json.dumps(logged["sepal width (cm)"].tolist())


FEEDBACK_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                               lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                          max_size=3), max_leaves=8)


@pytest.fixture(scope="module")
def fuzz_client(iris_run, tmp_path_factory):
    client, _ = monitored(iris_run, tmp_path_factory.mktemp("fuzz"))
    with client:
        yield client


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(FEEDBACK_VALUES,
                      st.fixed_dictionaries({"id": FEEDBACK_VALUES, "label": FEEDBACK_VALUES}),
                      st.fixed_dictionaries({"feedback": st.lists(st.fixed_dictionaries(
                          {"id": st.text(max_size=90) | FEEDBACK_VALUES, "label": FEEDBACK_VALUES}), max_size=4)})))
def test_any_feedback_body_is_answered_without_a_500(fuzz_client, body):
    answer = fuzz_client.post("/feedback", content=json.dumps(body).encode(),
                              headers={"content-type": "application/json"})
    assert answer.status_code in (404, 422), answer.text
    assert set(answer.json()) == {"error", "hint"}


# ------------------------------------------------------------------------------ foundry serve's wiring
def served_app(monkeypatch, *args):
    """`foundry serve ARGS` with uvicorn replaced: (the app it would run, uvicorn's options, the CLI result)."""
    import uvicorn
    from typer.testing import CliRunner

    from modelfoundry.cli import app as cli_app

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.append((app, options)))
    result = CliRunner().invoke(cli_app, ["serve", *map(str, args)])
    assert result.exit_code == 0, result.output
    return (*started[0], result)


def extension_names(app) -> list[str]:
    with TestClient(app) as client:
        hooks = client.app.state.served.extensions
        return [e.name for e in hooks.extensions] if hooks else []


def test_foundry_serve_monitors_by_default_and_not_with_no_monitor(iris_run, iris, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default log: foundry-requests.db here (no foundry.db above)
    app, _, _ = served_app(monkeypatch, iris_run)
    records = iris.drop(columns="target").head(2).to_dict(orient="records")
    with TestClient(app) as client:
        assert [e.name for e in client.app.state.served.extensions.extensions] == ["request_log", "drift"]
        ids = client.post("/predict", json={"records": records}).json()["ids"]
        assert client.post("/feedback", json={"id": ids[1], "label": 2}).status_code == 200
    assert RequestLog(f"sqlite:///{tmp_path / 'foundry-requests.db'}").read("tiny")["label"].tolist() == [None, 2]
    app, _, _ = served_app(monkeypatch, iris_run, "--no-monitor")
    assert extension_names(app) == []
    with TestClient(app) as client:
        assert client.post("/feedback", json={"id": ids[0], "label": 0}).status_code == 404  # no such route
        assert "ids" not in client.post("/predict", json={"records": records}).json()


def test_a_shadow_writes_beside_the_request_log(iris_run, iris, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app, _, _ = served_app(monkeypatch, iris_run, "--shadow", iris_run)  # the model shadowing itself
    records = iris.drop(columns="target").head(3).to_dict(orient="records")
    with TestClient(app) as client:
        hooks = client.app.state.served.extensions.extensions
        assert [e.name for e in hooks] == ["request_log", "drift", "shadow"] and hooks[2].log is hooks[0].log
        answer = client.post("/predict", json={"records": records}).json()
        deadline = time.monotonic() + 20
        while hooks[0].log.read("tiny")["shadow_prediction"].isna().any() and time.monotonic() < deadline:
            time.sleep(0.05)
    logged = RequestLog(f"sqlite:///{tmp_path / 'foundry-requests.db'}").read("tiny")
    assert logged["shadow_prediction"].tolist() == answer["predictions"]  # the same model: the same answers


def test_each_worker_builds_its_own_monitoring(iris_run, tmp_path, monkeypatch):
    from modelfoundry.api import serving

    monkeypatch.chdir(tmp_path)
    for name in ("FOUNDRY_SERVE_MODEL", "FOUNDRY_SERVE_URI", "FOUNDRY_SERVE_SETTINGS", serving.ENV_MONITOR,
                 serving.ENV_SHADOW):
        monkeypatch.delenv(name, raising=False)  # start_server sets them for the workers: undone after the test
    app, options, _ = served_app(monkeypatch, iris_run, "--workers", 2)
    assert app == "modelfoundry.api.serving:build_worker_app" and options["workers"] == 2
    assert extension_names(serving.build_worker_app()) == ["request_log", "drift"]
    monkeypatch.setenv(serving.ENV_MONITOR, "")  # what --no-monitor hands the workers
    assert extension_names(serving.build_worker_app()) == []


def test_an_anomaly_detector_takes_true_or_false(tmp_path):
    cfg = tiny_config(name="bc-anomaly", data={"source": "sklearn:breast_cancer", "task": "anomaly",
                                               "anomaly": {"normal": 1}},
                      model={"name": "autoencoder", "hidden": [8, 2]}, training={"epochs": 2, "batch_size": 64,
                                                                                  "early_stopping": None})
    run(load_config(cfg), run_dir=tmp_path / "run", progress=False)
    rows = load_source("sklearn:breast_cancer").drop(columns="target").head(2).to_dict(orient="records")
    client, extension = monitored(tmp_path / "run", tmp_path)
    with client:
        answer = client.post("/predict", json={"records": rows}).json()
        ids, flags = answer["ids"], answer["predictions"]
        ok = client.post("/feedback", json={"feedback": [{"id": ids[0], "label": flags[0]},
                                                         {"id": ids[1], "label": not flags[1]}]})
        number = client.post("/feedback", json={"id": ids[0], "label": 1})
        assert metric(client, "foundry_feedback_accuracy") == 0.5
    assert ok.status_code == 200 and ok.json()["correct"] == 1
    assert number.status_code == 422 and "false, true" in number.json()["error"]
    assert extension.log.read("bc-anomaly")["prediction"].tolist() == flags  # logged as answered: true / false


def batch_record(run_dir, frame, requests, ids, start: float = 100.0):
    """A BatchRecord of `frame`'s rows answered by the run: `requests` rows per request, `ids` per request."""
    from modelfoundry.data.input_schema import InputSchema
    from modelfoundry.serve.extensions import BatchRecord, ModelIdentity

    backend = RunDirStore(run_dir).load().backend
    rows = InputSchema(backend.desc).from_frame(frame)
    return BatchRecord(ModelIdentity("tiny", "run", None, str(run_dir)), "classification", list(backend.labels),
                       list(backend.columns), rows, backend.predict_inputs(rows.inputs), None, tuple(requests), start,
                       tuple(ids))


def test_queued_batches_are_encoded_in_chunks_row_for_row(iris_run, iris, tmp_path):
    """Only rows with ids are logged, each with its own inputs and prediction, across the batches of a chunk."""
    import asyncio

    import numpy as np
    import pandas as pd

    from modelfoundry.data.input_schema import InputSchema
    from modelfoundry.serve.store import LoadedModel

    frame = iris.drop(columns="target").iloc[[0, 60, 120, 1, 61]].reset_index(drop=True)
    frame.iloc[1, 2] = np.nan  # a missing value: stored as null
    first = batch_record(iris_run, frame.iloc[:3], (2, 1), ("a", None))  # the second request was not sampled
    second = batch_record(iris_run, frame.iloc[3:], (2,), ("b",), start=101.0)
    extension = FeedbackLog(MonitorConfig.model_validate({"log": {"url": f"sqlite:///{tmp_path / 'r.db'}"}}))
    served = LoadedModel("tiny", "run", None, RunDirStore(iris_run).load().backend, iris_run)
    served.schema = InputSchema(served.backend.desc)
    extension.context = type("Context", (), {"served": type("Served", (), {"current": served})()})()
    for batch in (first, second):
        asyncio.run(extension.on_batch(batch))  # queued on the loop: nothing encoded or written yet
    assert extension.log.pending == 0 and len(extension._queue) == 2
    assert not (tmp_path / "r.db").exists()
    logged = extension.log.read("tiny")  # a read writes what is queued first
    kept = frame.iloc[[0, 1, 3, 4]].reset_index(drop=True)
    outputs = np.concatenate([first.outputs[:2], second.outputs])
    assert logged["id"].tolist() == ["a-0", "a-1", "b-0", "b-1"] and logged["time"].tolist() == [100.0] * 2 + [101.0] * 2
    assert logged["prediction"].tolist() == [first.labels[k] for k in outputs.argmax(1)]
    pd.testing.assert_frame_equal(logged[list(kept.columns)].astype(float), kept.astype(float))
    assert logged["ood_score"].notna().all() and len(set(logged["ood_score"])) == 4  # each row its own score


def test_the_queue_is_bounded_and_drops_are_counted(iris_run, iris, tmp_path, monkeypatch):
    import asyncio

    from prometheus_client import CollectorRegistry, Counter

    from modelfoundry.monitor import feedback

    monkeypatch.setattr(feedback, "MAX_QUEUED", 3)
    extension = FeedbackLog(MonitorConfig.model_validate({"log": {"url": f"sqlite:///{tmp_path / 'r.db'}"}}))
    extension.dropped = Counter("dropped", "", registry=CollectorRegistry())
    frame = iris.drop(columns="target").head(2)
    for name in ("a", "b", "c"):
        asyncio.run(extension.on_batch(batch_record(iris_run, frame, (2,), (name,))))
    assert extension.dropped._value.get() == 2  # the third batch: 4 rows already waited
    logged = extension.log.read("tiny")
    assert logged["id"].tolist() == ["a-0", "a-1", "b-0", "b-1"]  # no schema known: rows logged without inputs
    assert logged.columns[-1] == "shadow_prediction" and extension._queued == 0


def test_a_shadow_that_does_not_exist_fails_before_the_server_starts(iris_run, tmp_path, monkeypatch):
    from modelfoundry.api.serving import prepare_server
    from modelfoundry.errors import ModelNotFound, RunDirError

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # `foundry serve --uri` in an earlier test may set it
    with pytest.raises(ModelNotFound, match="tiny"):  # no registry here, or one without that alias
        prepare_server(iris_run, {}, shadow="tiny@challenger")
    with pytest.raises(RunDirError, match="'runs/nothing' is neither a run directory nor a registered model"):
        prepare_server(iris_run, {}, shadow="runs/nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="The shadow '.*empty' is not a run directory or a registered model"):
        prepare_server(iris_run, {}, shadow=str(tmp_path / "empty"))
