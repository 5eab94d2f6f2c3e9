"""Imbalance end to end on real data: breast_cancer trained with SMOTE, the focal loss and a decision threshold
tuned for F1; the threshold travels with the model to evaluate, predict, the ONNX export and the server; and
the settings that cannot apply are clear errors from `foundry run`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from modelfoundry.cli import app
from modelfoundry.config import load_config
from tests.conftest import tiny_config

runner = CliRunner()
IMBALANCED = {"source": "sklearn:breast_cancer", "balance": {"method": "smote"}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from modelfoundry import run

    root = tmp_path_factory.mktemp("imbalance")
    config = load_config(tiny_config(
        name="bc-imbalance", data=IMBALANCED, model={"name": "mlp", "hidden": [16]},
        training={"epochs": 5, "batch_size": 32, "loss": "focal", "focal_gamma": 2.0},
        evaluation={"plots": False, "threshold": {"metric": "f1"}}))
    return run(config, run_dir=root / "run", progress=False)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    from modelfoundry.data.sources import load_source

    path = tmp_path_factory.mktemp("rows") / "rows.csv"
    load_source("sklearn:breast_cancer").drop(columns="target").head(120).to_csv(path, index=False)
    return path


@pytest.mark.slow  # one training (~3 s) shared by the module
def test_a_smote_run_records_its_resampling_and_threshold(trained):
    info = json.loads((trained.run_dir / "data.json").read_text())
    balance = info["balance"]
    assert balance["method"] == "smote" and balance["before"]["0"] < balance["before"]["1"]
    assert balance["after"] == {"0": balance["before"]["1"], "1": balance["before"]["1"]}
    assert balance["synthetic"] == balance["before"]["1"] - balance["before"]["0"] > 0
    assert info["split"]["train"] == balance["rows"]["before"]  # the split is unchanged; its training rows grew
    threshold = json.loads((trained.run_dir / "model" / "model.json").read_text())["threshold"]
    assert threshold["positive"] == 0 and threshold["metric"] == "f1" and 0 <= threshold["value"] <= 1
    assert threshold["validation"] >= threshold["validation_at_0.5"]
    assert trained.metrics["decision_threshold"] == threshold["value"] and "f1_positive" in trained.metrics
    assert trained.extras["balance"] == balance and trained.extras["threshold"] == threshold
    # the baselines are fitted on the training rows as they are: the dummy predicts the majority, benign (~63%)
    assert trained.metrics["baseline_dummy_accuracy"] > 0.6
    report = (trained.run_dir / "eval" / "report.md").read_text()
    assert "## Decision threshold (test split)" in report and "| recall_positive |" in report


@pytest.mark.slow
def test_predict_evaluate_export_and_the_server_decide_with_the_saved_threshold(trained, rows, tmp_path,
                                                                               monkeypatch):
    from fastapi.testclient import TestClient

    from modelfoundry.api.evaluation import evaluate
    from modelfoundry.api.prediction import predict
    from modelfoundry.config import ServeConfig
    from modelfoundry.serve.app import create_app
    from modelfoundry.serve.store import RunDirStore

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "run"
    shutil.copytree(trained.run_dir, run_dir)
    plain = predict(run_dir, rows)
    # a threshold far from 0.5, so that the decision differs from the most probable class on many rows
    value = float(np.quantile(plain["prob_0"], 0.25))
    spec_path = run_dir / "model" / "model.json"
    spec = json.loads(spec_path.read_text())
    spec["threshold"]["value"] = value
    spec_path.write_text(json.dumps(spec))
    table = predict(run_dir, rows)
    expected = np.where(table["prob_0"] >= value, 0, 1)
    np.testing.assert_array_equal(table["prediction"], expected)
    assert (expected != table[["prob_0", "prob_1"]].to_numpy().argmax(1)).sum() > 10
    np.testing.assert_array_equal(table["prob_0"], plain["prob_0"])  # probabilities unchanged
    assert evaluate(run_dir).metrics["decision_threshold"] == value
    for backend in ("torch", "onnx"):
        with TestClient(create_app(ServeConfig(), RunDirStore(run_dir, backend=backend))) as client:
            body = client.post("/predict", json={"records": pd.read_csv(rows).to_dict(orient="records")}).json()
            assert body["predictions"] == expected.tolist(), backend
            assert client.get("/v2/models/bc-imbalance").json()["parameters"]["decision_threshold"] == value
    export = json.loads((run_dir / "model" / "onnx" / "export.json").read_text())
    assert export["threshold"]["value"] == value and export["threshold"]["positive_index"] == 0


def foundry_run(tmp_path, **sections):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config(**sections)))
    return runner.invoke(app, ["run", str(path), "--run-dir", str(tmp_path / "run"), "--no-progress"])


def test_smote_on_a_regression_target_is_a_config_error_from_foundry_run(tmp_path):
    result = foundry_run(tmp_path, data={"source": "sklearn:diabetes", "balance": {"method": "smote"}})
    assert result.exit_code == 2, result.output
    assert "data.balance.method: smote resamples classes, which needs classification" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


def test_a_threshold_on_a_multiclass_target_is_a_config_error_before_training(tmp_path):
    result = foundry_run(tmp_path, evaluation={"plots": False, "threshold": {"metric": "recall_at_precision"}})
    assert result.exit_code == 2, result.output
    assert "evaluation.threshold.metric: recall_at_precision" in result.output and "3 classes" in result.output
    assert "epoch" not in result.output and not (tmp_path / "run").exists()
