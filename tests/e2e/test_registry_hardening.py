"""Issue 9 on the registry: imported archives run nothing and are checked before anything is registered,
a failed import leaves nothing behind, registration is idempotent per run, a project shares one store from
its subdirectories, and unreachable stores or missing drivers are one paragraph without credentials."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import tarfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from modelfoundry.cli import app
from modelfoundry.config import load_config
from modelfoundry.api.training import run
from tests.conftest import tiny_config

runner = CliRunner()
SECRET = "hunter2"


class Payload:
    """Pickles to a call of os.system that writes a marker file: the classic pickle trojan."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A store with one registered version of 'iris' and that version exported as an archive."""
    tmp = tmp_path_factory.mktemp("source")
    uri = f"sqlite:///{tmp / 'foundry.db'}"
    cfg = load_config(tiny_config(name="iris", tracking={"enabled": True, "uri": uri,
                                                         "artifacts": str(tmp / "mlartifacts")}))
    result = run(cfg, run_dir=tmp / "run", progress=False)
    archive = tmp / "iris-1.tar.gz"
    invoke("models", "export", "iris/1", "-o", archive, "--uri", uri, code=0)
    return {"uri": uri, "tmp": tmp, "archive": archive, "config": cfg, "result": result}


def invoke(*args, code: int | None = None) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    if code is not None:
        assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


def one_paragraph(output: str) -> str:
    """The error of a CLI output: exactly one 'Error:' line and one 'Next:' line after the Tracking line."""
    lines = [line for line in output.splitlines() if line.strip() and not line.startswith("Tracking: ")]
    assert len(lines) == 2 and lines[0].startswith("Error: ") and lines[1].startswith("Next: "), output
    return output


def repack(archive: Path, tmp: Path, change) -> Path:
    """A copy of `archive` with `change(folder)` applied to its unpacked contents."""
    folder = tmp / "unpacked"
    shutil.rmtree(folder, ignore_errors=True)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(folder, filter="data")
    change(folder)
    out = tmp / f"changed-{time.monotonic_ns()}.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
    return out


@pytest.fixture
def target(tmp_path, monkeypatch):
    """An empty registry to import into, with the working directory elsewhere (no ./mlruns may appear)."""
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return f"sqlite:///{tmp_path / 'store' / 'other.db'}"


def nothing_registered(uri: str) -> None:
    from mlflow.entities import ViewType

    from modelfoundry.registry import client

    mlf = client(uri)
    assert mlf.search_registered_models() == []
    experiment = mlf.get_experiment_by_name("iris")
    if experiment is not None:
        assert experiment.lifecycle_stage == "deleted"
        assert mlf.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL) == []


def test_trojan_weights_in_an_archive_run_nothing_and_register_nothing(source, target, tmp_path):
    marker = tmp_path / "pwned"

    def trojan(folder):
        torch.save({"layer.weight": Payload(marker)}, folder / "artifacts/model/weights.pt")

    output = one_paragraph(invoke("models", "import", repack(source["archive"], tmp_path, trojan), "--uri", target,
                                  code=6))
    assert "its model does not load" in output and "weights" in output and "Nothing was registered" in output
    assert not marker.exists()
    nothing_registered(target)


def test_a_pickled_preprocessing_trojan_is_refused_before_anything_is_read(source, target, tmp_path):
    marker = tmp_path / "pwned"

    def legacy(folder):
        (folder / "artifacts/preprocess.json").unlink()
        (folder / "artifacts/preprocess.pkl").write_bytes(pickle.dumps({"preprocessor": Payload(marker)}))

    output = one_paragraph(invoke("models", "import", repack(source["archive"], tmp_path, legacy), "--uri", target,
                                  code=6))
    assert "preprocess.pkl is pickled preprocessing" in output and "foundry migrate" in output
    disguised = repack(source["archive"], tmp_path, lambda folder: (folder / "artifacts/eval/notes.json").write_bytes(
        pickle.dumps(Payload(marker))))
    output = one_paragraph(invoke("models", "import", disguised, "--uri", target, code=6))
    assert "eval/notes.json is a pickle" in output
    assert not marker.exists()
    nothing_registered(target)


def test_a_one_byte_weights_file_is_refused(source, target, tmp_path):
    truncated = repack(source["archive"], tmp_path, lambda f: (f / "artifacts/model/weights.pt").write_bytes(b"x"))
    output = one_paragraph(invoke("models", "import", truncated, "--uri", target, code=6))
    assert "not a readable weights file" in output
    nothing_registered(target)


@pytest.mark.parametrize("manifest, expected", [
    ("{not json", "is not valid JSON"),
    ('["a list"]', "is not a JSON object"),
    (json.dumps({"format": 1, "name": "iris", "version": "1", "tags": [], "metrics": {"accuracy": "high"},
                 "params": {}, "aliases": [], "source_uri": "x", "exported": "x", "extra": 1}),
     "unexpected key 'extra'; 'tags' should be dict"),
    (json.dumps({"format": 1, "name": "../iris", "version": "one", "tags": {}, "metrics": {"accuracy": "high"},
                 "params": {"a": 1}, "aliases": [], "source_uri": "x", "exported": "x"}),
     "'name' '../iris' is not a model name; 'version' 'one' is not a version number; 'params' must map"),
    (json.dumps({"format": 7}), "has archive format 7"),
])
def test_a_malformed_manifest_is_one_paragraph(source, target, tmp_path, manifest, expected):
    broken = repack(source["archive"], tmp_path, lambda f: (f / "foundry-model.json").write_text(manifest))
    output = one_paragraph(invoke("models", "import", broken, "--uri", target, code=6))
    assert expected in " ".join(output.split())
    nothing_registered(target)


def test_links_devices_strays_and_oversized_files_are_refused(source, target, tmp_path, monkeypatch):
    from modelfoundry import archive as archive_module

    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(source["archive"], "r:gz") as good, tarfile.open(evil, "w:gz") as tar:
        for member in good.getmembers():
            tar.addfile(member, good.extractfile(member) if member.isreg() else None)
        link = tarfile.TarInfo("artifacts/eval/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        device = tarfile.TarInfo("artifacts/eval/tty")
        device.type = tarfile.CHRTYPE
        stray = tarfile.TarInfo("artifacts/run.py")
        tar.addfile(link)
        tar.addfile(device)
        tar.addfile(stray, None)
    output = one_paragraph(invoke("models", "import", evil, "--uri", target, code=6))
    assert "artifacts/eval/passwd is a link" in output and "artifacts/eval/tty is a device" in output
    assert "artifacts/run.py is a pickle, checkpoint or code file" in output
    monkeypatch.setattr(archive_module, "MAX_MEMBERS", 3)
    output = one_paragraph(invoke("models", "import", source["archive"], "--uri", target, code=6))
    assert "more than 3 entries" in output
    monkeypatch.setattr(archive_module, "MAX_MEMBERS", 10_000)
    monkeypatch.setattr(archive_module, "MAX_FILE_BYTES", 1000)
    output = one_paragraph(invoke("models", "import", source["archive"], "--uri", target, code=6))
    assert "artifacts/model/weights.pt is" in output and "larger than allowed" in output
    nothing_registered(target)


def test_a_failed_import_leaves_no_orphan_and_artifacts_go_beside_the_store(source, target, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from modelfoundry.registry import client, show

    def broken(*args, **kwargs):
        raise RuntimeError("store went away")

    monkeypatch.setattr(MlflowClient, "create_model_version", broken)
    output = one_paragraph(invoke("models", "import", source["archive"], "--uri", target, code=6))
    assert "store went away" in output and "Nothing was registered" in output
    nothing_registered(target)
    artifacts = tmp_path / "store" / "mlartifacts" / "iris"
    assert not artifacts.exists() or not any(artifacts.iterdir())  # the failed run's artifacts are gone
    monkeypatch.undo()
    output = invoke("models", "import", source["archive"], "--uri", target, code=0)
    assert "Registered iris v1" in output and output.startswith(f"Tracking: {target}")
    version = show("iris/1", target)
    assert client(target).get_experiment_by_name("iris").lifecycle_stage == "active"
    assert version["source"].startswith(str(artifacts)) or version["source"].startswith(f"file://{artifacts}")
    assert len(list(artifacts.glob("*/artifacts/model/weights.pt"))) == 1
    assert not (tmp_path / "work" / "mlruns").exists()


def test_credentials_are_redacted_in_the_imported_from_tag_and_registry_output(source, target, tmp_path):
    from modelfoundry.registry import show

    def leaky(folder):
        meta = json.loads((folder / "foundry-model.json").read_text())
        meta["metrics"]["baseline_dummy_roc_auc"] = float("nan")  # undefined metrics travel as NaN
        meta["source_uri"] = f"postgresql://ops:{SECRET}@db.internal/mlflow?token={SECRET}"
        meta["tags"]["foundry.note"] = f"copied from http://ops:{SECRET}@mlflow.internal"
        meta["params"]["tracking.uri"] = f"http://ops:{SECRET}@mlflow.internal"
        (folder / "foundry-model.json").write_text(json.dumps(meta))

    output = invoke("models", "import", repack(source["archive"], tmp_path, leaky), "--uri", target, code=0)
    assert SECRET not in output and "postgresql://ops:***@db.internal/mlflow?token=***" in output
    tags = show("iris/1", target)["tags"]
    assert tags["foundry.imported_from"] == "iris/1 @ postgresql://ops:***@db.internal/mlflow?token=***"
    from modelfoundry.registry import client

    mlf = client(target)
    raw = mlf.get_model_version("iris", "1")
    assert SECRET not in json.dumps(dict(raw.tags)) and SECRET not in json.dumps(mlf.get_run(raw.run_id).data.params)
    mlf.set_model_version_tag("iris", "1", "foundry.origin", f"s3://bucket/x?X-Amz-Signature={SECRET}")
    shown = invoke("registry", "show", "iris/1", "--uri", target, code=0)
    assert "X-Amz-Signature=***" in shown and SECRET not in shown


def test_registration_is_idempotent_per_run_directory_and_config(source):
    from mlflow import MlflowClient

    from modelfoundry.registry import client
    from modelfoundry.tracking import log_run

    uri, run_dir, cfg = source["uri"], source["tmp"] / "run", source["config"]
    metrics = source["result"].metrics
    mlf = client(uri)
    runs_before = len(mlf.search_runs([mlf.get_experiment_by_name("iris").experiment_id]))
    again = log_run(run_dir, cfg, metrics)
    assert (again["version"], again["existing"]) == ("1", True)
    assert again["run_id"] == source["result"].extras["registry"]["run_id"]
    assert len(mlf.search_runs([mlf.get_experiment_by_name("iris").experiment_id])) == runs_before
    assert [str(v.version) for v in mlf.search_model_versions("name='iris'")] == ["1"]

    changed = cfg.model_copy(update={"seed": 1})  # another config hash in the same directory: a new version
    original = MlflowClient.create_model_version
    try:
        MlflowClient.create_model_version = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("store went away"))
        with pytest.raises(RuntimeError):
            log_run(run_dir, changed, metrics)
    finally:
        MlflowClient.create_model_version = original
    retried = log_run(run_dir, changed, metrics)  # the logged run is registered now, not logged a second time
    assert (retried["version"], retried["existing"]) == ("2", True)
    assert len(mlf.search_runs([mlf.get_experiment_by_name("iris").experiment_id])) == runs_before + 1
    assert log_run(run_dir, changed, metrics)["version"] == "2"


def test_a_subdirectory_shares_the_project_store_and_says_where_it_is(tmp_path, monkeypatch):
    from modelfoundry.registry import show
    from modelfoundry.tracking import project_store, resolve_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = tmp_path / "project"
    deeper = project / "experiments" / "today"
    deeper.mkdir(parents=True)
    assert project_store(deeper) == deeper / "foundry.db"  # no store yet: a new one where the command runs
    (project / "foundry.db").touch()
    assert project_store(deeper) == project / "foundry.db"
    monkeypatch.chdir(deeper)
    assert resolve_uri() == f"sqlite:///{project / 'foundry.db'}"
    config = deeper / "cfg.yaml"
    config.write_text(yaml.safe_dump(tiny_config(name="iris", tracking={"enabled": True})))
    output = invoke("run", config, "--run-dir", deeper / "run", "--no-progress", code=0)
    assert output.startswith(f"Tracking: sqlite:///{project / 'foundry.db'}\n")
    assert not (deeper / "foundry.db").exists() and not (deeper / "mlartifacts").exists()
    assert show("iris/1", f"sqlite:///{project / 'foundry.db'}")["tags"]["foundry.run_dir"] == str(deeper / "run")
    assert (project / "mlartifacts" / "iris").is_dir()  # artifacts beside the store it found
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'explicit.db'}")  # an explicit store wins
    assert resolve_uri() == f"sqlite:///{tmp_path / 'explicit.db'}"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_store_is_one_paragraph_without_credentials_and_fast():
    started = time.perf_counter()
    output = one_paragraph(invoke("registry", "list", "--uri", f"http://ops:{SECRET}@127.0.0.1:{closed_port()}",
                                  code=6))
    assert time.perf_counter() - started < 10
    assert "http://ops:***@127.0.0.1" in output and SECRET not in output and "could not be used" in output


@pytest.mark.slow
def test_a_store_that_never_answers_fails_within_seconds(monkeypatch):
    for key in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.delenv(key, raising=False)
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        started = time.perf_counter()
        output = one_paragraph(invoke("registry", "show", "iris", "--uri",
                                      f"http://127.0.0.1:{silent.getsockname()[1]}", code=6))
    assert time.perf_counter() - started < 30 and "could not be used" in output


def test_a_missing_database_driver_is_named_with_its_pip_command():
    output = one_paragraph(invoke("registry", "list", "--uri", f"postgresql://ops:{SECRET}@127.0.0.1:1/mlflow",
                                  code=6))
    assert "needs the Python package 'psycopg" in output  # psycopg or psycopg2, as SQLAlchemy picks
    assert "pip install 'psycopg[binary]'" in output or "pip install psycopg2-binary" in output
    assert "MLflow is not installed" not in output and SECRET not in output
    assert "postgresql://ops:***@127.0.0.1:1/mlflow" in output


def test_a_run_with_an_unusable_tracking_uri_keeps_credentials_out_of_its_error(tmp_path):
    config = tmp_path / "cfg.yaml"
    uri = f"postgresql://ops:{SECRET}@127.0.0.1:1/mlflow"
    config.write_text(yaml.safe_dump(tiny_config(tracking={"enabled": True, "uri": uri})))
    output = invoke("run", config, "--run-dir", tmp_path / "run", "--no-progress", code=6)
    assert len([line for line in output.splitlines() if line.startswith(("Error:", "Next:"))]) == 2, output
    assert SECRET not in output and "postgresql://ops:***@" in output and "complete in" in output
    assert "pip install" in output and (tmp_path / "run/model/weights.pt").is_file()


def test_mlflow_params_and_the_study_key_are_redacted(source):
    from modelfoundry.registry import client
    from modelfoundry.tracking import log_run, log_study

    storage = f"postgresql://ops:{SECRET}@db.internal/optuna"
    cfg = source["config"].model_copy(update={"seed": 7})
    raw = cfg.model_dump(mode="json")
    raw["tune"] = {"space": {"training.optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-1}},
                   "storage": storage}
    cfg = load_config(raw)
    logged = log_run(source["tmp"] / "run", cfg, source["result"].metrics)
    mlf = client(source["uri"])
    params = mlf.get_run(logged["run_id"]).data.params
    assert params["tune.storage"] == "postgresql://ops:***@db.internal/optuna"
    study = log_study(cfg, "s", storage, [], {"metric": "val_loss", "trials": 0, "best": None})
    tags = mlf.get_run(study["run_id"]).data.tags
    assert tags["foundry.study_key"] == "postgresql://ops:***@db.internal/optuna#s"
    assert SECRET not in json.dumps(mlf.get_run(study["run_id"]).data.params)


@pytest.mark.parametrize("command", [["predict", "nosuch", "rows.csv"], ["generate", "nosuch", "hi"],
                                     ["evaluate", "nosuch/2"]])
def test_looking_up_a_model_where_there_is_no_registry_creates_none(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(app, command)
    assert result.exit_code != 0 and "no model registry here" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "foundry.db").exists()
