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


def test_the_layout_names_every_file_of_a_format_1_run():
    from modelfoundry.artifacts.rundir import RunDir

    layout = RunDir(FORMAT_1)
    files = {p.relative_to(FORMAT_1).as_posix() for p in FORMAT_1.rglob("*") if p.is_file()} - {"README.md"}
    named = {layout.config, layout.data_record, layout.manifest, layout.preprocess, layout.metrics_log,
             layout.best_checkpoint, layout.weights, layout.model_record, layout.eval_metrics, layout.report}
    assert {p.relative_to(FORMAT_1).as_posix() for p in named} <= files
    assert files - {p.relative_to(FORMAT_1).as_posix() for p in named} == {
        "eval/confusion_matrix.json", "eval/errors.json"}  # the evaluation's own outputs, under eval_dir
    assert layout.last_checkpoint == FORMAT_1 / "checkpoints" / "last.pt"
    assert layout.export.graph == FORMAT_1 / "model" / "onnx" / "model.onnx"
    assert layout.export.record == layout.onnx_dir / "export.json"
    assert RunDir(str(FORMAT_1)) == layout  # a str or a Path: the same run directory
