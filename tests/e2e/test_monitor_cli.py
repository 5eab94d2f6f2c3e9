"""`foundry monitor` as CI runs it: held-out rows pass (exit 0), scaled columns fail with the drift exit code and
a report naming them, bad input is one clear paragraph, and `foundry monitor report` reads the request log."""

import json
import re
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from modelfoundry.artifacts.records import DataRecord
from modelfoundry.artifacts.rundir import RunDir
from modelfoundry.cli import app
from modelfoundry.data.prepare import rebuild_splits
from modelfoundry.errors import DataError, DriftDetected, RunDirError
from modelfoundry.rundir import load_run_config
from tests.conftest import tiny_config

runner = CliRunner()


def foundry(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def bc(tmp_path_factory):
    """A tiny breast_cancer run (with its reference profile) and its held-out test rows without the target."""
    tmp = tmp_path_factory.mktemp("monitor")
    cfg = tmp / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(
        name="bc", data={"source": "sklearn:breast_cancer", "split": {"val": 0.2, "test": 0.3}},
        model={"name": "mlp", "hidden": [16]}, training={"epochs": 3, "batch_size": 32},
        monitor={"log": {"hash_columns": ["mean texture"]}})))
    done = foundry("run", cfg, "--run-dir", tmp / "run", "--no-progress")
    assert done.exit_code == 0, done.output
    run_dir = tmp / "run"
    config = load_run_config(run_dir)
    sha = DataRecord.read(RunDir(run_dir).data_record).sha256
    test = rebuild_splits(config.data, config.seed, sha, run_dir)["test"].drop(columns=["target"])
    assert len(test) >= 160
    return run_dir, test, tmp


def test_held_out_rows_pass(bc):
    run_dir, test, tmp = bc
    test.to_csv(tmp / "held_out.csv", index=False)
    done = foundry("monitor", run_dir, "--data", tmp / "held_out.csv", "--window-rows", 80, "--report", tmp / "ok")
    assert done.exit_code == 0, done.output
    assert "mean radius" in done.output and "ALERT" not in done.output and "2 windows" in done.output
    assert (tmp / "ok" / "report.md").is_file() and (tmp / "ok" / "monitor.json").is_file()


def test_scaled_columns_alert_with_the_drift_exit_code_and_a_report(bc):
    run_dir, test, tmp = bc
    shifted = test.copy()
    shifted["mean radius"] *= 1.6
    shifted["worst area"] *= 2.0
    shifted.to_csv(tmp / "shifted.csv", index=False)
    done = foundry("monitor", run_dir, "--data", tmp / "shifted.csv", "--window-rows", 80, "--report", tmp / "bad")
    assert done.exit_code == DriftDetected.exit_code == 10, done.output
    alert = done.output[done.output.index("Drift alert"):]
    assert "mean radius" in alert and "worst area" in alert and "mean texture" not in alert
    text = (tmp / "bad" / "report.md").read_text()
    assert "**ALERT** on" in text and "mean radius" in text
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert any("mean_radius" in image for image in images) and any("worst_area" in image for image in images)
    assert all((tmp / "bad" / image).is_file() for image in images)
    never = foundry("monitor", run_dir, "--data", tmp / "shifted.csv", "--window-rows", 80, "--report",
                    tmp / "bad-html", "--format", "html", "--fail-on", "never")
    assert never.exit_code == 0, never.output
    assert "<img src=" in (tmp / "bad-html" / "report.html").read_text()


def test_a_file_without_a_model_column_is_one_clear_paragraph(bc):
    run_dir, test, tmp = bc
    test.drop(columns=["mean radius"]).to_csv(tmp / "missing.csv", index=False)
    done = foundry("monitor", run_dir, "--data", tmp / "missing.csv")
    assert done.exit_code == DataError.exit_code, done.output
    assert "mean radius" in done.output and "Traceback" not in done.output
    assert not list(tmp.glob("monitor-report-*"))


def test_usage_errors_say_which_form_to_use(bc):
    run_dir, _, _ = bc
    no_data = foundry("monitor", run_dir)
    assert no_data.exit_code == 2 and "--data" in no_data.output and "monitor report" in no_data.output
    mixed = foundry("monitor", run_dir, "--data", "x.csv", "--limit", 5)
    assert mixed.exit_code == 2 and "--limit belongs to `foundry monitor report MODEL`" in mixed.output
    bare = foundry("monitor", "report")
    assert bare.exit_code == 2 and "needs the MODEL" in bare.output
    assert "foundry monitor report MODEL" in foundry("monitor", "--help").output


def test_a_run_without_a_reference_says_how_to_get_one(bc):
    run_dir, test, tmp = bc
    old = tmp / "old-run"
    shutil.copytree(run_dir, old)
    RunDir(old).reference.unlink()
    test.to_csv(tmp / "rows.csv", index=False)
    done = foundry("monitor", old, "--data", tmp / "rows.csv")
    assert done.exit_code == RunDirError.exit_code, done.output
    assert "no reference profile" in done.output and "foundry run" in done.output


def test_report_from_the_request_log_with_feedback_shadow_and_a_hashed_column(bc):
    from modelfoundry.api.prediction import predict
    from modelfoundry.monitor.requestlog import RequestLog, frame_records

    run_dir, test, tmp = bc
    rows = test.iloc[:160]
    rows.to_csv(tmp / "served.csv", index=False)
    predictions = predict(run_dir, tmp / "served.csv")["prediction"].tolist()
    url = f"sqlite:///{tmp / 'requests.db'}"
    log = RequestLog(url, hash_columns=["mean texture"])  # as the run's monitor.log.hash_columns asks
    ids = [f"r{k}-0" for k in range(len(rows))]
    log.add("bc", "run", ids, frame_records(rows), predictions, ood_scores=[0.0] * 140 + [1e9] * 20)
    flipped = {0: 1, 1: 0}
    log.label({ids[k]: predictions[k] if k < 30 else flipped[predictions[k]] for k in range(40)})  # 30 of 40 right
    log.add_shadow(ids[:20], [p if k < 16 else flipped[p] for k, p in enumerate(predictions[:20])])  # 16 of 20 agree
    log.close()
    done = foundry("monitor", "report", run_dir, "--url", url, "--window-rows", 80, "--report", tmp / "live")
    assert done.exit_code == 0, done.output
    assert "Live accuracy on 40 rows with feedback: 0.7500" in done.output
    assert "Live accuracy by window: 0.7500 (40), -." in done.output  # all feedback went to the first window
    assert "Shadow agreement on 20 rows: 0.8000" in done.output
    assert "Out-of-distribution rows: 12.5%" in done.output
    assert "mean texture: skipped (hashed in the log)" in done.output
    table = done.output[:done.output.index("Dataset drift")]
    assert "mean radius" in table and "mean texture" not in table and "2 windows" in table
    text = (tmp / "live" / "report.md").read_text()
    assert "live accuracy on 40 rows with feedback: 0.7500" in text and "| 0.7500 (40) |" in text
    newest = foundry("monitor", "report", run_dir, "--url", url, "--limit", 100, "--report", tmp / "live100")
    assert newest.exit_code == 0 and "100 rows from request log" in newest.output


def test_report_on_an_empty_or_missing_log_says_how_to_fill_it(bc):
    from modelfoundry.monitor.requestlog import RequestLog

    run_dir, _, tmp = bc
    url = f"sqlite:///{tmp / 'other.db'}"
    log = RequestLog(url)
    log.add("another-model", "1", ["a-0"], [{"x": 1.0}], [0])
    log.close()
    done = foundry("monitor", "report", run_dir, "--url", url)
    assert done.exit_code == DataError.exit_code, done.output
    assert "no rows of model 'bc'" in done.output and "foundry serve" in done.output
    missing = foundry("monitor", "report", run_dir, "--url", f"sqlite:///{tmp / 'nowhere.db'}")
    assert missing.exit_code == DataError.exit_code and "There is no request log at" in missing.output
    assert not (tmp / "nowhere.db").exists()  # reading never creates an empty log
    bad = foundry("monitor", "report", run_dir, "--url", "postgresql://bob:s3cret@localhost:1/db")
    assert bad.exit_code == 2 and "cannot be read" in bad.output and "s3cret" not in bad.output


@pytest.mark.slow  # tracking: a registered version (~15 s)
def test_a_registered_version_is_monitored_by_reference(bc, tmp_path, monkeypatch):
    from modelfoundry.api.training import run
    from modelfoundry.config import load_config
    from modelfoundry.monitor.requestlog import RequestLog, frame_records
    from modelfoundry.registry import promote

    _, test, tmp = bc
    monkeypatch.chdir(tmp_path)  # the registry's download cache goes under the working directory
    uri = f"sqlite:///{tmp_path / 'foundry.db'}"
    cfg = tiny_config(name="bcreg", data={"source": "sklearn:breast_cancer", "split": {"val": 0.2, "test": 0.3}},
                      model={"name": "mlp", "hidden": [16]}, training={"epochs": 2, "batch_size": 32},
                      tracking={"enabled": True, "uri": uri, "artifacts": str(tmp_path / "mlartifacts")})
    run(load_config(cfg), run_dir=tmp_path / "run", progress=False)
    promote("bcreg", "1", "production", "", uri)
    test.to_csv(tmp_path / "rows.csv", index=False)
    done = foundry("monitor", "bcreg@production", "--data", tmp_path / "rows.csv", "--uri", uri, "--report", "rep")
    assert done.exit_code == 0, done.output
    assert "Drift: bcreg 1 vs its reference" in done.output and (tmp_path / "rep" / "report.md").is_file()
    url = f"sqlite:///{tmp_path / 'requests.db'}"
    log = RequestLog(url)
    records = frame_records(test.iloc[:120])
    log.add("bcreg", "1", [f"a{k}-0" for k in range(120)], records, [1] * 120)
    log.add("bcreg", "run", [f"b{k}-0" for k in range(60)], records[:60], [0] * 60)  # served from a run directory
    log.close()
    one = foundry("monitor", "report", "bcreg/1", "--uri", uri, "--url", url, "--fail-on", "never")
    assert one.exit_code == 0, one.output
    assert "120 rows from request log" in one.output and "only the rows version 1 served" in one.output
    every = foundry("monitor", "report", "bcreg", "--uri", uri, "--url", url, "--fail-on", "never")
    assert every.exit_code == 0 and "180 rows from request log" in every.output
    assert "rows of versions 1, run, all compared with the reference of bcreg version 1" in every.output


@pytest.mark.slow  # trains a small LSTM (~5 s)
def test_a_text_model_is_monitored_by_length_and_tokens_and_its_unlogged_text_is_skipped(tmp_path):
    import numpy as np
    import pandas as pd

    from modelfoundry.monitor.requestlog import RequestLog, frame_records

    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, 600)
    words = np.array(["good", "great", "nice", "fine", "superb", "bad", "awful", "poor", "meh", "dull"])
    text = [" ".join(rng.choice(words[:5] if y else words[5:], size=rng.integers(3, 9))) for y in label]
    frame = pd.DataFrame({"text": text, "color": rng.choice(["red", "blue", "green"], 600), "label": label})
    frame.to_csv(tmp_path / "train.csv", index=False)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(
        name="txt", data={"source": str(tmp_path / "train.csv"), "target": "label", "text": {"max_length": 16}},
        model={"name": "lstm", "embedding_dim": 8, "hidden": 8}, training={"epochs": 1, "batch_size": 64},
        monitor={"log": {"exclude_columns": ["text"]}})))
    assert foundry("run", cfg, "--run-dir", tmp_path / "run", "--no-progress").exit_code == 0
    new = frame.drop(columns=["label"]).sample(200, random_state=1)
    odd = new.assign(text="unheard of words " * 4)
    odd.to_csv(tmp_path / "odd.csv", index=False)
    done = foundry("monitor", tmp_path / "run", "--data", tmp_path / "odd.csv", "--report", tmp_path / "rep")
    assert done.exit_code == 10, done.output
    alert = done.output[done.output.index("Drift alert"):]
    assert "text:length" in alert and "text:tokens" in alert and "color" not in alert
    # the model's own representation moved too: the embedding distance (input of the LSTM's output layer)
    embedding = json.loads((tmp_path / "run" / "model" / "reference.json").read_text())["embedding"]
    assert embedding["dim"] == 8 + 3 and embedding["layer"]  # the LSTM's 8 features beside the one-hot colour
    assert "embedding distance" in alert
    url = f"sqlite:///{tmp_path / 'requests.db'}"
    log = RequestLog(url, exclude_columns=["text"])
    log.add("txt", "run", [f"r{k}-0" for k in range(200)], frame_records(new), [1] * 200)
    log.close()
    logged = foundry("monitor", "report", tmp_path / "run", "--url", url, "--fail-on", "never", "--report",
                     tmp_path / "rep-log")
    assert logged.exit_code == 0, logged.output
    assert "text: skipped (excluded from the log)" in logged.output and "text:tokens" not in logged.output
    assert "color" in logged.output


def test_a_data_file_that_does_not_exist_names_the_flag_to_fix(bc):
    run_dir, _, tmp = bc
    done = foundry("monitor", run_dir, "--data", tmp / "nope.csv")
    assert done.exit_code == DataError.exit_code
    assert "nope.csv' does not exist" in done.output and "Fix --data" in done.output
