"""`foundry export RUN --merge`: a LoRA run written standalone (a plain Hugging Face encoder with the adapters
folded in, plus its head), which loads without peft or the base weights and answers what the adapter model
answers; checked against a tolerance, and written atomically."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from modelfoundry.errors import ConfigError, ExportError
from tests.unit.test_pretrained_models import run_text, tiny_bert  # noqa: F401 - the module-scoped fixture


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_bert):  # noqa: F811
    tmp = tmp_path_factory.mktemp("merge")
    run_text(tmp, {"path": str(tiny_bert), "finetune": "lora", "lora": {"r": 4, "alpha": 32}, "head": [8]},
             name="lora")
    return tmp / "lora"


def _batch(spec, rows=6):
    batch = spec.example(rows, seed=0)
    batch["tokens"] = np.random.default_rng(0).integers(5, 100, size=batch["tokens"].shape)
    batch["attention_mask"][3:, 8:] = 0
    return [torch.from_numpy(a) for a in spec.arrange(batch)]


def test_the_merged_model_loads_without_adapters_and_answers_as_the_adapter_model(lora_run, tiny_bert):  # noqa: F811
    from transformers import AutoModel

    from modelfoundry.api.exporting import export
    from modelfoundry.models.pretrained import load_merged
    from modelfoundry.rundir import load_model

    result = export(str(lora_run), merge=True)
    out = lora_run / "model" / "merged"
    assert result.out_dir == out and result.rows_checked > 0 and result.max_abs_diff <= 1e-4
    record = json.loads((out / "export.json").read_text())
    assert record["kind"] == "merged" and record["parity"]["max_abs_diff"] == result.max_abs_diff
    assert record["trained_on_base"]["sha256"]  # provenance only: loading needs none of it
    assert sorted(p.name for p in (out / "encoder").iterdir()) == ["config.json", "model.safetensors",
                                                                   "tokenizer.json"]
    assert str(tiny_bert) not in (out / "merged.json").read_text()  # no reference to the base weights
    plain = AutoModel.from_pretrained(out / "encoder")  # an ordinary HF model: no adapter modules left
    assert not any("lora" in name for name, _ in plain.named_parameters())

    saved = load_model(lora_run)
    assert any(float(p.detach().abs().sum()) > 0 for n, p in saved.model.named_parameters() if "lora_B" in n)  # it trained
    merged = load_merged(out)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    inputs = _batch(saved.record.input_spec)
    with torch.inference_mode():
        adapter, standalone = saved.model(*inputs), merged(*inputs)
        base_only = load_merged(out)
        base_only.encoder.load_state_dict(AutoModel.from_pretrained(tiny_bert).state_dict())
        unmerged = base_only(*inputs)  # the base without the adapters answers differently: the merge mattered
    assert float((adapter - standalone).abs().max()) <= 1e-5
    assert float((adapter - unmerged).abs().max()) > 1e-4


def test_a_merge_beyond_the_tolerance_writes_nothing_and_keeps_the_previous_one(lora_run, tmp_path, monkeypatch):
    import modelfoundry.models.pretrained as pretrained
    from modelfoundry.merged_export import export_merged

    out = tmp_path / "merged"
    first = export_merged(lora_run, out)
    before = (out / "head.safetensors").read_bytes()
    load = pretrained.load_merged

    def off(directory):  # a merge that went wrong: its head shifted
        model = load(directory)
        with torch.no_grad():
            model.head[-1].bias[0] += 2.0  # one class only: a shift of all logits would not show in softmax
        return model

    monkeypatch.setattr(pretrained, "load_merged", off)
    with pytest.raises(ExportError, match=r"differs from the adapter model by up to .* more than the tolerance"):
        export_merged(lora_run, out)
    assert (out / "head.safetensors").read_bytes() == before and json.loads((out / "export.json").read_text())[
        "parity"]["max_abs_diff"] == first.max_abs_diff
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no staging directory left behind
    with pytest.raises(ConfigError, match="must be >= 0"):
        export_merged(lora_run, out, tolerance=-1)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ExportError, match="exists and is not a merged model"):  # never replaced wholesale
        export_merged(lora_run, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_the_cli_merges_into_the_directory_given(lora_run, tmp_path):
    from typer.testing import CliRunner

    from modelfoundry.cli import app

    result = CliRunner().invoke(app, ["export", str(lora_run), "--merge", "-o", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "Merged model written to" in result.output and (tmp_path / "m" / "export.json").is_file()


def test_a_model_without_a_pretrained_encoder_cannot_be_merged(tmp_path):
    from modelfoundry.api import run
    from modelfoundry.merged_export import export_merged
    from tests.conftest import tiny_config

    run(tiny_config(training={"epochs": 1}), run_dir=tmp_path / "mlp", progress=False)
    with pytest.raises(ExportError, match=r"\(mlp\) has no pretrained encoder.*"):
        export_merged(tmp_path / "mlp")
    assert not (tmp_path / "mlp" / "model" / "merged").exists()


@pytest.mark.slow  # a training run over windows: ~5 s
def test_a_model_over_windows_of_long_texts_merges_with_its_window_pooling(tmp_path, tiny_bert):  # noqa: F811
    from modelfoundry.merged_export import export_merged
    from modelfoundry.models.pretrained import load_merged
    from modelfoundry.rundir import load_model

    from modelfoundry.api import run
    from tests.conftest import tiny_config
    from tests.unit.test_text_data import reviews

    reviews(120).to_csv(tmp_path / "r.csv", index=False)  # ~16 tokens a review: 2-3 windows of 12
    config = tiny_config(name="win", data={"source": str(tmp_path / "r.csv"), "text": {
        "max_length": 12, "stride": 4, "max_windows": 3, "window_pool": "max"}}, training={"epochs": 1})
    config["model"] = {"name": "pretrained", "path": str(tiny_bert), "finetune": "lora", "lora": {"r": 2}}
    run(config, run_dir=tmp_path / "win", progress=False)
    result = export_merged(tmp_path / "win")
    assert result.max_abs_diff <= 1e-4
    merged, saved = load_merged(result.out_dir), load_model(tmp_path / "win")
    assert type(merged).__name__ == type(saved.model).__name__ == "WindowPooled" and merged.pool == "max"
    inputs = [torch.from_numpy(a) for a in saved.record.input_spec.arrange(saved.record.input_spec.example(4, 0))]
    with torch.inference_mode():
        assert float((merged(*inputs) - saved.model(*inputs)).abs().max()) <= 1e-5
