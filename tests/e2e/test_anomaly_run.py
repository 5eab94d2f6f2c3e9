"""`data.task: anomaly` end to end on real data: an autoencoder trained on the benign tumours of breast_cancer
(class 1) flags the malignant ones; the threshold, predict, evaluate, the ONNX export and the server all agree."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from modelfoundry.config import load_config
from tests.conftest import tiny_config

FALSE_ALARM_RATE = 0.05
pytestmark = pytest.mark.slow  # one training (~3 s) and an ONNX export shared by the module


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from modelfoundry import run

    root = tmp_path_factory.mktemp("anomaly")
    config = load_config(tiny_config(
        name="bc-anomaly", data={"source": "sklearn:breast_cancer", "task": "anomaly",
                                 "anomaly": {"normal": 1, "false_alarm_rate": FALSE_ALARM_RATE}},
        model={"name": "autoencoder", "hidden": [16, 4]}, evaluation={"plots": True},
        training={"epochs": 40, "batch_size": 32, "early_stopping": None}))
    result = run(config, run_dir=root / "run", progress=False)
    return root, result


@pytest.fixture(scope="module")
def rows(trained):
    from modelfoundry.data.sources import load_source

    frame = load_source("sklearn:breast_cancer")
    picked = pd.concat([frame[frame.target == 0].head(20), frame[frame.target == 1].head(20)])
    path = trained[0] / "rows.csv"
    picked.drop(columns="target").to_csv(path, index=False)
    return path, picked


def test_the_detector_ranks_malignant_tumours_above_benign_ones_beside_both_baselines(trained):
    _, result = trained
    metrics = result.metrics
    assert result.task == "anomaly"
    assert metrics["roc_auc"] > 0.85 and metrics["average_precision"] > 0.75  # chance: 0.5 and ~0.37
    info = json.loads((result.run_dir / "data.json").read_text())
    assert metrics["tp"] + metrics["fn"] == info["anomaly"]["test_anomalies"] > 0  # every test row is scored
    assert metrics["tp"] + metrics["fp"] + metrics["tn"] + metrics["fn"] == info["split"]["test"]
    assert info["anomaly"]["left_out"]["train"] > 0  # the malignant training rows were not trained on
    for baseline in ("isolation_forest", "mahalanobis"):
        assert 0.5 < metrics[f"baseline_{baseline}_roc_auc"] <= 1
    assert result.headline[:2] == ["roc_auc", "average_precision"]
    eval_dir = result.run_dir / "eval"
    report = (eval_dir / "report.md").read_text()
    assert "isolation forest" in report and "| roc_auc |" in report and "scores.png" in report
    assert (eval_dir / "scores.png").stat().st_size > 0


def test_the_threshold_lets_about_the_false_alarm_rate_of_normal_validation_rows_through(trained):
    from modelfoundry.api.evaluation import reload_splits
    from modelfoundry.models.inference import predict_outputs
    from modelfoundry.rundir import load_model

    saved = load_model(trained[1].run_dir)
    splits = reload_splits(saved)
    assert not splits["y"]["train"].any() and not splits["y"]["val"].any()  # anomalies never train
    scores = predict_outputs(saved.model, splits["X"]["val"], "anomaly")
    share = float((scores > saved.target_encoder.threshold_).mean())
    assert FALSE_ALARM_RATE - 2 / len(scores) <= share <= FALSE_ALARM_RATE


def test_predict_answers_a_score_and_a_flag_per_row(trained, rows):
    from modelfoundry import predict

    path, picked = rows
    table = predict(trained[1].run_dir, path)
    assert list(table.columns[:2]) == ["anomaly_score", "anomaly"] and table["anomaly"].dtype == bool
    threshold = load_threshold(trained[1].run_dir)
    assert (table["anomaly"] == (table["anomaly_score"] > threshold)).all()
    malignant = picked.target.to_numpy() == 0
    assert table["anomaly"][malignant].mean() > table["anomaly"][~malignant].mean() + 0.3


def test_evaluate_rebuilds_the_test_split_and_finds_the_same_metrics(trained):
    from modelfoundry.api.evaluation import evaluate

    result = evaluate(trained[1].run_dir)
    assert result.metrics["roc_auc"] == pytest.approx(trained[1].metrics["roc_auc"])
    assert result.metrics["baseline_mahalanobis_roc_auc"] == pytest.approx(
        trained[1].metrics["baseline_mahalanobis_roc_auc"])


def test_the_onnx_export_and_the_server_answer_what_predict_does(trained, rows):
    from fastapi.testclient import TestClient

    from modelfoundry import predict
    from modelfoundry.config import ServeConfig
    from modelfoundry.export import export_onnx, load_onnx_predictor
    from modelfoundry.serve.app import create_app
    from modelfoundry.serve.store import RunDirStore

    run_dir = trained[1].run_dir
    path = rows[0]
    export = export_onnx(run_dir)
    assert export.output_name == "anomaly_score" and export.max_abs_diff <= export.tolerance
    expected = predict(run_dir, path)
    onnx = load_onnx_predictor(export.out_dir)
    assert onnx.task == "anomaly"
    np.testing.assert_allclose(onnx.predict_frame(pd.read_csv(path)), expected.anomaly_score, rtol=1e-4, atol=1e-6)

    records = pd.read_csv(path).to_dict(orient="records")
    with TestClient(create_app(ServeConfig(), RunDirStore(run_dir))) as client:
        body = client.post("/predict", json={"records": records}).json()
        meta = client.get("/v2/models/bc-anomaly").json()
        columns = pd.read_csv(path)
        oip = client.post("/v2/models/bc-anomaly/infer", json={"inputs": [
            {"name": c, "shape": [len(columns)], "datatype": "FP64", "data": columns[c].tolist()}
            for c in columns]}).json()
    assert body["predictions"] == expected.anomaly.tolist()
    assert all(isinstance(p, bool) for p in body["predictions"])
    np.testing.assert_allclose(body["scores"], expected.anomaly_score, rtol=1e-4, atol=1e-6)
    assert meta["parameters"]["task"] == "anomaly"
    assert [o["datatype"] for o in meta["outputs"][:2]] == ["BOOL", "FP64"]
    outputs = {o["name"]: o for o in oip["outputs"]}
    assert outputs["predictions"]["datatype"] == "BOOL" and outputs["predictions"]["data"] == body["predictions"]
    np.testing.assert_allclose(outputs["scores"]["data"], body["scores"], rtol=1e-6)


def load_threshold(run_dir) -> float:
    return json.loads((run_dir / "preprocess.json").read_text())["target"]["threshold"]


def test_evaluate_on_a_file_uses_its_labels_when_it_has_them(trained, rows):
    from modelfoundry.api.evaluation import evaluate

    path, picked = rows
    labelled = path.with_name("labelled.csv")
    picked.to_csv(labelled, index=False)
    with_labels = evaluate(trained[1].run_dir, data=labelled)
    assert with_labels.metrics["tp"] + with_labels.metrics["fn"] == 20  # the 20 malignant rows
    assert with_labels.metrics["roc_auc"] > 0.8 and with_labels.extras["evaluated_on"] == "labelled.csv"
    without = evaluate(trained[1].run_dir, data=path)  # no label column: the share flagged
    assert "roc_auc" not in without.metrics and without.headline == ["flagged_share", "threshold"]
    assert without.metrics["flagged_share"] == pytest.approx(with_labels.metrics["flagged_share"])


def test_compress_refuses_an_anomaly_detector_in_one_paragraph(trained):
    from modelfoundry.api.compression import compress
    from modelfoundry.errors import ConfigError

    with pytest.raises(ConfigError, match="anomaly model; `foundry compress` handles classifiers and regressors"):
        compress(trained[1].run_dir)


def test_the_detector_has_a_reference_and_a_flood_of_anomalies_is_drift(trained, tmp_path):
    """The reference profiles the normal training rows and the normal validation rows' scores: served data full of
    malignant tumours drifts from it (inputs and scores), benign rows never seen in training do not alert."""
    from modelfoundry.api.monitoring import monitor_data
    from modelfoundry.data.sources import load_source
    from modelfoundry.monitor.profile import load_reference

    _, result = trained
    reference = load_reference(result.run_dir)
    assert reference.task == "anomaly" and reference.prediction.kind == "numeric"
    assert reference.metrics["flagged_share"] <= FALSE_ALARM_RATE + 1e-9
    frame = load_source("sklearn:breast_cancer")
    malignant = tmp_path / "malignant.csv"
    frame[frame.target == 0].drop(columns="target").to_csv(malignant, index=False)
    flood = monitor_data(result.run_dir, malignant, window_rows=100)
    drifted = {c.column for c in flood.columns if c.alert}
    assert "__prediction__" in drifted and len(drifted) > 5
    assert flood.ood_share > 0.5


def test_the_server_monitors_a_detector_and_alerts_on_a_flood_of_anomalies(trained, tmp_path):
    from fastapi.testclient import TestClient

    from modelfoundry.config import ServeConfig
    from modelfoundry.config.monitor import MonitorConfig
    from modelfoundry.data.sources import load_source
    from modelfoundry.monitor.server import DriftMonitor
    from modelfoundry.serve.app import create_app
    from modelfoundry.serve.store import RunDirStore

    _, result = trained
    frame = load_source("sklearn:breast_cancer")
    malignant = frame[frame.target == 0].drop(columns="target").head(200)
    monitor = DriftMonitor(MonitorConfig(window={"rows": 100}))
    with TestClient(create_app(ServeConfig(), RunDirStore(result.run_dir), extensions=[monitor])) as client:
        for start in range(0, 200, 20):
            assert client.post("/predict", json={"records": malignant.iloc[start:start + 20].to_dict("records")}
                               ).status_code == 200
        monitor.settle(10.0)
        state = client.get("/v2/models/bc-anomaly/monitor").json()
        metrics = client.get("/metrics").text
    assert state["monitoring"] is True and state["windows_tested"] == 2
    assert "__prediction__" in state["alerts"] and 'foundry_drift_alert{column="__prediction__"} 1.0' in metrics


def test_the_log_of_a_detector_is_monitored_on_its_inputs_and_says_why_not_on_its_answers(trained, tmp_path):
    from modelfoundry.api.monitoring import monitor_log
    from modelfoundry.data.sources import load_source
    from modelfoundry.monitor.requestlog import RequestLog, frame_records

    _, result = trained
    frame = load_source("sklearn:breast_cancer")
    malignant = frame[frame.target == 0].drop(columns="target").head(120)
    url = f"sqlite:///{tmp_path / 'requests.db'}"
    log = RequestLog(url)
    log.add("bc-anomaly", "run", [f"r{k}-0" for k in range(120)], frame_records(malignant), [True] * 120)
    log.close()
    found = monitor_log(result.run_dir, url=url, window_rows=60)
    columns = {c.column for c in found.columns}
    assert "__prediction__" not in columns and any(c.alert for c in found.columns)  # the inputs drifted
    assert any("true/false answers" in note for note in found.notes)
