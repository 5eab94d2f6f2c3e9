"""The inference server in-process (FastAPI TestClient): OIP v2, /predict, and 4xx for bad input."""

import json
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from modelfoundry.artifacts.inputs import rows_of
from modelfoundry.config import load_config
from modelfoundry.data.sources import load_source
from modelfoundry.api.prediction import predict
from modelfoundry.api.training import run
from modelfoundry.config import ServeConfig
from modelfoundry.serve.app import create_app
from modelfoundry.serve.store import RunDirStore
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    cfg = load_config(tiny_config(name="bc", data={"source": "sklearn:breast_cancer"},
                                  model={"name": "mlp", "hidden": [16], "batch_norm": True}, training={"epochs": 5},
                                  serve={"max_batch_size": 32, "on_unseen": "reject"},
                                  monitor={"log": {"sample": 1.0}}))  # every request logged: ids to check
    run(cfg, run_dir=tmp / "run", progress=False)
    return tmp / "run"


@pytest.fixture(scope="module", params=["onnx", "torch"])
def client(run_dir, request):
    with TestClient(create_app(ServeConfig(max_records=500), RunDirStore(run_dir, backend=request.param))) as c:
        yield c


@pytest.fixture(scope="module")
def rows():
    return load_source("sklearn:breast_cancer").drop(columns="target").head(25)


def test_health_and_metadata(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    meta = client.get("/v2/models/bc").json()
    assert meta["name"] == "bc" and meta["versions"] == ["run"] and len(meta["inputs"]) == 30
    assert meta["inputs"][0]["name"] == "mean radius" and meta["outputs"][1]["shape"] == [-1, 2]
    assert client.get("/v2/models/other").status_code == 404


def test_predict_matches_foundry_predict(client, run_dir, rows, tmp_path):
    body = client.post("/predict", json={"records": rows.to_dict(orient="records")}).json()
    rows.to_csv(tmp_path / "rows.csv", index=False)
    expected = predict(run_dir, tmp_path / "rows.csv")
    assert body["predictions"] == expected.prediction.tolist() and body["model"] == "bc"
    probabilities = pd.DataFrame(body["probabilities"], columns=["prob_0", "prob_1"])
    assert (probabilities - expected[["prob_0", "prob_1"]]).abs().max().max() < 1e-4


def test_oip_v2_infer(client, rows):
    inputs = [{"name": c, "shape": [len(rows)], "datatype": "FP64", "data": rows[c].tolist()} for c in rows.columns]
    out = client.post("/v2/models/bc/infer", json={"id": "42", "inputs": inputs}).json()
    assert out["model_name"] == "bc" and out["id"] == "42"
    predictions, probabilities = out["outputs"][:2]  # then "warnings" when some row is out of the training range
    assert predictions["shape"] == [25] and probabilities["shape"] == [25, 2] and len(probabilities["data"]) == 50
    single = client.post("/predict", json={"records": rows.head(1).to_dict(orient="records")}).json()
    assert predictions["data"][0] == single["predictions"][0]


@pytest.mark.parametrize("payload,fragment", [
    ({"records": [{"mean radius": 1.0}]}, "lacks column"),
    ({"records": []}, "records"),
    ({"rows": []}, "records"),
    ({"records": [{"mean radius": "big"}]}, "lacks column"),
])
def test_bad_predict_requests_get_4xx_naming_the_problem(client, payload, fragment):
    response = client.post("/predict", json=payload)
    assert response.status_code == 422 and fragment in response.json()["error"]


def test_bad_values_and_shapes_are_422(client, rows):
    record = rows.head(1).to_dict(orient="records")[0] | {"mean texture": "abc"}
    response = client.post("/predict", json={"records": [record]})
    assert response.status_code == 422 and "'mean texture'" in response.json()["error"]
    inputs = [{"name": "mean radius", "shape": [2, 3], "datatype": "FP64", "data": [1, 2]}]
    response = client.post("/v2/models/bc/infer", json={"inputs": inputs})
    assert response.status_code == 422 and "'mean radius'" in response.json()["error"]
    response = client.post("/predict", json={"records": [record] * 501})
    assert response.status_code == 422 and "at most 500" in response.json()["error"]
    assert client.post("/predict", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422


@pytest.mark.slow  # a few seconds: the full suite runs it
def test_foundry_serve_runs_uvicorn_and_shuts_down_on_sigterm(run_dir, rows, tmp_path):
    """The real command: uvicorn on loopback, a request over TCP (logged with its ids, monitoring being on by
    default), then SIGTERM and a clean exit."""
    import json
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "modelfoundry.cli", "serve", str(Path(run_dir).resolve()),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{base}/v2/health/ready", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        request = urllib.request.Request(f"{base}/predict", headers={"content-type": "application/json"},
                                         data=json.dumps({"records": rows.head(2).to_dict(orient="records")}).encode())
        body = json.load(urllib.request.urlopen(request, timeout=10))
        assert len(body["predictions"]) == 2 and body["model"] == "bc" and len(body["ids"]) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode()
    # uvicorn drains, runs shutdown, then re-raises the signal (exit -15) as process managers expect
    assert proc.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in output
    from modelfoundry.monitor.requestlog import RequestLog

    assert RequestLog(f"sqlite:///{tmp_path / 'foundry-requests.db'}").read("bc")["id"].tolist() == body["ids"]


def test_metrics_follow_prometheus_naming(client, rows):
    client.post("/predict", json={"records": rows.head(3).to_dict(orient="records")})
    client.post("/predict", json={"records": [{"mean radius": 1.0}]})
    text = client.get("/metrics").text
    assert 'foundry_requests_total{route="/predict",status="200"}' in text
    assert 'foundry_requests_total{route="/predict",status="422"}' in text
    assert 'foundry_model_info{alias="",model="bc",version="run"} 1.0' in text
    for name in ("foundry_request_duration_seconds_bucket", "foundry_queue_duration_seconds_count",
                 "foundry_batch_size_bucket", "foundry_inflight_requests"):
        assert name in text


def test_a_bad_request_in_a_shared_batch_fails_alone(run_dir, rows):
    from concurrent.futures import ThreadPoolExecutor

    settings = ServeConfig(max_batch_size=64, max_latency_ms=200)  # long window: requests share batches
    good = {"records": rows.head(2).to_dict(orient="records")}
    bad = {"records": [rows.head(1).to_dict(orient="records")[0] | {"mean area": "huge"}]}
    with TestClient(create_app(settings, RunDirStore(run_dir))) as c, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda body: c.post("/predict", json=body), [good, bad] * 4))
        batches = [line for line in c.get("/metrics").text.splitlines() if line.startswith("foundry_batch_size_count")]
    assert [a.status_code for a in answers] == [200, 422] * 4
    assert "'mean area'" in answers[1].json()["error"]
    assert float(batches[0].split()[-1]) < 8  # some requests did share a batch


@pytest.mark.slow  # a few seconds: the full suite runs it
def test_overload_answers_503_with_retry_after(run_dir, rows):
    import time
    from concurrent.futures import ThreadPoolExecutor

    class SlowStore(RunDirStore):
        def load(self, version=None):
            loaded = super().load(version)
            predict_inputs = loaded.backend.predict_inputs
            loaded.backend.predict_inputs = lambda X: (time.sleep(0.3), predict_inputs(X))[1]
            return loaded

    settings = ServeConfig(max_batch_size=1, max_queue_size=1, queue_timeout_ms=5000)
    body = {"records": rows.head(1).to_dict(orient="records")}
    with TestClient(create_app(settings, SlowStore(run_dir))) as c, ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: c.post("/predict", json=body), range(6)))
    codes = sorted(a.status_code for a in answers)
    assert 200 in codes and 503 in codes and set(codes) <= {200, 503}
    busy = next(a for a in answers if a.status_code == 503)
    assert int(busy.headers["retry-after"]) >= 1 and "overloaded" in busy.json()["error"]


def test_api_keys_rate_limit_and_body_limit(run_dir, rows, tmp_path):
    from typer.testing import CliRunner

    from modelfoundry.cli import app as cli_app

    made = CliRunner().invoke(cli_app, ["keys", "create", "alice", "--file", str(tmp_path / "keys.txt")])
    assert made.exit_code == 0, made.output
    key = made.output.strip().splitlines()[-1]
    assert key not in (tmp_path / "keys.txt").read_text()  # only the hash is stored
    settings = ServeConfig(api_keys_file=str(tmp_path / "keys.txt"), rate_limit_per_s=0.5, rate_burst=2,
                             max_body_mb=0.1)
    body = {"records": rows.head(1).to_dict(orient="records")}
    with TestClient(create_app(settings, RunDirStore(run_dir))) as c:
        assert c.get("/v2/health/ready").status_code == 200  # health stays open
        missing = c.post("/predict", json=body)
        assert missing.status_code == 401 and "missing API key" in missing.json()["error"]
        assert missing.headers["www-authenticate"] == "Bearer"
        assert c.post("/predict", json=body, headers={"X-API-Key": "mf_wrong"}).status_code == 401
        auth = {"Authorization": f"Bearer {key}"}
        assert [c.post("/predict", json=body, headers=auth).status_code for _ in range(2)] == [200, 200]
        limited = c.post("/predict", json=body, headers=auth)
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        big = c.post("/predict", content=b"x" * 10_000_000, headers={**auth, "content-type": "application/json"})
        assert big.status_code == 413 and "exceeds the limit" in big.json()["error"]
        text = c.get("/metrics").text
    for status in ("401", "429", "413"):
        assert f'route="/predict",status="{status}"' in text


def test_one_error_shape_for_bad_bodies_unknown_routes_and_methods(client):
    json_header = {"content-type": "application/json"}
    answers = {
        "unparseable": (client.post("/predict", content=b"{not json", headers=json_header), 422),
        "truncated": (client.post("/v2/models/bc/infer", content=b'{"inputs": [', headers=json_header), 422),
        "nested": (client.post("/predict", content=b"[" * 100_000 + b"]" * 100_000, headers=json_header), 422),
        "not utf-8": (client.post("/predict", content=b'{"records": "\xff"}', headers=json_header), 422),
        "form": (client.post("/predict", content=b"records=1",
                             headers={"content-type": "application/x-www-form-urlencoded"}), 415),
        "list body": (client.post("/predict", json=[1, 2]), 422),
        "record not an object": (client.post("/predict", json={"records": [[1, 2]]}), 422),
        "oip validation": (client.post("/v2/models/bc/infer", json={"inputs": [{"name": "x"}]}), 422),
        "no route": (client.get("/nowhere"), 404),
        "wrong method": (client.get("/predict"), 405),
        "docs off": (client.get("/docs"), 404),
        "redoc off": (client.get("/redoc"), 404),
        "openapi off": (client.get("/openapi.json"), 404),
    }
    for what, (answer, status) in answers.items():
        assert answer.status_code == status, (what, answer.text)
        body = answer.json()
        assert set(body) == {"error", "hint"} and body["error"] and body["hint"], (what, body)
    assert "POST" in answers["wrong method"][0].json()["hint"]
    assert "/predict" in answers["no route"][0].json()["hint"]


def test_openapi_only_when_asked_and_behind_the_key(run_dir, tmp_path):
    from modelfoundry.serve.security import create_key

    with TestClient(create_app(ServeConfig(openapi=True), RunDirStore(run_dir))) as c:
        schema = c.get("/openapi.json").json()
        assert "/predict" in schema["paths"] and c.get("/docs").status_code == 404
        assert "records" in json.dumps(schema["paths"]["/predict"]["post"]["requestBody"])
    key = create_key(tmp_path / "keys.txt", "ops")
    with TestClient(create_app(ServeConfig(openapi=True, api_keys_file=str(tmp_path / "keys.txt")),
                               RunDirStore(run_dir))) as c:
        assert c.get("/openapi.json").status_code == 401
        assert c.get("/openapi.json", headers={"X-API-Key": key}).status_code == 200


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN", "1e308", "1e400"])
def test_non_finite_and_float32_overflowing_values_are_422_naming_the_column(client, rows, value):
    body = json.dumps({"records": [rows.head(1).to_dict(orient="records")[0] | {"mean area": "X"}]})
    answer = client.post("/predict", content=body.replace('"X"', value).encode(),
                         headers={"content-type": "application/json"})
    assert answer.status_code == 422 and "'mean area'" in answer.json()["error"], answer.text


def test_settings_come_from_the_model_config_and_flags_override_only_given_keys(run_dir):
    from modelfoundry.serve.store import serve_settings

    settings = serve_settings(RunDirStore(run_dir), {"port": 9123, "max_records": 7})
    assert (settings.port, settings.max_records) == (9123, 7)  # flags given
    assert (settings.max_batch_size, settings.on_unseen) == (32, "reject")  # the model's serve: section
    assert settings.max_latency_ms == 5.0 and settings.host == "127.0.0.1"  # schema defaults


def test_foundry_serve_with_a_bad_model_is_one_paragraph(tmp_path, run_dir):
    from typer.testing import CliRunner

    from modelfoundry.cli import app as cli_app

    (tmp_path / "file.txt").write_text("x")
    cases = {"no/such/run": ("neither a run directory nor a registered model", 4),
             str(tmp_path / "file.txt"): ("is a file", 4),
             str(tmp_path): ("not a run directory", 4)}
    for model, (fragment, code) in cases.items():
        result = CliRunner().invoke(cli_app, ["serve", model])
        assert result.exit_code == code and fragment in result.output, (model, result.output)
        assert "Traceback" not in result.output
    result = CliRunner().invoke(cli_app, ["serve", str(run_dir), "--on-unseen", "maybe"])
    assert result.exit_code == 2 and "serve.on_unseen" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_foundry_serve_with_an_unknown_registered_model_is_one_paragraph(tmp_path):
    from typer.testing import CliRunner

    from modelfoundry.cli import app as cli_app

    for ref in ("nosuch", "nosuch/3", "nosuch@live"):  # an empty registry
        result = CliRunner().invoke(cli_app, ["serve", ref, "--uri", f"sqlite:///{tmp_path}/registry.db"])
        assert result.exit_code == 6 and "No registered model 'nosuch'" in result.output, (ref, result.output)
        assert "Traceback" not in result.output


def test_foundry_serve_on_an_unreachable_store_is_one_paragraph(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from modelfoundry.cli import app as cli_app

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    result = CliRunner().invoke(cli_app, ["serve", "bc@production", "--uri", "http://ops:hunter2@127.0.0.1:9"])
    assert result.exit_code == 6, result.output
    assert "could not be used" in result.output and "Traceback" not in result.output
    assert "hunter2" not in result.output  # the password in the URI is redacted


def test_a_failing_model_call_is_retried_alone_and_never_a_plain_500(run_dir, rows):
    from concurrent.futures import ThreadPoolExecutor

    class FlakyStore(RunDirStore):  # the model call fails for more than 2 rows at once
        def load(self, version=None):
            loaded = super().load(version)
            predict_inputs = loaded.backend.predict_inputs

            def flaky(X):
                if rows_of(X) > 2:
                    raise RuntimeError("kernel crashed")
                return predict_inputs(X)
            loaded.backend.predict_inputs = flaky
            return loaded

    one = {"records": rows.head(1).to_dict(orient="records")}
    with TestClient(create_app(ServeConfig(max_latency_ms=100), FlakyStore(run_dir))) as c, \
            ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: c.post("/predict", json=one), range(6)))
        assert [a.status_code for a in answers] == [200] * 6  # batches failed, each request alone succeeded
        batches = next(line for line in c.get("/metrics").text.splitlines()
                       if line.startswith("foundry_batch_size_count"))
        assert float(batches.split()[-1]) < 6  # so some requests did share a (failing) batch
        three = c.post("/predict", json={"records": rows.head(3).to_dict(orient="records")})
    assert three.status_code == 500 and three.headers["content-type"] == "application/json"
    assert "RuntimeError: kernel crashed" in three.json()["error"] and "server log" in three.json()["hint"]


def test_cheap_models_run_inline_and_slow_ones_in_a_thread(run_dir, rows):
    """Warm-up times a full batch: the tiny MLP runs on the event loop (a thread hop would cost more than
    the call), a model slower than INLINE_CALL_S goes to a worker thread; both answer the same."""
    import threading
    import time

    from modelfoundry.serve import app as app_module

    seen: dict[str, set] = {"fast": set(), "slow": set()}

    class TimedStore(RunDirStore):
        def __init__(self, run_dir, delay_s, key):
            super().__init__(run_dir)
            self.delay_s, self.key = delay_s, key

        def load(self, version=None):
            loaded = super().load(version)
            call = loaded.backend.predict_inputs

            def timed(X):
                seen[self.key].add(threading.current_thread() is threading.main_thread())
                time.sleep(self.delay_s)
                return call(X)
            loaded.backend.predict_inputs = timed
            return loaded

    records = {"records": rows.head(3).to_dict(orient="records")}
    answers = {}
    for key, delay_s in (("fast", 0.0), ("slow", 5 * app_module.INLINE_CALL_S)):
        with TestClient(create_app(ServeConfig(), TimedStore(run_dir, delay_s, key))) as c:
            assert c.app.state.served.current.inline is (key == "fast")
            seen[key].clear()  # warm-up ran in a thread; what matters is where requests run
            answers[key] = c.post("/predict", json=records).json()["predictions"]
    assert answers["fast"] == answers["slow"]
    assert seen["slow"] == {False}  # a worker thread, never the event loop's
