"""Server extensions (serve/extensions.py): each answered batch reaches them with its rows, outputs, warnings and
model identity, off the request path; a raising or slow extension never fails or delays a request."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from modelfoundry.api.training import run
from modelfoundry.config import ServeConfig, load_config
from modelfoundry.data.sources import load_source
from modelfoundry.errors import ConfigError
from modelfoundry.serve import extensions as ext
from modelfoundry.serve.app import create_app
from modelfoundry.serve.extensions import BatchRecord, ModelIdentity
from modelfoundry.serve.store import RunDirStore
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-ext")
    run(load_config(tiny_config()), run_dir=tmp / "run", progress=False)
    return tmp / "run"


@pytest.fixture(scope="module")
def rows():
    return load_source("sklearn:iris").drop(columns="target").head(5)


class Recorder:
    def __init__(self):
        self.seen: list[BatchRecord] = []

    def on_batch(self, batch: BatchRecord) -> None:
        self.seen.append(batch)


class AsyncRecorder(Recorder):
    async def on_batch(self, batch: BatchRecord) -> None:
        await asyncio.sleep(0)
        self.seen.append(batch)


class Boom:
    def on_batch(self, batch: BatchRecord) -> None:
        raise RuntimeError("extension bug")


class Blocked:
    """Holds every batch until the test releases it (sync: in the extension thread; async: on the loop)."""

    def __init__(self):
        self.release, self.seen = threading.Event(), 0

    def on_batch(self, batch: BatchRecord) -> None:
        self.release.wait(10)
        self.seen += 1


class AsyncBlocked(Blocked):
    async def on_batch(self, batch: BatchRecord) -> None:
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        self.seen += 1


def wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the extension was not called in time"
        time.sleep(0.01)


@pytest.mark.parametrize("recorder_class", [Recorder, AsyncRecorder], ids=["sync", "async"])
def test_an_extension_sees_each_predict_and_infer_batch(run_dir, rows, recorder_class):
    recorder = recorder_class()
    records = rows.to_dict(orient="records")
    records[1]["petal length (cm)"] = None  # imputed: a per-row warning
    inputs = [{"name": c, "shape": [3], "datatype": "FP64", "data": rows[c].head(3).tolist()} for c in rows.columns]
    with TestClient(create_app(ServeConfig(), RunDirStore(run_dir), extensions=[recorder])) as client:
        predicted = client.post("/predict", json={"records": records}).json()
        wait_for(lambda: len(recorder.seen) == 1)
        inferred = client.post("/v2/models/tiny/infer", json={"inputs": inputs}).json()
        wait_for(lambda: len(recorder.seen) == 2)
    first, second = recorder.seen
    assert first.model == second.model == ModelIdentity("tiny", "run", None)
    assert first.task == "classification" and first.labels == [0, 1, 2]
    assert first.columns == list(rows.columns) and first.requests == (5,) and second.requests == (3,)
    raw = rows.to_numpy(dtype=np.float64).copy()
    raw[1, 2] = np.nan
    np.testing.assert_array_equal(first.rows.numeric, raw)  # the raw values, as checked
    np.testing.assert_array_equal(second.rows.numeric, rows.head(3).to_numpy(dtype=np.float64))
    X = first.rows.inputs["numeric"]
    assert list(first.rows.inputs) == ["numeric"] and X.shape == (5, 4) and X.dtype == np.float32  # the model inputs
    np.testing.assert_allclose(first.outputs.round(8), predicted["probabilities"])
    np.testing.assert_allclose(second.outputs.round(8).ravel(), inferred["outputs"][1]["data"])
    assert first.warnings == predicted["warnings"] and first.warnings[1] and not first.warnings[0]
    assert second.warnings is None
    assert not first.outputs.flags.writeable  # extensions read; the answers stay as they were sent


def test_a_raising_extension_never_fails_a_request_and_is_counted(run_dir, rows):
    recorder = Recorder()
    body = {"records": rows.to_dict(orient="records")}
    with TestClient(create_app(ServeConfig(), RunDirStore(run_dir))) as plain:
        expected = plain.post("/predict", json=body).json()
    with TestClient(create_app(ServeConfig(), RunDirStore(run_dir), extensions=[Boom(), recorder])) as client:
        answers = [client.post("/predict", json=body) for _ in range(2)]
        wait_for(lambda: len(recorder.seen) == 2)  # the extension after the raising one still sees every batch
        metrics = client.get("/metrics").text
    assert [a.status_code for a in answers] == [200, 200] and all(a.json() == expected for a in answers)
    assert 'foundry_extension_errors_total{extension="Boom"} 2.0' in metrics


@pytest.mark.parametrize("blocked_class", [Blocked, AsyncBlocked], ids=["sync", "async"])
def test_a_slow_extension_does_not_delay_responses(run_dir, rows, blocked_class):
    blocked = blocked_class()
    body = {"records": rows.to_dict(orient="records")}
    with TestClient(create_app(ServeConfig(), RunDirStore(run_dir), extensions=[blocked])) as client:
        answers = [client.post("/predict", json=body) for _ in range(3)]  # while the extension holds batch 1
        assert [a.status_code for a in answers] == [200, 200, 200] and blocked.seen == 0
        blocked.release.set()
        wait_for(lambda: blocked.seen == 3)


def test_records_are_dropped_and_counted_when_extensions_fall_behind(run_dir, rows, monkeypatch):
    monkeypatch.setattr(ext, "QUEUE_SIZE", 1)
    blocked = Blocked()
    body = {"records": rows.to_dict(orient="records")}
    with TestClient(create_app(ServeConfig(), RunDirStore(run_dir), extensions=[blocked])) as client:
        answers = [client.post("/predict", json=body) for _ in range(4)]
        wait_for(lambda: dropped(client) > 0)
        blocked.release.set()
        wait_for(lambda: blocked.seen + dropped(client) == 4)
    assert all(a.status_code == 200 for a in answers)
    assert 1 <= 4 - blocked.seen <= 2  # one held by the extension, one queued, the rest dropped


def dropped(client: TestClient) -> float:
    line = next(line for line in client.get("/metrics").text.splitlines()
                if line.startswith("foundry_extension_dropped_total "))
    return float(line.split()[1])


def test_without_extensions_nothing_is_built_and_metrics_are_unchanged(run_dir, rows):
    with TestClient(create_app(ServeConfig(), RunDirStore(run_dir))) as client:
        assert client.post("/predict", json={"records": rows.to_dict(orient="records")}).status_code == 200
        assert client.app.state.served.extensions is None
        assert "foundry_extension" not in client.get("/metrics").text


def test_an_object_without_on_batch_is_refused_when_the_app_is_built(run_dir):
    with pytest.raises(ConfigError, match="has no on_batch"):
        create_app(ServeConfig(), RunDirStore(run_dir), extensions=[object()])


def test_the_python_serve_verb_passes_extensions_to_a_one_process_server(run_dir, monkeypatch):
    import uvicorn

    from modelfoundry.api.serving import serve
    from modelfoundry.errors import ConfigError

    class Seen:
        def on_batch(self, record):
            pass

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.append((app, options)))
    extension = Seen()
    serve(run_dir, extensions=[extension], port=0)
    (app, options), = started
    with TestClient(app) as client:  # the app really carries the extension
        assert client.get("/v2/health/ready").status_code == 200
        assert app.state.served.extensions is not None
    with pytest.raises(ConfigError, match="one process, but serve.workers is 2"):
        serve(run_dir, extensions=[extension], workers=2)
    assert len(started) == 1  # nothing started for the refused plan
