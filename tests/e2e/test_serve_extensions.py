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
    assert first.model == second.model == ModelIdentity("tiny", "run", None, str(run_dir))
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


class Monitor(Recorder):
    """Every optional member: ids for all requests, a per-row score, a route of its own, start/stop."""

    id_share = 1.0

    def __init__(self):
        super().__init__()
        self.events: list[str] = []
        self.context = None

    def setup(self, context: ext.ServerContext) -> None:
        self.context = context

        @context.app.get("/monitor-test", dependencies=context.guard)
        async def route() -> dict:
            return {"model": context.served.get().name}

    async def start(self) -> None:
        self.events.append(f"start:{self.context.served.current.name}")  # the model is loaded by then

    async def stop(self) -> None:
        self.events.append(f"stop:{len(self.seen)}")  # after the queued records were delivered

    def row_scores(self, model, rows) -> dict:
        return {"total": [float(v) for v in rows.numeric.sum(axis=1)]}


def test_requests_get_row_ids_that_reach_the_batch_record(run_dir, rows):
    monitor = Monitor()
    records = rows.to_dict(orient="records")
    inputs = [{"name": c, "shape": [3], "datatype": "FP64", "data": rows[c].head(3).tolist()} for c in rows.columns]
    with TestClient(create_app(ServeConfig(), RunDirStore(run_dir), extensions=[monitor])) as client:
        predicted = client.post("/predict", json={"records": records}).json()
        inferred = client.post("/v2/models/tiny/infer", json={"inputs": inputs}).json()
        wait_for(lambda: len(monitor.seen) == 2)
        assert client.get("/monitor-test").json() == {"model": "tiny"}  # the route setup added
    ids = predicted["ids"]
    assert len(ids) == 5 and len({i.rsplit("-", 1)[0] for i in ids}) == 1 and ids[4].endswith("-4")
    assert monitor.seen[0].row_ids() == ids and monitor.seen[0].ids == (ids[0][:-2],)
    outputs = {o["name"]: o for o in inferred["outputs"]}
    assert outputs["ids"]["datatype"] == "BYTES" and monitor.seen[1].row_ids() == outputs["ids"]["data"]
    assert set(ids).isdisjoint(outputs["ids"]["data"])  # each request its own id
    assert "total" not in predicted and "total" not in outputs  # scores only when asked
    assert monitor.events == ["start:tiny", "stop:2"]
    assert monitor.context.registry is client.app.state.metrics.registry


def test_per_row_scores_are_answered_when_asked(run_dir, rows):
    records = rows.to_dict(orient="records")
    totals = rows.sum(axis=1).tolist()
    inputs = [{"name": c, "shape": [5], "datatype": "FP64", "data": rows[c].tolist()} for c in rows.columns]
    with TestClient(create_app(ServeConfig(), RunDirStore(run_dir), extensions=[Monitor()])) as client:
        predicted = client.post("/predict", json={"records": records, "ood": True}).json()
        inferred = client.post("/v2/models/tiny/infer", json={"inputs": inputs, "parameters": {"ood": True}}).json()
        wrong = client.post("/predict", json={"records": records, "ood": "yes"})
    np.testing.assert_allclose(predicted["total"], totals)
    scored = next(o for o in inferred["outputs"] if o["name"] == "total")
    assert scored["datatype"] == "BYTES" and scored["shape"] == [5]
    np.testing.assert_allclose([float(v) for v in scored["data"]], totals)  # one JSON value per row
    assert wrong.status_code == 422 and "'ood' must be true or false" in wrong.json()["error"]


@pytest.mark.parametrize("extensions", [[], [Recorder()]], ids=["none", "no-scores"])
def test_asking_for_scores_no_extension_gives_is_a_400_with_a_hint(run_dir, rows, extensions):
    with TestClient(create_app(ServeConfig(), RunDirStore(run_dir), extensions=extensions)) as client:
        answer = client.post("/predict", json={"records": rows.to_dict(orient="records"), "ood": True})
        plain = client.post("/predict", json={"records": rows.to_dict(orient="records")}).json()
    assert answer.status_code == 400 and "--monitor" in answer.json()["hint"]
    assert "ids" not in plain  # no extension asked for ids
    assert all(r.ids == () and r.row_ids() == [None] * 5 for r in extensions[0].seen) if extensions else True


def test_a_request_run_in_slices_keeps_its_row_ids(run_dir, rows):
    monitor = Monitor()
    settings = ServeConfig(max_batch_size=2)
    with TestClient(create_app(settings, RunDirStore(run_dir), extensions=[monitor])) as client:
        ids = client.post("/predict", json={"records": rows.to_dict(orient="records")}).json()["ids"]
        wait_for(lambda: sum(len(r.outputs) for r in monitor.seen) == 5)
    assert [r.offsets or (0,) for r in monitor.seen] == [(0,), (2,), (4,)]
    assert [i for r in monitor.seen for i in r.row_ids()] == ids


def test_extension_routes_are_behind_the_api_key(run_dir, tmp_path):
    from modelfoundry.serve.security import create_key

    key = create_key(tmp_path / "keys.txt", "tester")
    settings = ServeConfig(api_keys_file=str(tmp_path / "keys.txt"))
    with TestClient(create_app(settings, RunDirStore(run_dir), extensions=[Monitor()])) as client:
        assert client.get("/monitor-test").status_code == 401
        assert client.get("/monitor-test", headers={"Authorization": f"Bearer {key}"}).status_code == 200
