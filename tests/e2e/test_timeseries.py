"""A time series model end to end: run, evaluate, predict from a history, ONNX export, serve; and the
shipped sunspots example beating seasonal naive (slow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # each trains (5-10 s with the ONNX export); the fast pieces are in tests/unit


def _series(path: Path, n: int = 160) -> Path:
    rng = np.random.default_rng(0)
    t = np.arange(n)
    frame = pd.DataFrame({"step": t, "y": 20 + 5 * np.sin(2 * np.pi * t / 10) + 0.05 * t + rng.normal(0, 0.3, n),
                          "x": np.cos(2 * np.pi * t / 10)})
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from modelfoundry import run
    from modelfoundry.config import load_config

    tmp = tmp_path_factory.mktemp("ts")
    source = _series(tmp / "series.csv")
    config = load_config({
        "name": "ts", "seed": 0,
        "data": {"source": str(source), "split": {"val": 0.2, "test": 0.2},
                 "time_series": {"time": "step", "target": "y", "window": 12, "horizon": 3, "features": ["x"]}},
        "model": {"name": "gru", "hidden": 8}, "training": {"epochs": 2, "batch_size": 32, "early_stopping": None},
        "evaluation": {"plots": False, "metrics": ["rmse", "smape"]}, "tracking": {"enabled": False}})
    result = run(config, run_dir=tmp / "run")
    return config, result, source


def test_run_reports_forecasting_baselines_and_h_outputs(trained):
    import json

    _, result, _ = trained
    assert {"rmse", "mae", "mape", "smape"} <= set(result.metrics)
    for name in ("last_value", "seasonal_naive", "linear"):
        assert f"baseline_{name}_rmse" in result.metrics
    assert "baseline_dummy_rmse" not in result.metrics and result.metrics["baseline_season"] == 10
    model = json.loads((result.run_dir / "model" / "model.json").read_text())
    assert model["n_outputs"] == 3
    report = (result.run_dir / "eval" / "report.md").read_text()
    assert "seasonal naive baseline" in report and "10 steps earlier" in report


def test_predict_from_a_history_equals_evaluation_on_the_same_windows(trained, tmp_path):
    from modelfoundry.api import evaluate, predict

    _, result, source = trained
    history = pd.read_csv(source).iloc[-40:]
    history.sample(frac=1.0, random_state=0).to_csv(tmp_path / "history.csv", index=False)  # predict sorts it
    table = predict(result.run_dir, tmp_path / "history.csv")
    assert list(table.columns) == ["time", "prediction_1", "prediction_2", "prediction_3"]
    assert len(table) == 40 - 12 + 1 and table["time"].iloc[-1] == 159  # the last row forecasts beyond the end
    # evaluating the same file: its windows with all three forecast steps inside the file
    evaluated = evaluate(result.run_dir, data=tmp_path / "history.csv", out=tmp_path / "eval")
    truth = np.stack([history["y"].to_numpy()[12 + h: 12 + h + 26] for h in range(3)], axis=1)  # (26, 3)
    forecasts = table[["prediction_1", "prediction_2", "prediction_3"]].to_numpy()[:26]
    assert evaluated.metrics["mae"] == pytest.approx(np.abs(forecasts - truth).mean(), rel=1e-6)
    # and the run's own test split, re-evaluated, gives the run's test metrics
    again = evaluate(result.run_dir, out=tmp_path / "again")
    assert again.metrics["rmse"] == pytest.approx(result.metrics["rmse"], rel=1e-6)
    assert again.metrics["baseline_seasonal_naive_rmse"] == pytest.approx(result.metrics["baseline_seasonal_naive_rmse"])


def test_onnx_export_and_served_forecasts_match_predict(trained, tmp_path):
    from fastapi.testclient import TestClient

    from modelfoundry.api import predict
    from modelfoundry.config import ServeConfig
    from modelfoundry.export import export_onnx
    from modelfoundry.serve.app import create_app
    from modelfoundry.serve.store import RunDirStore

    _, result, source = trained
    exported = export_onnx(result.run_dir)
    assert exported.max_abs_diff < 1e-4 and exported.input_names == ["series"]
    history = pd.read_csv(source).iloc[-20:]
    history.to_csv(tmp_path / "history.csv", index=False)
    expected = predict(result.run_dir, tmp_path / "history.csv").iloc[-1]
    record = {"y": history["y"].tolist(), "x": history["x"].tolist()}  # 20 values: the last 12 are read
    with TestClient(create_app(ServeConfig(), RunDirStore(result.run_dir))) as client:
        body = client.post("/predict", json={"records": [record, record]}).json()
        assert np.allclose(body["predictions"][1], expected[["prediction_1", "prediction_2", "prediction_3"]]
                           .to_numpy(dtype=float), atol=1e-4)
        for bad, words in [({"y": [1.0] * 5, "x": [0.0] * 12}, "5 values"),
                           ({"y": record["y"], "x": ["a"] * 12}, "not numbers"),
                           ({"y": record["y"][:-1] + [None], "x": record["x"]}, "not numbers"),
                           ({"y": record["y"]}, "'x'")]:
            reply = client.post("/predict", json={"records": [bad]})
            assert reply.status_code == 422 and words in reply.json()["error"], reply.json()
        meta = client.get("/v2/models/ts").json()
        assert [(i["name"], i["shape"]) for i in meta["inputs"]] == [("y", [-1, -1]), ("x", [-1, -1])]
        oip = client.post("/v2/models/ts/infer", json={"inputs": [{"name": "y", "shape": [1], "datatype": "FP64",
                                                                    "data": [1.0]}]})
        assert 400 <= oip.status_code < 500


def test_sunspots_example_beats_seasonal_naive(tmp_path):
    from modelfoundry import run
    from modelfoundry.config import load_config

    config = load_config(ROOT / "examples" / "sunspots_lstm.yaml")
    config = config.model_copy(update={"tracking": config.tracking.model_copy(update={"enabled": False})})
    result = run(config, run_dir=tmp_path / "run")
    assert result.metrics["rmse"] < result.metrics["baseline_seasonal_naive_rmse"]
    assert result.metrics["rmse"] < result.metrics["baseline_last_value_rmse"]
