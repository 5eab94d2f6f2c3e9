"""Tracking and the registry on real MLflow (SQLite): lineage, aliases, rollback, history, diff, references."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from modelfoundry.cli import app
from modelfoundry.config import load_config
from modelfoundry.errors import ModelNotFound, RegistryError
from modelfoundry.api.prediction import predict
from modelfoundry.api.training import run
from tests.conftest import tiny_config

runner = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One tracking store holding two versions of model 'iris' (different learning rates)."""
    tmp = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{tmp / 'foundry.db'}"
    tracking = {"enabled": True, "uri": uri, "artifacts": str(tmp / "mlartifacts")}
    runs = []
    for i, lr in enumerate((1e-3, 1e-2)):
        cfg = load_config(tiny_config(name="iris", tracking=tracking, training={"epochs": 4, "optimizer": {"lr": lr}},
                                      data={"source": "sklearn:iris", "features": {"petal*": {"scale": "minmax"}}}))
        runs.append(run(cfg, run_dir=tmp / f"run{i}", progress=False))
    return {"uri": uri, "runs": runs, "tmp": tmp}


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_each_run_is_logged_and_registered_with_lineage(store):
    from modelfoundry.registry import client, show

    first, second = (r.extras["registry"] for r in store["runs"])
    assert (first["version"], second["version"]) == ("1", "2")
    info = show("iris/1", store["uri"])
    tags = info["tags"]
    manifest = json.loads((store["tmp"] / "run0/manifest.json").read_text())
    assert tags["foundry.data_sha256"] == manifest["dataset"]["sha256"]
    assert tags["foundry.config_hash"] == manifest["config_hash"] and tags["foundry.task"] == "classification"
    assert tags["foundry.run_dir"] == str((store["tmp"] / "run0").resolve())
    assert info["metrics"]["accuracy"] == pytest.approx(store["runs"][0].metrics["accuracy"])
    mlf = client(store["uri"])
    assert len(mlf.get_metric_history(first["run_id"], "val_loss")) == 4
    params = mlf.get_run(first["run_id"]).data.params
    assert params["training.optimizer.lr"] == "0.001" and params["data.source"] == "sklearn:iris"
    assert params["data.features.petal_.scale"] == "minmax"  # '*' is not allowed in MLflow keys
    artifacts = {a.path for a in mlf.list_artifacts(first["run_id"])}
    assert {"model", "eval", "config.yaml", "preprocess.json", "manifest.json"} <= artifacts


def test_promote_rollback_and_history(store):
    from modelfoundry.registry import history, promote, rollback, show

    uri = store["uri"]
    promote("iris", "1", "production", "first", uri)
    promote("iris", "2", "production", "better", uri)
    assert show("iris@production", uri)["version"] == "2"
    entry = rollback("iris", "production", "regression in prod", uri)
    assert (entry["from"], entry["to"]) == ("2", "1") and show("iris", uri)["aliases"] == {"production": "1"}
    with pytest.raises(RegistryError, match="no earlier version"):
        rollback("iris", "production", "", uri)
    moves = history("iris", uri)
    assert [(m["action"], m["from"], m["to"]) for m in moves] == [("promote", None, "1"), ("promote", "1", "2"),
                                                                 ("rollback", "2", "1")]
    assert moves[2]["reason"] == "regression in prod" and moves[0]["user"]


def test_diff_shows_config_and_metric_differences(store):
    from modelfoundry.registry import diff

    result = diff("iris", "1", "2", store["uri"])
    assert result["config"]["training.optimizer.lr"] == [0.001, 0.01]
    assert "name" not in result["config"] and "accuracy" in result["metrics"]


def test_registered_references_work_where_run_directories_do(store, tmp_path, monkeypatch):
    from modelfoundry.data.sources import load_source
    from modelfoundry.registry import promote

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    monkeypatch.chdir(tmp_path)  # the download cache goes under the working directory
    promote("iris", "2", "staging", "", store["uri"])
    rows = tmp_path / "rows.csv"
    load_source("sklearn:iris").drop(columns="target").head(20).to_csv(rows, index=False)
    from_registry = predict("iris@staging", rows)
    from_run = predict(store["tmp"] / "run1", rows)
    assert from_registry.equals(from_run)
    with pytest.raises(ModelNotFound, match="Did you mean 'iris'"):
        predict("irs@staging", rows)
    with pytest.raises(ModelNotFound, match="no alias 'canary'"):
        predict("iris@canary", rows)


def test_registry_commands(store):
    uri = store["uri"]
    assert "iris" in cli("registry", "list", "--uri", uri)
    shown = cli("registry", "show", "iris/2", "--uri", uri)
    assert "iris v2" in shown and "config_hash" in shown and "test accuracy" in shown
    assert "iris@canary: v- -> v2" in cli("registry", "promote", "iris", "2", "--alias", "canary", "--reason", "try",
                                          "--uri", uri)
    assert "iris@canary: v2 -> v1" in cli("registry", "promote", "iris", "1", "--alias", "canary", "--uri", uri)
    assert "iris@canary: v1 -> v2 (rolled back)" in cli("registry", "rollback", "iris", "--alias", "canary", "--uri", uri)
    moves = cli("registry", "history", "iris", "--uri", uri)
    assert "canary" in moves and "try" in moves and "rollback" in moves
    assert "training.optimizer.lr" in cli("registry", "diff", "iris", "1", "2", "--uri", uri)
    result = runner.invoke(app, ["registry", "show", "nope", "--uri", uri])
    assert result.exit_code == 6 and "No registered model 'nope'" in result.output


def test_a_failed_registration_leaves_no_version(store, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from modelfoundry.registry import show

    def broken(*args, **kwargs):
        raise RuntimeError("store went away")

    monkeypatch.setattr(MlflowClient, "create_model_version", broken)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(name="iris", tracking={"enabled": True, "uri": store["uri"]})))
    result = runner.invoke(app, ["run", str(cfg), "--run-dir", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 6 and "store went away" in result.output and "complete in" in result.output
    assert (tmp_path / "run/model/weights.pt").is_file()
    monkeypatch.undo()
    assert [v["version"] for v in show("iris", store["uri"])["versions"]] == ["1", "2"]


@pytest.mark.slow  # a few seconds: the full suite runs it
def test_export_a_registered_version_records_parity_on_it(store, tmp_path, monkeypatch):
    from modelfoundry.registry import show

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])  # export finds the store as a user's shell would
    output = cli("export", "iris/1", "-o", tmp_path / "onnx")
    assert "max |torch - onnxruntime|" in output and (tmp_path / "onnx/model.onnx").is_file()
    tags = show("iris/1", store["uri"])["tags"]
    assert float(tags["foundry.onnx.max_abs_diff"]) < 1e-4 and tags["foundry.onnx.rows_checked"] == "23"
    result = runner.invoke(app, ["export", "iris/1", "--format", "tflite"])
    assert result.exit_code == 2 and "Valid names: onnx" in result.output


def test_archive_moves_a_version_to_another_registry(store, tmp_path, monkeypatch):
    import tarfile

    from modelfoundry.registry import show

    monkeypatch.chdir(tmp_path)
    archive = tmp_path / "iris-2.tar.gz"
    cli("models", "export", "iris/2", "-o", archive, "--uri", store["uri"])
    other = f"sqlite:///{tmp_path / 'other.db'}"
    output = cli("models", "import", archive, "--uri", other)
    assert "Registered iris v1" in output
    original, moved = show("iris/2", store["uri"]), show("iris/1", other)
    for key in ("foundry.config_hash", "foundry.data_sha256", "foundry.task"):
        assert moved["tags"][key] == original["tags"][key]
    assert moved["tags"]["foundry.imported_from"].startswith("iris/2 @ sqlite:///")
    assert moved["metrics"]["accuracy"] == pytest.approx(original["metrics"]["accuracy"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    rows = tmp_path / "rows.csv"
    from modelfoundry.data.sources import load_source

    load_source("sklearn:iris").drop(columns="target").to_csv(rows, index=False)
    assert predict("iris/1", rows).equals(predict(store["tmp"] / "run1", rows))

    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(rows, arcname="../escape.csv")
    result = runner.invoke(app, ["models", "import", str(evil), "--uri", other])
    assert result.exit_code == 6 and "points outside the archive" in result.output
    assert not (tmp_path.parent / "escape.csv").exists()
    result = runner.invoke(app, ["models", "export", "iris", "-o", str(tmp_path / "x.tar.gz"), "--uri", other])
    assert result.exit_code == 6 and "names a model, not a version" in result.output


@pytest.mark.slow
def test_server_follows_an_alias_move_without_failing_a_request(store, tmp_path, monkeypatch):
    import threading
    import time

    from fastapi.testclient import TestClient

    from modelfoundry.data.sources import load_source
    from modelfoundry.registry import promote
    from modelfoundry.config import ServeConfig
    from modelfoundry.serve.app import create_app
    from modelfoundry.serve.store import RegistryStore

    monkeypatch.chdir(tmp_path)
    promote("iris", "1", "live", "", store["uri"])
    body = {"records": load_source("sklearn:iris").drop(columns="target").head(3).to_dict(orient="records")}
    seen, stop = [], threading.Event()
    app = create_app(ServeConfig(poll_s=0.2), RegistryStore("iris@live", store["uri"]))
    with TestClient(app) as client:
        def hammer():
            while not stop.is_set():
                answer = client.post("/predict", json=body)
                seen.append((answer.status_code, answer.json().get("version")))

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        promote("iris", "2", "live", "hot switch test", store["uri"])
        deadline = time.time() + 30
        while time.time() < deadline and client.get("/v2/models/iris").json()["versions"] != ["2"]:
            time.sleep(0.1)
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()
        info = client.get("/metrics").text
    assert {code for code, _ in seen} == {200}, "a request failed during the switch"
    versions = [v for _, v in seen]
    assert versions[0] == "1" and versions[-1] == "2" and versions.index("2") > 0
    assert "1" not in versions[versions.index("2"):]  # once switched, never back
    assert 'foundry_model_info{alias="live",model="iris",version="2"} 1.0' in info
