"""The tracking worker (api/tracking_worker.py): a run logged from the child process is the run logged in-process,
a store failure is the same error, and no child outlives a run, whatever happens to it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from modelfoundry.api import tracking_worker
from modelfoundry.api.tracking_worker import TrackingWorker
from modelfoundry.api.training import run
from modelfoundry.config import load_config
from modelfoundry.errors import DataError, RegistryError
from modelfoundry.rundir import load_run_config
from tests.conftest import tiny_config

SECRET = "s3cr3t-pw"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def workers_alive() -> list[int]:
    """Processes started by this one that run the tracking worker (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"tracking_worker" in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture
def started(monkeypatch):
    """Every run starts a worker (in pytest MLflow is usually loaded, which would make run() log in-process);
    the list collects the workers started."""
    workers: list[TrackingWorker] = []

    def start(cls, tracking):
        worker = cls.launch(tracking.uri) if tracking.enabled else None
        workers.append(worker)
        return worker

    monkeypatch.setattr(TrackingWorker, "start", classmethod(start))
    return workers


def in_process(monkeypatch):
    monkeypatch.setattr(TrackingWorker, "start", classmethod(lambda cls, tracking: None))


def config_for(uri: str, tmp: Path, **sections):
    return load_config(tiny_config(name="iris", tracking={"enabled": True, "uri": uri,
                                                          "artifacts": str(tmp / "mlartifacts")}, **sections))


@pytest.mark.slow  # ~7 s: a new store's migrations, then two runs
def test_a_run_logged_by_the_worker_is_the_run_logged_in_process(tmp_path, monkeypatch, started):
    from modelfoundry.registry import client

    uri = f"sqlite:///{tmp_path / 'foundry.db'}"
    by_worker = run(config_for(uri, tmp_path), run_dir=tmp_path / "a", progress=False)
    worker = started[0]
    assert worker is not None and worker.answered and worker.process.returncode == 0
    assert workers_alive() == []
    in_process(monkeypatch)
    here = run(config_for(uri, tmp_path), run_dir=tmp_path / "b", progress=False)
    one, two = by_worker.extras["registry"], here.extras["registry"]
    assert (one["version"], two["version"], one["existing"], two["existing"]) == ("1", "2", False, False)
    assert (tmp_path / "a/registered.json").is_file()
    mlf = client(uri)
    runs = [mlf.get_run(r["run_id"]).data for r in (one, two)]
    assert runs[0].params == runs[1].params and len(runs[0].params) > 20
    assert runs[0].metrics.keys() == runs[1].metrics.keys() and "test_accuracy" in runs[0].metrics
    untimed = [{k: v for k, v in r.metrics.items() if not k.endswith("_s")} for r in runs]  # epoch_s is a time
    assert untimed[0] == pytest.approx(untimed[1])
    assert len(mlf.get_metric_history(one["run_id"], "val_loss")) == 3
    assert ({k: v for k, v in runs[0].tags.items() if not k.startswith("mlflow.")}.keys()
            == {k: v for k, v in runs[1].tags.items() if not k.startswith("mlflow.")}.keys())
    tags = [mlf.get_model_version("iris", v).tags for v in ("1", "2")]
    assert tags[0].pop("foundry.run_dir") == str((tmp_path / "a").resolve())
    assert tags[1].pop("foundry.run_dir") == str((tmp_path / "b").resolve())
    assert tags[0] == tags[1] and "foundry.config_hash" in tags[0]
    assert ({a.path for a in mlf.list_artifacts(one["run_id"])} == {a.path for a in mlf.list_artifacts(two["run_id"])}
            >= {"model", "eval", "config.yaml", "manifest.json"})


@pytest.mark.slow  # a few seconds: the full suite runs it
def test_a_store_failure_is_the_same_error_with_the_run_intact(tmp_path, monkeypatch, started):
    uri = f"postgresql://ops:{SECRET}@127.0.0.1:1/mlflow"
    with pytest.raises(RegistryError) as by_worker:
        run(config_for(uri, tmp_path), run_dir=tmp_path / "run", progress=False)
    assert started[0] is not None and started[0].answered and workers_alive() == []
    assert (tmp_path / "run/model/weights.pt").is_file()
    worker = TrackingWorker.launch(uri)
    assert worker is not None
    assert SECRET not in (Path("/proc") / str(worker.process.pid) / "cmdline").read_text()  # ps shows it to all
    worker.close()
    assert worker.process.returncode is not None and workers_alive() == []
    in_process(monkeypatch)
    with pytest.raises(RegistryError) as here:
        run(config_for(uri, tmp_path), run_dir=tmp_path / "run2", progress=False)
    assert str(by_worker.value).replace(str(tmp_path / "run"), str(tmp_path / "run2")) == str(here.value)
    assert SECRET not in str(by_worker.value) and "complete in" in str(by_worker.value)


def test_a_run_that_fails_ends_its_worker_and_creates_no_store(tmp_path, monkeypatch, started):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(tiny_config(tracking={"enabled": True}, data={"source": str(tmp_path / "missing.csv")}))
    with pytest.raises(DataError):
        run(cfg, run_dir=tmp_path / "run", progress=False)
    worker = started[0]
    assert worker is not None and not worker.answered and worker.process.returncode is not None
    assert workers_alive() == [] and not (tmp_path / "foundry.db").exists()


def refusing_workers(monkeypatch, error: Exception) -> None:
    """subprocess.Popen raises `error` for the tracking worker (other commands, e.g. git, still run)."""
    popen = tracking_worker.subprocess.Popen

    def refuse(args, *rest, **kwargs):
        if any("tracking_worker" in str(a) for a in args):
            raise error
        return popen(args, *rest, **kwargs)

    monkeypatch.setattr(tracking_worker.subprocess, "Popen", refuse)


def test_tracking_off_starts_no_worker(tmp_path, monkeypatch):
    refusing_workers(monkeypatch, AssertionError("a worker was started"))
    assert TrackingWorker.start(load_config(tiny_config()).tracking) is None
    result = run(load_config(tiny_config()), run_dir=tmp_path / "run", progress=False)
    assert "registry" not in result.extras and (tmp_path / "run/model/weights.pt").is_file()


def test_a_worker_that_cannot_start_or_dies_leaves_the_logging_to_this_process(tmp_path, monkeypatch, started):
    uri = f"sqlite:///{tmp_path / 'foundry.db'}"

    with monkeypatch.context() as patch:
        refusing_workers(patch, OSError("no more processes"))
        first = run(config_for(uri, tmp_path), run_dir=tmp_path / "a", progress=False)
    assert started == [None] and first.extras["registry"]["version"] == "1"
    worker = TrackingWorker.launch(uri)
    assert worker is not None
    worker.process.kill()
    worker.process.wait()
    logged = worker.track_run(first.run_dir, load_run_config(first.run_dir), first.metrics)
    assert logged["version"] == "1" and logged["existing"]  # logged here, idempotently
    assert workers_alive() == []


def test_a_fresh_foundry_run_has_mlflow_unloaded_when_it_would_start_the_worker():
    """The worker starts only while MLflow is not loaded; an import of it on the way to run() (a module top
    in cli/ or api/) would silently bring back the ~2 s it saves."""
    code = ("import sys\nfrom modelfoundry.cli import app\nfrom modelfoundry.cli import runs\n"
            "from modelfoundry.api.training import run\nfrom modelfoundry.api.arguments import as_config\n"
            "from modelfoundry.api.tracking_worker import TrackingWorker\n"
            "config = as_config(sys.argv[1])\nprint('mlflow' in sys.modules, config.tracking.enabled)\n")
    done = subprocess.run([sys.executable, "-c", code, str(EXAMPLES / "breast_cancer.yaml")], capture_output=True,
                          text=True, check=True)
    assert done.stdout.split() == ["False", "True"]


@pytest.mark.slow  # ~6 s: a whole `foundry run` in a fresh process
def test_foundry_run_in_a_fresh_process_registers_and_leaves_no_process(tmp_path):
    marker = f"foundry-test-{os.getpid()}-{time.time_ns()}"
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(tiny_config(name="iris", tracking={"enabled": True})))
    env = {**os.environ, "FOUNDRY_TEST_MARKER": marker}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([sys.executable, "-m", "modelfoundry.cli", "run", str(config), "--run-dir",
                           str(tmp_path / "run"), "--no-progress"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Registered as version 1" in done.stdout and (tmp_path / "foundry.db").is_file()
    time.sleep(0.2)
    left = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "environ").read_bytes():
                left.append((entry / "cmdline").read_bytes())
        except OSError:
            continue
    assert left == []
