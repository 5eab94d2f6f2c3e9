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

from modelfoundry.artifacts.inputs import InputSpec
from modelfoundry.config import load_config
from modelfoundry.config.base import Section
from modelfoundry.errors import ConfigError
from modelfoundry.models import MODELS, build_model, register_model, unregister_model
from tests.conftest import tiny_config

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
def contract_config(name: str, **model_keys):
    sections = tiny_config(name=f"contract-{name}", data=DIGITS, training={"epochs": 1, "batch_size": 64})
    sections["model"] = {"name": name, **TINY_MODEL.get(name, {}), **model_keys}  # replaced, not merged
    return load_config(sections)


def check_contract(name: str, tmp_path, **model_keys) -> None:
    """Build, train one epoch, export to ONNX with parity, and serve a prediction equal to `foundry predict`'s."""
    from fastapi.testclient import TestClient

    from modelfoundry import predict, run
    from modelfoundry.config import ServeConfig
    from modelfoundry.data.sources import load_source
    from modelfoundry.export import export_onnx
    from modelfoundry.serve.app import create_app
    from modelfoundry.serve.store import RunDirStore

    config = contract_config(name, **model_keys)
    model = build_model(config.model, IMAGES, 10)
    assert sum(p.numel() for p in model.parameters()) > 0

    result = run(config, run_dir=tmp_path / "run", progress=False)
    assert 0 <= result.metrics["accuracy"] <= 1

    export = export_onnx(tmp_path / "run")  # into the run, where the server finds it; raises if parity fails
    assert export.rows_checked > 0 and export.max_abs_diff <= export.tolerance

    rows = load_source("sklearn:digits").drop(columns="target").head(5)
    rows.to_csv(tmp_path / "rows.csv", index=False)
    expected = predict(tmp_path / "run", tmp_path / "rows.csv")
    with TestClient(create_app(ServeConfig(), RunDirStore(tmp_path / "run"))) as client:
        body = client.post("/predict", json={"records": rows.to_dict(orient="records")}).json()
    assert body["model"] == f"contract-{name}"
    assert body["predictions"] == expected.prediction.tolist()
    served = pd.DataFrame(body["probabilities"], columns=[f"prob_{k}" for k in range(10)])
    assert (served - expected[served.columns]).abs().max().max() < 1e-4


# ~1-2 s each once torch, ONNX Runtime and FastAPI are imported: part of the fast tier on purpose
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_in_the_table_keeps_the_contract(name, tmp_path):
    check_contract(name, tmp_path)


def test_a_model_added_as_one_module_and_one_entry_keeps_the_contract(tiny_linear, tmp_path):
    check_contract(tiny_linear, tmp_path, bias=False, scale=0.5)


# ------------------------------------------------------------------------------------ fast: the table itself
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_builds_from_its_config_and_gives_one_output_per_class(name):
    import torch

    config = contract_config(name)
    assert type(config.model) is MODELS[name].config
    model = build_model(config.model, IMAGES, 10).eval()
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)  # (B, C, H, W) -> (B, n_outputs)


def test_registering_a_model_makes_its_section_a_config_and_removing_it_undoes_that(tiny_linear):
    config = contract_config(tiny_linear, bias=False)
    assert isinstance(config.model, TinyLinearConfig) and config.model.bias is False
    model = build_model(config.model, IMAGES, 10)
    assert [type(m).__name__ for m in model] == ["Flatten", "Linear"] and model[1].bias is None
    with pytest.raises(ConfigError, match=r"model\.bais.*Did you mean 'bias'\?"):
        contract_config(tiny_linear, bais=False)  # its keys are checked like a shipped model's
    with pytest.raises(ConfigError, match=r"Valid names: cnn, mlp, tiny_linear"):
        contract_config("tiny_linar")
    student = load_config(tiny_config(compress={"distill": {"student": {"name": tiny_linear}}}))
    assert isinstance(student.compress.distill.student, TinyLinearConfig)  # every model: field sees it

    unregister_model(tiny_linear)
    try:
        with pytest.raises(ConfigError, match=r"Unknown model 'tiny_linear'.*Valid names: cnn, mlp\."):
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
