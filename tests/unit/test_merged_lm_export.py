"""A causal language model with LoRA adapters merged into one standalone Hugging Face directory
(merged_export.write_merged_language_model; `foundry export RUN --merge` on a causal-LM run): no peft needed to
load it, its logits equal the adapter model's, and its chat template prompts as the run did."""

from __future__ import annotations

import json

import pytest
import torch

from modelfoundry.errors import ExportError
from modelfoundry.merged_export import (
    PARITY_PROMPTS,
    chat_template_for,
    write_merged_language_model,
)
from modelfoundry.models.llm import (
    LanguageModel,
    LLMConfig,
    load_base_language_model,
    prepare_finetuning,
)
from modelfoundry.models.llm_base import load_causal_lm, load_tokenizer

OTHER_PROMPTS = ([{"role": "user", "content": "hello world, is this a tiny language model?"}],
                 [{"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "Four."},
                  {"role": "user", "content": "And three plus three?"}])


def adapter_model(directory, template="model", system=None, seed=0):
    """The tiny model with LoRA adapters whose B matrices are random (fresh adapters change nothing)."""
    hf = prepare_finetuning(load_causal_lm(str(directory)), LLMConfig(name="llm", base=str(directory),
                                                                      lora={"r": 4, "alpha": 8}))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return LanguageModel(hf.eval(), load_tokenizer(str(directory)), "tuned", template, system)


def logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()


@pytest.mark.parametrize(("arch", "template", "system"), [
    ("tiny_llm", "model", None), ("tiny_llm", "chatml", 'Be "brief".\nÜber {% alles %}'),
    ("tiny_gpt2", "plain", "You answer briefly.")])
def test_merged_directory_loads_plain_and_answers_as_the_adapter_model(arch, template, system, request, tmp_path):
    directory = request.getfixturevalue(arch)
    lm = adapter_model(directory, template, system)
    prompts = [lm.prompt_ids(m) for m in OTHER_PROMPTS]  # not the parity set the export checks itself on
    expected = [logits(lm.model, ids) for ids in prompts]
    base = load_causal_lm(str(directory))
    assert max(float((logits(base, ids) - e).abs().max()) for ids, e in zip(prompts, expected)) > 1e-2  # adapters matter

    out = tmp_path / "merged"
    out.mkdir()
    diff, checked, scale = write_merged_language_model(lm, out, tolerance=1e-4, description={"name": "tuned"})
    assert checked == len(PARITY_PROMPTS) and diff <= 1e-4 and scale >= 1.0

    merged = load_base_language_model(str(out))  # the default template: the directory's own chat template
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        assert not any("lora" in key for key in weights.keys())  # noqa: SIM118 - safe_open has no __iter__
    assert not any("lora" in name for name, _ in merged.model.named_parameters())
    for messages, ids, e in zip(OTHER_PROMPTS, prompts, expected):
        assert merged.prompt_ids(messages) == ids  # prompted as the run was, system message included
        assert float((logits(merged.model, ids) - e).abs().max()) <= 1e-4
    description = json.loads((out / "merged.json").read_text())
    assert description == {"format": 1, "kind": "causal_lm", "name": "tuned", "template": template, "system": system}


def test_chat_template_with_a_system_message_keeps_one_given(tiny_llm):
    tokenizer = load_tokenizer(str(tiny_llm))
    tokenizer.chat_template = chat_template_for(tokenizer, "chatml", "default system")
    own = [{"role": "system", "content": "mine"}, {"role": "user", "content": "hi"}]
    text = tokenizer.apply_chat_template(own, tokenize=False, add_generation_prompt=True)
    assert "mine" in text and "default system" not in text
    text = tokenizer.apply_chat_template(own[1:], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\ndefault system<|im_end|>\n<|im_start|>user\nhi")


def test_merge_beyond_the_tolerance_is_refused(tiny_llm, tmp_path, monkeypatch):
    from modelfoundry import merged_export

    lm = adapter_model(tiny_llm)
    real = merged_export._logits

    def shifted(model, ids):  # the read-back model (every call after the parity set's) is off by 0.01
        calls.append(1)
        logits = real(model, ids)
        scales.append(float(logits.abs().max()))
        return logits + (0.01 if len(calls) > len(PARITY_PROMPTS) else 0.0)

    calls, scales = [], []
    monkeypatch.setattr(merged_export, "_logits", shifted)
    with pytest.raises(ExportError, match="differ from the adapter model's by up to 0.01"):
        write_merged_language_model(lm, tmp_path, tolerance=1e-3, description={})
    # the tolerance is relative to the logits' scale: allowed 0.01 where the largest |logit| is 10x that of 1e-3
    scale = max(1.0, *scales[:len(PARITY_PROMPTS)])
    calls.clear()
    diff, _, got_scale = write_merged_language_model(lm, tmp_path / "ok", tolerance=0.0101 / scale,
                                                     description={})
    assert diff == pytest.approx(0.01, abs=1e-4) and got_scale == pytest.approx(scale)


@pytest.fixture(scope="module")
def lora_lm_run(tiny_llm, tmp_path_factory):
    import pandas as pd

    from modelfoundry.api.training import run
    from modelfoundry.config import load_config

    tmp = tmp_path_factory.mktemp("lm-merge")
    pd.DataFrame([{"text": f"review {i} was {'good' if i % 2 else 'bad'}", "label": "positive" if i % 2 else "negative"}
                  for i in range(40)]).to_json(tmp / "pairs.jsonl", orient="records", lines=True)
    config = load_config({"name": "sft", "seed": 0,
                          "data": {"source": str(tmp / "pairs.jsonl"),
                                   "lm": {"prompt": "Classify: {text}", "completion": "label", "template": "chatml",
                                          "system": "Answer with one word."}},
                          "model": {"name": "llm", "base": str(tiny_llm), "finetune": "lora", "lora": {"r": 4}},
                          "training": {"epochs": 2, "batch_size": 8, "optimizer": {"lr": 0.01},
                                       "early_stopping": None},
                          "evaluation": {"plots": False, "generation": {"rows": 2, "max_new_tokens": 2}},
                          "tracking": {"enabled": False}})
    return run(config, run_dir=tmp / "run").run_dir


def test_export_merge_of_a_causal_lm_run(lora_lm_run, tmp_path):
    from typer.testing import CliRunner

    from modelfoundry.api.exporting import export
    from modelfoundry.cli import app
    from modelfoundry.config.evaluation import GenerationEvalConfig
    from modelfoundry.evaluate.lm_evaluation import generate_answers
    from modelfoundry.rundir import load_language_model

    result = export(str(lora_lm_run), merge=True)
    out = lora_lm_run / "model" / "merged"
    assert result.out_dir == out and result.rows_checked == len(PARITY_PROMPTS) and result.max_abs_diff <= 1e-4
    record = json.loads((out / "export.json").read_text())
    assert record["kind"] == "merged" and record["parity"]["max_abs_diff"] == result.max_abs_diff
    assert record["trained_on_base"]["sha256"] and {"model.safetensors", "tokenizer.json", "config.json"} <= set(
        record["files"])
    assert json.loads((out / "merged.json").read_text())["template"] == "chatml"

    merged = load_base_language_model(str(out))  # no peft, no base: the directory alone
    adapter = load_language_model(lora_lm_run, merge=False).model  # the adapters apart
    assert any(float(p.detach().abs().sum()) > 0 for n, p in adapter.named_parameters() if "lora_B" in n)
    served = load_language_model(lora_lm_run)  # what generation and serving load
    for messages in OTHER_PROMPTS:
        ids = served.prompt_ids(messages)
        assert merged.prompt_ids(messages) == ids  # the run's template and system message travel in the directory
        assert float((logits(merged.model, ids) - logits(adapter, ids)).abs().max()) <= 1e-4
    cfg = GenerationEvalConfig(max_new_tokens=6)
    prompts = [[{"role": "user", "content": "Classify: review 3 was good"}], list(OTHER_PROMPTS[0])]
    assert generate_answers(merged, prompts, cfg) == generate_answers(served, prompts, cfg)

    cli = CliRunner().invoke(app, ["export", str(lora_lm_run), "--merge", "-o", str(tmp_path / "m")])
    assert cli.exit_code == 0, cli.output
    assert "load_base_language_model" in cli.output and "fixed prompts" in cli.output
    assert (tmp_path / "m" / "export.json").is_file()
