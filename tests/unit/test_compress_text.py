"""`foundry compress` on text models: dynamic int8 on ONNX Runtime keeps the int64 token inputs and dynamic
batch/steps and is served like any compressed model; torch dynamic int8 covers nn.Linear and nn.LSTM (and a
LoRA model, merged); a LoRA teacher distils into a small lstm student sized by the tokenizer's vocabulary;
compressors that cannot apply to a text model are refused with the key to change."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from modelfoundry.api.compression import compress
from modelfoundry.api.training import run
from modelfoundry.errors import ConfigError
from tests.conftest import tiny_config
from tests.unit.test_pretrained_models import tiny_bert  # noqa: F401 - the module-scoped tiny BERT fixture
from tests.unit.test_text_data import reviews

LSTM = {"name": "lstm", "embedding_dim": 16, "hidden": 16, "bidirectional": True}
STUDENT = {"name": "lstm", "embedding_dim": 8, "hidden": 8}
# these train a text model (an lstm, a LoRA-tuned tiny BERT) and compress it: tens of seconds on 2 busy cores
SLOW = pytest.mark.slow


def train_text(directory, model: dict, epochs: int = 3, **compress_section):
    reviews(240).to_csv(directory / "r.csv", index=False)
    config = tiny_config(name="text", data={"source": str(directory / "r.csv"), "text": {"max_length": 24}},
                         training={"epochs": epochs, "batch_size": 16, "optimizer": {"lr": 0.01}},
                         compress={"repeats": 5, **compress_section})
    config["model"] = model
    run(config, run_dir=directory / "run", progress=False)
    return directory / "run"


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory):
    return train_text(tmp_path_factory.mktemp("lstm"), LSTM)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_bert):  # noqa: F811
    model = {"name": "pretrained", "path": str(tiny_bert), "finetune": "lora", "lora": {"r": 4}}
    return train_text(tmp_path_factory.mktemp("lora"), model, epochs=2, distill={"student": STUDENT, "epochs": 2},
                      guard={})  # the primary metric only: a 2-epoch student's log_loss is not what is tested


def compress_fresh(run_dir, out, *options) -> SimpleNamespace:
    """`foundry compress` in a process of its own, as a user runs it: the ONNX export of a recurrent model fixes
    its steps when the process traced one before (see compress.measure.check_sequence_axes), which earlier
    tests of a whole-suite run do."""
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "modelfoundry.cli", "compress", str(run_dir), "--out", str(out),
                           "--no-progress", *options], capture_output=True, text=True, env=dict(os.environ),
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "report.json").read_text())
    return SimpleNamespace(**{**report, "model_dir": out / "model"})


def graph_inputs(path) -> dict[str, tuple[int, list]]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {i.name: (i.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim])
            for i in graph.input}


@SLOW
def test_dynamic_int8_of_an_lstm_keeps_int64_tokens_and_is_served_like_the_original(lstm_run, tmp_path):
    import onnx
    from fastapi.testclient import TestClient

    from modelfoundry.api.prediction import predict
    from modelfoundry.config import ServeConfig
    from modelfoundry.serve.app import create_app
    from modelfoundry.serve.store import RunDirStore

    result = compress_fresh(lstm_run, tmp_path / "c", "--only", "ort_int8_dynamic", "--prefer", "size",
                            "--max-drop", "0.05")
    assert result.chosen is not None and result.chosen["name"] == "ort_int8_dynamic", result.variants
    assert result.chosen["size_ratio"] < 0.5 and result.chosen["agreement"] >= 0.95
    graph = result.model_dir / "model" / "onnx" / "model.onnx"
    inputs = graph_inputs(graph)
    int64 = onnx.TensorProto.INT64
    assert inputs["tokens"][0] == inputs["attention_mask"][0] == int64
    assert inputs["tokens"][1][0] == "batch"  # dynamic batch (dynamic steps: the next test)
    ops = {n.op_type for n in onnx.load(str(graph)).graph.node}
    assert ops & {"DynamicQuantizeLSTM", "MatMulInteger", "DynamicQuantizeMatMul"}, ops  # really int8
    rows = reviews(30, seed=5).drop(columns="target")
    rows.to_csv(tmp_path / "rows.csv", index=False)
    mine, theirs = predict(result.model_dir, tmp_path / "rows.csv"), predict(lstm_run, tmp_path / "rows.csv")
    assert (mine["prediction"] == theirs["prediction"]).mean() >= 0.9
    with TestClient(create_app(ServeConfig(), RunDirStore(result.model_dir))) as client:
        body = client.post("/predict", json={"records": rows.head(6).to_dict(orient="records")}).json()
    assert body["predictions"] == mine["prediction"].head(6).tolist()  # raw strings in, as predict predicts


@SLOW
def test_dynamic_int8_keeps_a_graphs_dynamic_steps_and_reads_any_sequence_length(lstm_run, tmp_path):
    """Quantization keeps the interface it is given: here a graph exported with dynamic batch and steps (the
    TorchScript exporter, which makes them dynamic every time), read at lengths other than the data's."""
    import warnings

    from modelfoundry.api.evaluation import reload_splits
    from modelfoundry.compress import quantize
    from modelfoundry.compress.measure import onnx_predict
    from modelfoundry.rundir import load_model

    saved = load_model(lstm_run)
    spec, fp32 = saved.record.input_spec, tmp_path / "fp32.onnx"
    example = tuple(torch.from_numpy(a) for a in spec.example(2).values())
    axes = {name: {0: "batch", 1: "steps"} if name != "numeric" else {0: "batch"} for name in spec.names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(saved.model, example, str(fp32), dynamo=False, input_names=spec.names,
                          output_names=["logits"], dynamic_axes={**axes, "logits": {0: "batch"}})
    int8 = quantize.ort_dynamic_int8(fp32, tmp_path / "int8.onnx")
    assert graph_inputs(int8) == graph_inputs(fp32) and graph_inputs(int8)["tokens"][1] == ["batch", "steps"]
    val = reload_splits(saved)["X"]["val"]
    length = val["tokens"].shape[1]
    for steps in (5, length + 7):  # texts cut short, and padded past the data's length
        batch = {name: a[:, :steps] if name != "numeric" else a for name, a in val.items()}
        batch = {name: np.pad(a, ((0, 0), (0, steps - a.shape[1]))) if name != "numeric" else a
                 for name, a in batch.items()}
        reference, quantized = softmax(onnx_predict(fp32, batch)), softmax(onnx_predict(int8, batch))
        assert quantized.shape == reference.shape == (len(val["tokens"]), 2)
        assert np.abs(quantized - reference).max() < 0.1 and (quantized.argmax(1) == reference.argmax(1)).all()


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@SLOW
def test_torch_dynamic_int8_quantizes_lstm_and_merged_lora_layers(lstm_run, lora_run):
    from modelfoundry.api.evaluation import reload_splits
    from modelfoundry.compress import quantize
    from modelfoundry.models.inference import predict_outputs
    from modelfoundry.rundir import load_model

    for run_dir, quantized_kind in ((lstm_run, "LSTM"), (lora_run, "Linear")):
        saved = load_model(run_dir)
        int8 = quantize.torch_dynamic_int8_eager(saved.model)
        dynamic = [type(m).__name__ for m in int8.modules() if ".dynamic." in type(m).__module__]
        assert quantized_kind in dynamic, dynamic
        assert not any("lora_" in n for n, _ in int8.named_modules())  # quantized as served: merged
        X = reload_splits(saved)["X"]["val"]
        fp32, q = predict_outputs(saved.model, X, saved.task), predict_outputs(int8, X, saved.task)
        assert (fp32.argmax(1) == q.argmax(1)).mean() >= 0.9 and np.abs(fp32 - q).max() < 0.2


@SLOW
def test_a_lora_teacher_distils_into_an_lstm_student_on_the_tokenizers_vocabulary(lora_run, tmp_path):
    from modelfoundry.api.prediction import predict
    from modelfoundry.compress.measure import check_sequence_axes
    from modelfoundry.rundir import load_model

    teacher = load_model(lora_run)
    vocab = teacher.record.input_spec["tokens"].vocab_size
    result = compress_fresh(lora_run, tmp_path / "c", "--only", "distill", "--prefer", "size", "--max-drop", "1")
    entry = next(e for e in result.variants if e["name"] == "distill")
    assert entry["error"] is None and entry["recipe"]["student"]["name"] == "lstm"
    assert entry["size_bytes"] < result.original["size_bytes"] and entry["metric"] is not None
    assert result.chosen is not None and result.chosen["name"] in ("distill", "distill+int8"), result.variants
    student = load_model(result.model_dir)  # a plain lstm: no pretrained base to reload
    assert student.config.model.name == "lstm" and "base" not in json.loads(
        (result.model_dir / "model" / "model.json").read_text())
    embeddings = [m for m in student.model.modules() if isinstance(m, torch.nn.Embedding)]
    assert [e.num_embeddings for e in embeddings] == [vocab]  # the teacher's token ids are the student's words
    assert student.preprocessor.desc["text"] == teacher.preprocessor.desc["text"]  # the teacher's tokenizer
    check_sequence_axes(result.model_dir / "model" / "onnx" / "model.onnx")  # served at any batch length
    rows = reviews(20, seed=7)
    rows.drop(columns="target").to_csv(tmp_path / "rows.csv", index=False)
    predicted = predict(result.model_dir, tmp_path / "rows.csv")["prediction"]
    assert len(predicted) == 20 and set(predicted) <= {"pos", "neg"}


@SLOW
def test_compressors_that_cannot_apply_to_a_text_model_are_refused_with_the_key(lstm_run, lora_run, tmp_path):
    with pytest.raises(ConfigError, match=r"compress.variants: prune_structured needs an mlp or cnn model.*"
                                          r"this model is lstm") as caught:
        compress(lstm_run, variants=["prune_structured", "ort_int8_dynamic"], out=tmp_path / "a")
    assert "ort_int8_dynamic" in caught.value.hint and "prune_structured" not in caught.value.hint.split(":")[-1]
    assert not (tmp_path / "a").exists()  # refused before any work
    with pytest.raises(ConfigError, match=r"prune_unstructured needs a model that saves all its weights.*"
                                          r"this model is pretrained \(lora\)"):
        compress(lora_run, variants=["prune_unstructured"], out=tmp_path / "b")


@SLOW
def test_a_student_that_cannot_read_the_inputs_and_a_pretrained_teacher_without_student_are_config_errors(
        lora_run, tmp_path):
    import yaml

    config_path = lora_run / "config.yaml"
    original = config_path.read_text()
    config = yaml.safe_load(original)
    try:
        config["compress"]["distill"]["student"] = None
        config_path.write_text(yaml.safe_dump(config))
        with pytest.raises(ConfigError, match=r"distill needs compress.distill.student.*pretrained \(lora\)"):
            compress(lora_run, variants=["distill"], out=tmp_path / "a")
        config["compress"]["distill"]["student"] = {"name": "cnn", "channels": [4]}
        config_path.write_text(yaml.safe_dump(config))
        with pytest.raises(ConfigError, match=r"compress.distill.student \(cnn\) cannot read this model's inputs "
                                              r"\(numeric, tokens, attention_mask\)"):
            compress(lora_run, variants=["distill"], out=tmp_path / "b")
    finally:
        config_path.write_text(original)


def test_a_student_is_derived_from_sequence_teachers_by_narrowing_their_widths():
    from modelfoundry.compress.distill import student_config
    from modelfoundry.config import load_config

    def model(**keys):
        config = tiny_config()
        config["model"] = keys
        return load_config(config).model

    lstm = student_config(model(name="lstm", embedding_dim=64, hidden=48, layers=2, head=[32]), 0.5)
    assert (lstm.embedding_dim, lstm.hidden, lstm.layers, lstm.head) == (32, 24, 2, [16])
    transformer = student_config(model(name="transformer", d_model=64, heads=4, ff=128), 0.3)
    assert transformer.d_model % 4 == 0 and transformer.d_model == 20 and transformer.ff == 38
    with pytest.raises(ConfigError, match="Give the student explicitly in compress.distill.student"):
        student_config(SimpleNamespace(name="pretrained"), 0.5)


def stub_bench(model: dict, variants: list[str], student: dict | None = None, partial: bool = False):
    """What check_asked reads of a Bench, without training: the parent's model config and module, the
    compress section and the named inputs (numeric + tokens + attention_mask)."""
    from modelfoundry.artifacts.inputs import InputField, InputSpec
    from modelfoundry.config import CompressConfig, load_config

    config = tiny_config()
    config["model"] = model
    module = SimpleNamespace(base_reference=lambda: {"sha256": "0" * 64} if partial else None)
    saved = SimpleNamespace(config=SimpleNamespace(model=load_config(config).model), model=module,
                            record=SimpleNamespace(n_outputs=2))
    spec = InputSpec([InputField("numeric", "float32", (3,)), InputField("tokens", "int64", (12,), vocab_size=50),
                      InputField("attention_mask", "int64", (12,))])
    cfg = CompressConfig(variants=variants, distill={"student": student})
    return SimpleNamespace(saved=saved, cfg=cfg, input_spec=spec)


def test_the_config_errors_name_the_key_the_model_and_what_applies():
    from modelfoundry.compress.variants import check_asked

    lstm = stub_bench(LSTM, ["prune_structured", "ort_int8_dynamic"])
    with pytest.raises(ConfigError, match=r"compress.variants: prune_structured needs an mlp or cnn model .*; this "
                                          r"model is lstm\.") as caught:
        check_asked(lstm, lstm.cfg.variants)
    assert "prune_unstructured" in caught.value.hint and "prune_structured," not in caught.value.hint
    check_asked(lstm, None)  # the default list (every compressor): inapplicable ones are left out silently
    check_asked(stub_bench(LSTM, ["distill"]), ["distill"])  # an lstm teacher gets a derived student
    frozen = stub_bench({"name": "transformer"}, ["prune_unstructured"], partial=True)
    with pytest.raises(ConfigError, match="prune_unstructured needs a model that saves all its weights"):
        check_asked(frozen, frozen.cfg.variants)
    wrong = stub_bench(LSTM, ["distill"], student={"name": "cnn", "channels": [4]})
    with pytest.raises(ConfigError, match=r"compress.distill.student \(cnn\) cannot read this model's inputs "
                                          r"\(numeric, tokens, attention_mask\)") as caught:
        check_asked(wrong, None)
    assert "{name: lstm" in caught.value.hint
    check_asked(stub_bench(LSTM, ["distill"], student=STUDENT), ["distill"])  # a student that reads tokens


def test_a_graph_that_fixes_the_length_of_its_token_inputs_is_no_candidate(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from modelfoundry.compress.measure import check_sequence_axes
    from modelfoundry.errors import ExportError

    def graph(steps):
        inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", steps])
                  for name in ("tokens", "attention_mask")]
        output = helper.make_tensor_value_info("out", TensorProto.INT64, ["batch", steps])
        model = helper.make_model(helper.make_graph([helper.make_node("Add", ["tokens", "attention_mask"], ["out"])],
                                                    "g", inputs, [output]))
        path = tmp_path / f"{steps}.onnx"
        onnx.save(model, str(path))
        return path

    check_sequence_axes(graph("steps"))  # dynamic: served batches of any length
    with pytest.raises(ExportError, match=r"takes 'tokens' of fixed length \[16\] only, but a served batch is padded"):
        check_sequence_axes(graph(16))
