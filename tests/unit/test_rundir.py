"""The run directory layer: one object owns every path, typed records read what the code reads, and a run
directory made by the code before issue 10 (tests/fixtures/run_format_1, model.json `"format": 1`) still
evaluates, predicts, exports and serves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

FORMAT_1 = Path(__file__).parents[1] / "fixtures" / "run_format_1"


@pytest.fixture
def format_1_run(tmp_path):
    run_dir = tmp_path / "format1"
    shutil.copytree(FORMAT_1, run_dir)
    return run_dir


def test_a_format_1_run_evaluates_predicts_exports_and_serves(format_1_run, tmp_path):
    from fastapi.testclient import TestClient

    from modelfoundry.api import evaluate, export, predict  # `from modelfoundry import` finds the subpackages
    from modelfoundry.config import ServeConfig
    from modelfoundry.data.sources import load_source
    from modelfoundry.serve.app import create_app
    from modelfoundry.serve.store import RunDirStore

    recorded = json.loads((FORMAT_1 / "eval" / "metrics.json").read_text())
    result = evaluate(format_1_run)  # re-splits the data and checks its fingerprint against data.json
    assert result.task == "classification"
    assert result.metrics["accuracy"] == pytest.approx(recorded["accuracy"])
    assert result.metrics["log_loss"] == pytest.approx(recorded["log_loss"], abs=1e-6)

    rows = load_source("sklearn:iris").drop(columns="target").head(6)
    rows.to_csv(tmp_path / "rows.csv", index=False)
    expected = predict(format_1_run, tmp_path / "rows.csv")
    assert list(expected.columns) == ["prediction", "prob_0", "prob_1", "prob_2"]
    assert expected.prediction.tolist() == [0, 0, 0, 0, 0, 2]  # pinned from the code that wrote the fixture
    assert expected.prob_0.iloc[0] == pytest.approx(0.3943, abs=1e-4)

    exported = export(format_1_run)  # into model/onnx/, where the server finds it; raises if parity fails
    assert exported.rows_checked > 0 and exported.max_abs_diff <= exported.tolerance
    assert (format_1_run / "model" / "onnx" / "export.json").is_file()

    with TestClient(create_app(ServeConfig(), RunDirStore(format_1_run))) as client:
        body = client.post("/predict", json={"records": rows.to_dict(orient="records")}).json()
    assert body["model"] == "iris-format-1"
    assert body["predictions"] == expected.prediction.tolist()
