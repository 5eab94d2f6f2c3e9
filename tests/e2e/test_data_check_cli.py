"""`foundry data check` as a user and CI run it: a planted leak fails --fail-on with exit code 11 and a report
naming it, a clean dataset passes, a config's data section applies, --compare finds a shifted column, bad
input is one clear paragraph, and `foundry run` shows the warnings before training."""

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from modelfoundry.cli import app
from modelfoundry.data.sources import load_source
from modelfoundry.errors import ConfigError, DataCheckFailed, DataError
from tests.conftest import tiny_config

runner = CliRunner()


def foundry(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def leaky(tmp_path_factory):
    """breast_cancer with a column that is the target plus a little noise, as a CSV."""
    folder = tmp_path_factory.mktemp("data-check")
    frame = load_source("sklearn:breast_cancer")
    frame["leak"] = frame["target"] + np.random.default_rng(0).normal(0, 0.1, len(frame))
    path = folder / "bc_leak.csv"
    frame.to_csv(path, index=False)
    return path


def test_a_planted_leak_fails_ci_with_exit_11_and_a_complete_report(leaky, tmp_path):
    out = tmp_path / "report"
    done = foundry("data", "check", leaky, "--target", "target", "-o", out, "--format", "both",
                   "--fail-on", "leakage", "--plots", 4)  # the cap applies, and the report says so
    assert done.exit_code == DataCheckFailed.exit_code == 11, done.output
    assert "ERROR leakage [leak]" in done.output and "1 finding matches --fail-on leakage" in done.output
    record = json.loads((out / "findings.json").read_text())
    assert [f["columns"] for f in record["findings"] if f["kind"] == "leakage"] == [["leak"]]
    assert record["plots"]["plotted"] == 4 and record["plots"]["columns"] == 32
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert len(plots) == 4 and "leak.png" in plots  # the columns with findings come first
    assert "Plots of 4 of 32 columns" in (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "<td class=\"error\">error</td>" in page


def test_a_clean_dataset_passes_fail_on_error(tmp_path):
    done = foundry("data", "check", "sklearn:iris", "--target", "target", "-o", tmp_path / "r", "--fail-on", "error",
                   "--plots", 0)
    assert done.exit_code == 0, done.output
    assert "0 errors" in done.output and (tmp_path / "r" / "report.md").exists()


def test_a_config_applies_its_target_and_ignored_columns(leaky, tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(tiny_config(data={"source": str(leaky), "target": "target",
                                                       "features": {"leak": {"type": "ignore"}}})))
    done = foundry("data", "check", config, "-o", tmp_path / "r", "--fail-on", "leakage", "--plots", 0)
    assert done.exit_code == 0, done.output
    record = json.loads((tmp_path / "r" / "findings.json").read_text())
    assert record["target"] == "target" and "leak" not in record["kinds"]


def test_compare_finds_a_shifted_column(tmp_path):
    frame = load_source("sklearn:breast_cancer").sample(frac=1.0, random_state=0)
    first, second = frame.iloc[:300], frame.iloc[300:].copy()
    second["mean area"] = second["mean area"] * 2
    first.to_csv(tmp_path / "train.csv", index=False)
    second.to_csv(tmp_path / "test.csv", index=False)
    done = foundry("data", "check", tmp_path / "train.csv", "--target", "target", "--compare", tmp_path / "test.csv",
                   "-o", tmp_path / "r", "--fail-on", "shift", "--plots", 0)
    assert done.exit_code == 11, done.output
    record = json.loads((tmp_path / "r" / "findings.json").read_text())
    assert record["compare"] == "test.csv"
    shifted = [f for f in record["findings"] if f["kind"] == "shift"]
    assert max(shifted, key=lambda f: f["value"])["columns"] == ["mean area"]
    assert any(f["kind"] == "adversarial" and f["value"] > 0.9 for f in record["findings"])


@pytest.mark.parametrize("args, code, text", [
    (["missing.csv"], DataError.exit_code, "Data file 'missing.csv' does not exist"),
    (["sklearn:iris", "--target", "species"], DataError.exit_code, "Target column 'species' is not in sklearn:iris"),
    (["sklearn:iris", "--fail-on", "leak"], ConfigError.exit_code, "Did you mean 'leakage'"),
    (["sklearn:iris", "--format", "pdf"], ConfigError.exit_code, "--format must be one of md, html, both"),
])
def test_bad_input_is_one_clear_paragraph(args, code, text, tmp_path):
    done = foundry("data", "check", *args, "-o", tmp_path / "r")
    assert done.exit_code == code
    assert text in done.output and "Traceback" not in done.output


@pytest.mark.slow  # trains (~5 s)
def test_foundry_run_reports_the_data_warnings_before_training(leaky, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(tiny_config(data={"source": str(leaky), "target": "target"},
                                                 training={"epochs": 2})))
    done = foundry("run", config, "--run-dir", tmp_path / "run")
    assert done.exit_code == 0, done.output
    warning = done.output.index("Data error: 'leak' alone predicts 'target'")
    assert warning < done.output.index("epoch 1/2")
    assert "foundry data check" in done.output
