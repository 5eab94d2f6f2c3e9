"""The CLI as a user drives it: run, evaluate, predict, validate, and clean errors for broken input."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from modelfoundry.cli import app
from modelfoundry.config import load_config
from modelfoundry.data.sources import load_source
from tests.conftest import tiny_config

runner = CliRunner()


def write_config(tmp_path, name="cfg.yaml", **sections):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tiny_config(**sections)))
    return path


def foundry(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def bc_run(tmp_path_factory):
    """One trained breast_cancer run shared by the tests that read it."""
    tmp = tmp_path_factory.mktemp("bc")
    cfg = write_config(tmp, data={"source": "sklearn:breast_cancer", "balance": {"class_weights": "balanced"}},
                       model={"name": "mlp", "hidden": [16], "batch_norm": True},
                       training={"epochs": 8, "batch_size": 32}, evaluation={"plots": True})
    result = foundry("run", cfg, "--run-dir", tmp / "run", "--no-progress")
    assert result.exit_code == 0, result.output
    return tmp / "run", result.output


def test_run_writes_a_complete_run_directory(bc_run):
    run_dir, output = bc_run
    assert "Summary" in output and "test accuracy" in output and "linear baseline" in output
    for name in ("config.yaml", "data.json", "manifest.json", "preprocess.json", "metrics.jsonl",
                 "checkpoints/last.pt", "checkpoints/best.pt", "model/weights.pt", "model/model.json",
                 "eval/metrics.json", "eval/report.md", "eval/curves.png", "eval/confusion_matrix.png", "eval/roc.png"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "eval/metrics.json").read_text())
    assert metrics["accuracy"] > 0.85
    for key in ("f1_macro", "roc_auc", "log_loss", "baseline_dummy_accuracy", "baseline_linear_accuracy",
                "baseline_linear_roc_auc"):
        assert key in metrics
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 8
    resolved = load_config(run_dir / "config.yaml")  # fully resolved and still valid
    assert resolved.training.optimizer.lr == 1e-3 and resolved.data.split.test == 0.15


def test_manifest_explains_the_run(bc_run):
    run_dir, _ = bc_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["packages"]["torch"].startswith("2.13") and manifest["packages"]["numpy"]
    assert manifest["python"] and manifest["platform"] and manifest["device"] == "cpu"
    assert manifest["seeds"] == {"seed": 0, "split": 0} and manifest["determinism"]["deterministic_algorithms"]
    assert "git" in manifest and manifest["dataset"]["rows"] == 569 and len(manifest["dataset"]["sha256"]) == 64
    data = json.loads((run_dir / "data.json").read_text())
    assert data["fingerprint"]["class_balance"] == {"0": 212, "1": 357}
    assert data["split"]["train"] + data["split"]["val"] + data["split"]["test"] == 569


def test_evaluate_reproduces_the_run_metrics(bc_run, tmp_path):
    run_dir, _ = bc_run
    before = json.loads((run_dir / "eval/metrics.json").read_text())
    result = foundry("evaluate", run_dir, "--out", tmp_path / "again")
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "again/metrics.json").read_text())
    assert again == pytest.approx(before)


def test_predict_and_evaluate_on_a_file_agree(bc_run, tmp_path):
    run_dir, _ = bc_run
    frame = load_source("sklearn:breast_cancer").sample(120, random_state=1)
    frame.to_csv(tmp_path / "labelled.csv", index=False)
    frame.drop(columns="target").to_csv(tmp_path / "rows.csv", index=False)
    result = foundry("predict", run_dir, tmp_path / "rows.csv", "-o", tmp_path / "pred.csv")
    assert result.exit_code == 0, result.output
    pred = pd.read_csv(tmp_path / "pred.csv")
    assert list(pred.columns)[:3] == ["prediction", "prob_0", "prob_1"] and len(pred) == 120
    assert set(pred.columns) <= {"prediction", "prob_0", "prob_1", "warnings"}  # warnings: rows outside training
    assert ((pred.prob_0 + pred.prob_1) - 1).abs().max() < 1e-5
    accuracy = (pred.prediction.to_numpy() == frame.target.to_numpy()).mean()
    result = foundry("evaluate", run_dir, "--data", tmp_path / "labelled.csv", "--out", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ev/metrics.json").read_text())["accuracy"] == pytest.approx(accuracy)


def test_regression_and_image_pipelines(tmp_path):
    cfg = write_config(tmp_path, "reg.yaml", data={"source": "sklearn:diabetes"}, training={"epochs": 5})
    assert foundry("run", cfg, "--run-dir", tmp_path / "reg", "--no-progress").exit_code == 0
    metrics = json.loads((tmp_path / "reg/eval/metrics.json").read_text())
    assert {"r2", "rmse", "mae", "baseline_linear_r2", "baseline_dummy_rmse"} <= set(metrics)
    cfg = write_config(tmp_path, "img.yaml", data={"source": "sklearn:digits", "features": {"pixel_*": {"type": "image"}}},
                       model={"name": "cnn", "channels": [4, 8], "residual": True}, training={"epochs": 2})
    result = foundry("run", cfg, "--run-dir", tmp_path / "img", "--no-progress")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "img/model/model.json").read_text())["input_shape"] == [1, 8, 8]
    assert "top_3_accuracy" in json.loads((tmp_path / "img/eval/metrics.json").read_text())


@pytest.mark.slow
def test_kill_and_resume_ends_like_an_uninterrupted_run(tmp_path):
    """SIGKILL a real `foundry run` mid-training, resume it, and compare with a run that was never killed."""
    import time

    import torch

    cfg = write_config(tmp_path, data={"source": "sklearn:digits", "features": {"pixel_*": {"type": "image"}}},
                       model={"name": "cnn", "channels": [8, 16], "dropout": 0.1},
                       training={"epochs": 20, "scheduler": {"name": "cosine", "warmup_epochs": 1},
                                 "checkpoint": {"min_interval_s": 0}})
    assert foundry("run", cfg, "--run-dir", tmp_path / "straight", "--no-progress").exit_code == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "modelfoundry.cli", "run", str(cfg), "--run-dir", str(killed),
                             "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (killed / "checkpoints" / "last.pt").exists():  # at least one epoch is checkpointed
            break
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert not (killed / "model").exists(), "the run finished before it could be killed"
    result = foundry("run", "--resume", killed, "--no-progress")
    assert result.exit_code == 0, result.output
    a = torch.load(tmp_path / "straight/model/weights.pt", weights_only=True)
    b = torch.load(killed / "model/weights.pt", weights_only=True)
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    assert json.loads((killed / "eval/metrics.json").read_text()) == pytest.approx(
        json.loads((tmp_path / "straight/eval/metrics.json").read_text()))


def test_validate_prints_the_resolved_config(tmp_path):
    result = foundry("validate", write_config(tmp_path))
    assert result.exit_code == 0 and "weight_decay: 0.0" in result.output


def test_help_does_not_import_heavy_libraries():
    code = ("import sys; from modelfoundry.cli import app; "
            "heavy = [m for m in ('torch', 'pandas', 'sklearn', 'pydantic', 'matplotlib') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert subprocess.run([sys.executable, "-m", "modelfoundry.cli", "--help"], capture_output=True).returncode == 0


@pytest.mark.parametrize("monitor,source", [("val_f1_macro", "sklearn:wine"), ("val_mape", "sklearn:diabetes")])
def test_early_stopping_on_any_validation_metric(tmp_path, monitor, source):
    from modelfoundry.api.training import run

    cfg = load_config(tiny_config(data={"source": source}, training={
        "epochs": 25, "optimizer": {"lr": 0.01}, "early_stopping": {"monitor": monitor, "patience": 4}}))
    result = run(cfg, run_dir=tmp_path / "run", progress=False)
    history = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    values = [r[monitor] for r in history]
    best = max(values) if monitor == "val_f1_macro" else min(values)
    assert result.best_value == pytest.approx(best) and values[result.best_epoch - 1] == pytest.approx(best)


def test_train_then_evaluate_as_separate_stages(tmp_path):
    cfg = write_config(tmp_path, training={"epochs": 2, "tensorboard": True})
    result = foundry("train", cfg, "--run-dir", tmp_path / "run", "--no-progress")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run/model/weights.pt").is_file() and not (tmp_path / "run/eval").exists()
    assert list((tmp_path / "run/tensorboard").glob("events.out.tfevents.*"))
    result = foundry("evaluate", tmp_path / "run")
    assert result.exit_code == 0 and (tmp_path / "run/eval/metrics.json").is_file(), result.output


@pytest.mark.slow  # a few seconds: the full suite runs it
def test_resuming_a_finished_run_is_a_no_op(tmp_path):
    """An early-stopped, registered run resumed: nothing trains, nothing is written, nothing is registered
    again. With its evaluation cut off, resume evaluates (to the same metrics) without training."""
    from modelfoundry.registry import list_models

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    cfg = write_config(tmp_path, tracking={"enabled": True, "uri": uri, "artifacts": str(tmp_path / "mlartifacts")},
                       training={"epochs": 200, "optimizer": {"lr": 0.05}, "early_stopping": {"patience": 2}})
    run_dir = tmp_path / "run"
    assert foundry("run", cfg, "--run-dir", run_dir, "--no-progress").exit_code == 0
    epochs = len((run_dir / "metrics.jsonl").read_text().splitlines())
    assert epochs < 200
    files = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.rglob("*") if p.is_file()}
    result = foundry("run", "--resume", run_dir, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "Nothing to resume" in result.output and "stopped early" in result.output
    assert "Already registered as tiny/1" in result.output and "test accuracy" in result.output
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.rglob("*") if p.is_file()} == files
    assert [m["versions"] for m in list_models(uri)] == [1]
    assert foundry("train", "--resume", run_dir, "--no-progress").exit_code == 0
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.rglob("*") if p.is_file()} == files
    (run_dir / "registered.json").unlink()  # killed during registration: resume only registers (idempotently)
    result = foundry("run", "--resume", run_dir, "--no-progress")
    assert result.exit_code == 0 and "only its registration was left" in result.output, result.output
    assert (run_dir / "registered.json").is_file() and [m["versions"] for m in list_models(uri)] == [1]
    del files[run_dir / "registered.json"]
    assert {p: v for p, v in files.items()} == {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}

    import shutil

    metrics = json.loads((run_dir / "eval/metrics.json").read_text())
    shutil.rmtree(run_dir / "eval")  # killed after training, before the evaluation was written
    result = foundry("run", "--resume", run_dir, "--no-progress")
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "eval/metrics.json").read_text()) == pytest.approx(metrics)
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == epochs
    assert (run_dir / "model/weights.pt").read_bytes() == files[run_dir / "model/weights.pt"][1]
    assert [m["versions"] for m in list_models(uri)] == [1]


def test_piped_output_is_not_cut_or_wrapped_at_80_columns(tmp_path):
    """CliRunner is not a terminal; with COLUMNS=80 rich would cut the summary table and wrap long lines."""
    run_dir = tmp_path / ("a-run-directory-with-a-long-name-" + "x" * 60)
    cfg = write_config(tmp_path, training={"epochs": 2})
    result = runner.invoke(app, ["run", str(cfg), "--run-dir", str(run_dir)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(str(run_dir) in line and line.startswith("│ run directory") for line in lines), result.output
    assert f"Report: {run_dir / 'eval' / 'report.md'}" in lines
    assert [line.split()[1] for line in lines if line.startswith("epoch ")][-1] == "2/2"


def test_evaluate_names_the_data_and_keeps_the_run_report(bc_run, tmp_path):
    run_dir, _ = bc_run
    report = (run_dir / "eval/report.md").read_text()
    result = foundry("evaluate", run_dir)
    assert result.exit_code == 0, result.output
    assert (run_dir / "eval/report.md").read_text() == report  # the run's own report is not overwritten
    assert f"Report: {run_dir / 'eval-test-split' / 'report.md'}" in result.output and "test accuracy" in result.output
    again = (run_dir / "eval-test-split/report.md").read_text()
    assert "## Model vs baselines (test split)" in again and "best epoch" in again
    # training rows, labels read back as 0.0/1.0 (a missing label makes the column float) and as text
    frame = load_source("sklearn:breast_cancer").head(100).astype({"target": float})
    frame.loc[frame.index[0], "target"] = None
    frame.to_csv(tmp_path / "train_rows.csv", index=False)
    frame.dropna().astype({"target": int}).astype({"target": str}).to_json(
        tmp_path / "as_text.jsonl", orient="records", lines=True)
    for name in ("train_rows.csv", "as_text.jsonl"):
        result = foundry("evaluate", run_dir, "--data", tmp_path / name, "--out", tmp_path / name.split(".")[0])
        assert result.exit_code == 0, result.output
        assert f"accuracy ({name})" in result.output and "test accuracy" not in result.output
        text = (tmp_path / name.split(".")[0] / "report.md").read_text()
        assert f"# tiny: {name}" in text and f"## All metrics ({name})" in text and "(test" not in text
        assert json.loads((tmp_path / name.split(".")[0] / "metrics.json").read_text())["accuracy"] > 0.8
