"""The run directory layer: one object owns every path, typed records read what the code reads, and a run
directory made by the code before issue 10 (tests/fixtures/run_format_1, model.json `"format": 1`) still
evaluates, predicts, exports and serves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from modelfoundry.artifacts.inputs import InputSpec

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


def test_an_export_made_before_named_inputs_still_predicts_and_serves(format_1_run, tmp_path):
    """Its graph's one input is called "input"; the server feeds the model's one named input to it."""
    from fastapi.testclient import TestClient

    from modelfoundry.api import predict
    from modelfoundry.config import ServeConfig
    from modelfoundry.data.sources import load_source
    from modelfoundry.export import load_onnx_predictor
    from modelfoundry.serve.app import create_app
    from modelfoundry.serve.store import RunDirStore

    shutil.copytree(FORMAT_1.parent / "run_format_1_export", format_1_run / "model" / "onnx")
    predictor = load_onnx_predictor(format_1_run / "model" / "onnx")
    assert predictor.input_names == ["input"] and "inputs" not in predictor.preprocess
    rows = load_source("sklearn:iris").drop(columns="target").iloc[::25]
    rows.to_csv(tmp_path / "rows.csv", index=False)
    expected = predict(format_1_run, tmp_path / "rows.csv")  # the torch model
    probabilities = predictor.predict_frame(rows)
    assert abs(probabilities - expected[["prob_0", "prob_1", "prob_2"]].to_numpy()).max() < 1e-5
    with TestClient(create_app(ServeConfig(), RunDirStore(format_1_run))) as client:
        meta = client.get("/v2/models/iris-format-1").json()
        body = client.post("/predict", json={"records": rows.to_dict(orient="records")}).json()
    assert meta["platform"] == "onnxruntime"  # the old export was used, not re-exported or replaced by torch
    assert meta["parameters"]["model_inputs"] == [{"name": "numeric", "datatype": "FP32", "shape": [-1, 4]}]
    assert body["predictions"] == expected.prediction.tolist()
    assert json.loads((format_1_run / "model" / "onnx" / "export.json").read_text())["input"]["name"] == "input"


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


def test_a_format_1_model_record_reads_and_is_written_back_as_the_current_format():
    from modelfoundry.artifacts.records import MODEL_FORMAT_VERSION, ModelRecord

    raw = json.loads((FORMAT_1 / "model" / "model.json").read_text())
    assert raw["format"] == 1 and "format_version" not in raw
    record = ModelRecord.read(FORMAT_1 / "model" / "model.json")
    assert (record.name, record.task, record.input_shape, record.n_outputs) == ("iris-format-1", "classification",
                                                                                [4], 3)
    assert record.classes == [0, 1, 2] and record.best_epoch == 3 and record.runtime is None
    assert record.inputs is None and record.input_spec == InputSpec.single("numeric", (4,))  # derived from the shape
    written = record.to_json()
    assert written["format_version"] == MODEL_FORMAT_VERSION == 3 and "format" not in written
    assert ModelRecord.from_json(written) == record
    assert record.spec() == {k: v for k, v in raw.items() if k != "format"}  # what the model code read before


def test_keys_a_record_does_not_know_survive_a_round_trip():
    from modelfoundry.artifacts.records import ModelRecord

    record = ModelRecord.from_json({"name": "m", "task": "regression", "input_shape": [3], "n_outputs": 1,
                                    "explanations": {"method": "shap"}})
    assert record.extra == {"explanations": {"method": "shap"}}
    assert record.to_json()["explanations"] == {"method": "shap"}
    assert record.spec()["explanations"] == {"method": "shap"}


def test_the_input_spec_round_trips_and_a_malformed_one_is_named():
    from modelfoundry.artifacts.records import ModelRecord
    from modelfoundry.errors import RunDirError

    inputs = [{"name": "numeric", "dtype": "float32", "shape": [3]}, {"name": "tokens", "dtype": "int64", "shape": [8]}]
    record = ModelRecord.from_json({"name": "m", "task": "regression", "n_outputs": 1, "inputs": inputs})
    assert record.input_spec.names == ["numeric", "tokens"] and record.input_spec["tokens"].shape == (8,)
    assert ModelRecord.from_json(record.to_json()).input_spec == record.input_spec
    for bad in ([{"name": "tokens", "dtype": "int8", "shape": [8]}], [{"name": "x", "shape": [1]}],
                [{"name": "x", "dtype": "float32", "shape": [0]}], inputs + inputs[:1]):
        with pytest.raises(RunDirError, match="'m/model.json' holds a malformed input spec"):
            ModelRecord.from_json({"name": "m", "task": "regression", "n_outputs": 1, "inputs": bad}, "m/model.json")


@pytest.mark.parametrize(("change", "field"), [
    (lambda r: r.pop("n_outputs"), "n_outputs"),
    (lambda r: r.update(task=3), "task"),
    (lambda r: r.update(input_shape=[4, "x"]), "input_shape"),
    (lambda r: r.update(best_epoch=True), "best_epoch"),
])
def test_a_malformed_model_record_names_the_file_and_the_field(format_1_run, change, field):
    from modelfoundry.errors import RunDirError
    from modelfoundry.rundir import load_model

    path = format_1_run / "model" / "model.json"
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))
    with pytest.raises(RunDirError) as info:
        load_model(format_1_run)
    assert str(path) in info.value.message and f"'{field}'" in info.value.message
    assert "foundry run" in info.value.hint


def test_a_model_record_from_a_newer_format_is_refused_with_the_fix():
    from modelfoundry.artifacts.records import ModelRecord
    from modelfoundry.errors import RunDirError

    with pytest.raises(RunDirError, match="model format 4") as info:
        ModelRecord.from_json({"format_version": 4, "name": "m", "task": "regression", "input_shape": [1],
                               "n_outputs": 1}, "x/model.json")
    assert "Upgrade modelfoundry" in info.value.hint


def test_every_missing_field_is_named_at_once():
    from modelfoundry.artifacts.records import ModelRecord
    from modelfoundry.errors import RunDirError

    with pytest.raises(RunDirError) as info:
        ModelRecord.from_json({"task": "regression"}, "m/model.json")
    assert info.value.message == "'m/model.json' is malformed: fields 'name', 'n_outputs' are missing."
    with pytest.raises(RunDirError) as info:
        ModelRecord.from_json({"name": "m", "n_outputs": 2, "task": "regression"}, "m/model.json")
    assert info.value.message == "'m/model.json' is malformed: fields 'inputs' and 'input_shape' are both missing."


def test_data_and_export_records_read_what_the_code_reads(format_1_run):
    from modelfoundry.artifacts.records import DataRecord, ExportRecord
    from modelfoundry.errors import RunDirError

    data = DataRecord.read(format_1_run / "data.json")
    assert data.sha256.startswith("a8fa74f01cd2") and data.split["test"] == 23 and data.input_shape == [4]
    with pytest.raises(RunDirError, match=r"'d.json' is malformed: field 'fingerprint.sha256' is missing"):
        DataRecord.from_json({"fingerprint": {"rows": 3}}, "d.json")
    export = {"files": ["model.onnx"], "input": {"name": "features"}, "output": {"name": "probabilities"},
              "opset": 18, "labels": ["a"]}
    record = ExportRecord.from_json(export)
    assert record.input["name"] == "features" and record.extra == {"labels": ["a"]} and record.parity == {}
    with pytest.raises(RunDirError, match=r"field 'output.name' is missing"):
        ExportRecord.from_json({**export, "output": {}}, "e.json")


def test_a_model_saved_now_has_the_current_format_and_loads_to_the_same_outputs(tmp_path):
    import torch

    from modelfoundry.artifacts.rundir import RunDir
    from modelfoundry.rundir import load_model, save_model

    old = load_model(FORMAT_1)
    new = RunDir(tmp_path / "resaved")
    new.model_dir.mkdir(parents=True)
    shutil.copyfile(RunDir(FORMAT_1).config, new.config)
    save_model(new.path, old.model, {**old.spec, "inputs": old.record.input_spec.to_json()}, old.preprocessor,
               old.target_encoder)
    written = json.loads(new.model_record.read_text())
    assert written["format_version"] == 3 and "format" not in written
    assert written["inputs"] == [{"name": "numeric", "dtype": "float32", "shape": [4]}]
    again = load_model(new.path)
    assert again.record.input_spec == old.record.input_spec and again.record.input_shape == old.record.input_shape
    x = torch.randn(5, 4)
    torch.testing.assert_close(again.model(x), old.model(x))


def test_a_model_on_unchanged_base_weights_saves_only_what_it_trained_and_checks_the_base(tmp_path, monkeypatch):
    """A model whose `saved_state()` leaves out frozen base weights (as a LoRA or frozen encoder does)."""
    import hashlib
    from typing import Literal

    import torch
    from torch import nn

    from modelfoundry.api import run
    from modelfoundry.config.base import Section
    from modelfoundry.errors import RunDirError
    from modelfoundry.models import register_model, unregister_model
    from modelfoundry.rundir import load_model
    from tests.conftest import tiny_config

    base_file = tmp_path / "base.pt"
    torch.manual_seed(1)
    torch.save({"weight": torch.randn(16, 4), "bias": torch.randn(16)}, base_file)

    class FrozenBaseConfig(Section):
        name: Literal["frozen_base"]

    class FrozenBase(nn.Module):
        def __init__(self, n_outputs):
            super().__init__()
            self.base, self.head = nn.Linear(4, 16), nn.Linear(16, n_outputs)
            self.base.load_state_dict(torch.load(base_file, weights_only=True))
            self.base.requires_grad_(False)

        def forward(self, numeric):
            return self.head(torch.tanh(self.base(numeric)))

        def saved_state(self):
            return {f"head.{k}": v for k, v in self.head.state_dict().items()}

        def load_saved_state(self, state):
            self.load_state_dict(state, strict=False)

        def base_reference(self):
            return {"path": str(base_file), "sha256": hashlib.sha256(base_file.read_bytes()).hexdigest()}

    register_model("frozen_base", FrozenBaseConfig, lambda config, inputs, n_outputs: FrozenBase(n_outputs))
    try:
        config = tiny_config(model={"name": "frozen_base"}, training={"epochs": 3})
        config["model"] = {"name": "frozen_base"}
        result = run(config, run_dir=tmp_path / "run", progress=False)
        saved = torch.load(tmp_path / "run" / "model" / "weights.pt", weights_only=True)
        assert sorted(saved) == ["head.bias", "head.weight"]  # the base is not copied into the run
        record = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
        assert record["base"]["path"] == str(base_file) and len(record["base"]["sha256"]) == 64
        assert result.extras["parameters"] == {"total": 16 * 4 + 16 + 16 * 3 + 3, "trainable": 16 * 3 + 3}
        loaded = load_model(tmp_path / "run")
        x = torch.randn(5, 4)
        base = torch.load(base_file, weights_only=True)  # trained head on the base file's weights, by hand
        expected = torch.tanh(x @ base["weight"].T + base["bias"]) @ saved["head.weight"].T + saved["head.bias"]
        torch.testing.assert_close(loaded.model(x), expected)
        torch.save({"weight": torch.zeros(16, 4), "bias": torch.zeros(16)}, base_file)  # the base changed
        with pytest.raises(RunDirError, match="trained on base weights .*base.pt") as info:
            load_model(tmp_path / "run")
        assert "Restore the original base model" in info.value.hint
    finally:
        unregister_model("frozen_base")

