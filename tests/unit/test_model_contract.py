"""The model contract, run against every entry of the model table (models/table.py): built from a tiny
config, trained one epoch, exported to ONNX with parity, and served. A model added in this file (a config
class and a builder, registered as one table entry) goes through the same steps, which shows that adding a
model needs nothing else: no config, loop, export or server edits."""

from __future__ import annotations

import math
from typing import Literal

import pandas as pd
import pytest
from pydantic import Field

from modelfoundry.artifacts.inputs import InputField, InputSpec
from modelfoundry.config import load_config
from modelfoundry.config.base import Section
from modelfoundry.errors import ConfigError
from modelfoundry.models import MODELS, build_model, register_model, unregister_model
from tests.conftest import tiny_config
from tests.unit.test_pretrained_models import tiny_bert  # noqa: F401 - the module-scoped fixture

# every model of the table trains on tiny 8x8 digit images (an MLP flattens them)
DIGITS = {"source": "sklearn:digits", "features": {"pixel_*": {"type": "image"}}}
IMAGES = InputSpec.single("image", (1, 8, 8))
TINY_MODEL = {"mlp": {"hidden": [8]}, "cnn": {"channels": [4], "hidden": []}}  # smaller than the defaults


# ------------------------------------------------------------------ a model added by one module + one entry
class TinyLinearConfig(Section):
    """`model: {name: tiny_linear}`: one Linear layer over the flattened inputs."""

    name: Literal["tiny_linear"]
    bias: bool = True
    scale: float = Field(1.0, gt=0)  # multiplies the initial weights


def build_tiny_linear(config: TinyLinearConfig, inputs: InputSpec, n_outputs: int):
    import torch
    from torch import nn

    model = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(inputs[0].shape), n_outputs, bias=config.bias))
    with torch.no_grad():
        model[1].weight.mul_(config.scale)
    return model


@pytest.fixture
def tiny_linear():
    register_model("tiny_linear", TinyLinearConfig, build_tiny_linear)
    yield "tiny_linear"
    unregister_model("tiny_linear")


# -------------------------------------------------------------------------------------------- the contract
# models of text train on short reviews (tests/unit/test_text_data.py), written once per session
TEXT_SPEC = InputSpec([InputField("numeric", "float32", (4,)), InputField("tokens", "int64", (16,), 200),
                       InputField("attention_mask", "int64", (16,))])


@pytest.fixture(scope="module")
def text_csv(tmp_path_factory):
    from tests.unit.test_text_data import reviews

    path = tmp_path_factory.mktemp("contract-text") / "reviews.csv"
    reviews(160).to_csv(path, index=False)
    return path


@pytest.fixture
def model_keys(request, tiny_bert):
    """Per-model keys a test needs besides the tiny sizes (the pretrained model: the tiny BERT's directory)."""
    return {"pretrained": {"path": str(tiny_bert), "finetune": "lora", "lora": {"r": 2}}}


def takes_text(name: str, keys: dict) -> bool:
    """Whether model `name` needs text inputs (its builder refuses images, naming 'tokens')."""
    config = load_config({**tiny_config(), "model": {"name": name, **TINY_MODEL.get(name, {}), **keys}}).model
    try:
        build_model(config, IMAGES, 10)
    except ConfigError as exc:
        if "text" in exc.message:
            return True
        raise
    return False


def contract_config(name: str, text_csv=None, **model_keys):
    data = DIGITS if text_csv is None else {"source": str(text_csv), "text": {"max_length": 16}}
    sections = tiny_config(name=f"contract-{name}", data=data, training={"epochs": 1, "batch_size": 64})
    sections["model"] = {"name": name, **TINY_MODEL.get(name, {}), **model_keys}  # replaced, not merged
    return load_config(sections)


def check_contract(name: str, tmp_path, text_csv=None, **model_keys) -> None:
    """Build, train one epoch, export to ONNX with parity, and serve a prediction equal to `foundry predict`'s:
    on 8x8 digit images, or on short texts (with numeric and categorical columns beside) for a text model."""
    from fastapi.testclient import TestClient

    from modelfoundry import predict, run
    from modelfoundry.config import ServeConfig
    from modelfoundry.data.sources import load_source
    from modelfoundry.export import export_onnx
    from modelfoundry.serve.app import create_app
    from modelfoundry.serve.store import RunDirStore

    config = contract_config(name, text_csv, **model_keys)
    model = build_model(config.model, IMAGES if text_csv is None else TEXT_SPEC, 10)
    assert sum(p.numel() for p in model.parameters()) > 0

    result = run(config, run_dir=tmp_path / "run", progress=False)
    assert 0 <= result.metrics["accuracy"] <= 1

    export = export_onnx(tmp_path / "run")  # into the run, where the server finds it; raises if parity fails
    assert export.rows_checked > 0 and export.max_abs_diff <= export.tolerance

    source = "sklearn:digits" if text_csv is None else str(text_csv)
    rows = load_source(source).drop(columns="target").head(5)
    rows.to_csv(tmp_path / "rows.csv", index=False)
    expected = predict(tmp_path / "run", tmp_path / "rows.csv")
    with TestClient(create_app(ServeConfig(), RunDirStore(tmp_path / "run"))) as client:
        body = client.post("/predict", json={"records": rows.to_dict(orient="records")}).json()
    assert body["model"] == f"contract-{name}"
    assert body["predictions"] == expected.prediction.tolist()
    classes = [c.removeprefix("prob_") for c in expected.columns if c.startswith("prob_")]
    served = pd.DataFrame(body["probabilities"], columns=[f"prob_{k}" for k in classes])
    assert (served - expected[served.columns]).abs().max().max() < 1e-4


# ~1-2 s each once torch, ONNX Runtime and FastAPI are imported: the image models are part of the fast tier on
# purpose; the text models (2-4 s each: tokenizing, an ONNX export of a recurrent or attention graph) are slow
# the predictors: a causal language model (llm) generates text instead of one output per class; its own suites are
# tests/unit/test_llm_training.py (build, modes, loss, resume, save/load) and tests/e2e/test_llm_run.py
# the autoencoder scores anomalies instead (tests/unit/test_anomaly.py, tests/e2e/test_anomaly_run.py), and a GAN
# generates rows (tests/unit/test_gan.py, tests/e2e/test_gan_run.py)
PREDICTORS = sorted(n for n in MODELS if n not in ("llm", "autoencoder", "gan"))


@pytest.mark.parametrize("name", [n if n in ("mlp", "cnn") else pytest.param(n, marks=pytest.mark.slow)
                                  for n in PREDICTORS])
def test_every_model_in_the_table_keeps_the_contract(name, tmp_path, text_csv, model_keys):
    keys = model_keys.get(name, {})
    check_contract(name, tmp_path, text_csv if takes_text(name, keys) else None, **keys)


def test_a_model_added_as_one_module_and_one_entry_keeps_the_contract(tiny_linear, tmp_path):
    check_contract(tiny_linear, tmp_path, bias=False, scale=0.5)


# ------------------------------------------------------------------------------------ fast: the table itself
@pytest.mark.parametrize("name", PREDICTORS)
def test_every_model_builds_from_its_config_and_gives_one_output_per_class(name, model_keys):
    import torch

    keys = model_keys.get(name, {})
    config = contract_config(name, **keys)
    assert type(config.model) is MODELS[name].config
    spec = TEXT_SPEC if takes_text(name, keys) else IMAGES
    model = build_model(config.model, spec, 10).eval()
    batch = [torch.from_numpy(a) for a in spec.arrange(spec.example(3, seed=0))]
    assert model(*batch).shape == (3, 10)  # the named inputs in order -> (B, n_outputs)


def test_registering_a_model_makes_its_section_a_config_and_removing_it_undoes_that(tiny_linear):
    config = contract_config(tiny_linear, bias=False)
    assert isinstance(config.model, TinyLinearConfig) and config.model.bias is False
    model = build_model(config.model, IMAGES, 10)
    assert [type(m).__name__ for m in model] == ["Flatten", "Linear"] and model[1].bias is None
    with pytest.raises(ConfigError, match=r"model\.bais.*Did you mean 'bias'\?"):
        contract_config(tiny_linear, bais=False)  # its keys are checked like a shipped model's
    with pytest.raises(ConfigError, match=r"Valid names: " + ", ".join(sorted(MODELS))):
        contract_config("tiny_linar")
    student = load_config(tiny_config(compress={"distill": {"student": {"name": tiny_linear}}}))
    assert isinstance(student.compress.distill.student, TinyLinearConfig)  # every model: field sees it

    unregister_model(tiny_linear)
    try:
        shipped = ", ".join(sorted(n for n in MODELS if n != "tiny_linear"))
        with pytest.raises(ConfigError, match=rf"Unknown model 'tiny_linear'.*Valid names: {shipped}\."):
            contract_config(tiny_linear)
    finally:
        register_model(tiny_linear, TinyLinearConfig, build_tiny_linear)  # the fixture removes it again


def test_a_registration_that_could_not_be_selected_is_refused():
    class Unnamed(Section):
        width: int = 4

    class WrongName(Section):
        name: Literal["other"]

    for name, config, fragment in (("mlp", TinyLinearConfig, "already registered"),
                                   ("Bad-Name", TinyLinearConfig, "lower_snake_case"),
                                   ("unnamed", Unnamed, "must declare `name: Literal"),
                                   ("wrong", WrongName, "must declare `name: Literal"),
                                   ("plain", dict, "must subclass")):
        with pytest.raises(ConfigError, match=fragment):
            register_model(name, config, build_tiny_linear)
    assert "unnamed" not in MODELS and "wrong" not in MODELS and "plain" not in MODELS


def test_validating_a_config_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from modelfoundry.config import load_config; "
            "load_config({'name': 'x', 'data': {'source': 'a.csv'}, 'model': {'name': 'cnn'}}); "
            "print(sorted(m for m in ('torch', 'numpy', 'pandas', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
