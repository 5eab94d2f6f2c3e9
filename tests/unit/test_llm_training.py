"""Fine-tuning causal language models through the spine: the loss, the modes, resume, saving and loading."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from modelfoundry.config import TrainingConfig, load_config
from tests.conftest import InterruptAfter


def sft_config(tmp_path, base, **model):
    path = tmp_path / "pairs.jsonl"
    if not path.exists():
        pd.DataFrame([{"text": f"review {i} was {'good' if i % 2 else 'bad'}",
                       "label": "positive" if i % 2 else "negative"} for i in range(80)]).to_json(
            path, orient="records", lines=True)
    return load_config({"name": "sft", "seed": 0,
                        "data": {"source": str(path), "lm": {"prompt": "Classify: {text}", "completion": "label"}},
                        "model": {"name": "llm", "base": str(base), **model},
                        "training": {"epochs": 3, "batch_size": 8, "optimizer": {"lr": 0.01}, "early_stopping": None},
                        "evaluation": {"plots": False, "generation": {"rows": 8, "max_new_tokens": 4}},
                        "tracking": {"enabled": False}})


@pytest.fixture(scope="module")
def prepared(tiny_llm, tmp_path_factory):
    from modelfoundry.experiment import prepare

    return prepare(sft_config(tmp_path_factory.mktemp("sft"), tiny_llm))


def build(config, data):
    from modelfoundry.models import build_model

    torch.manual_seed(0)
    return build_model(config.model, data.input_spec, data.n_outputs)


def test_the_completion_loss_is_hugging_faces_loss_on_the_completion_tokens(prepared, tiny_llm, tmp_path):
    from modelfoundry.data.lm import IGNORE

    model = build(sft_config(tmp_path, tiny_llm, finetune="full"), prepared)
    tokens = torch.from_numpy(prepared.X["train"]["tokens"][:4])
    mask = torch.from_numpy(prepared.X["train"]["attention_mask"][:4])
    labels = torch.from_numpy(prepared.y["train"][:4])
    ours = model.training_loss()(model(tokens, mask), labels)
    hf_labels = torch.full_like(tokens, IGNORE)  # Hugging Face shifts inside: label t is token t itself
    hf_labels[:, 1:] = labels[:, :-1]
    theirs = model.hf(input_ids=tokens, attention_mask=mask, labels=hf_labels).loss
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode, trainable", [("lora", "lora_"), ("freeze", "layers.1."), ("full", "")])
def test_each_mode_trains_what_it_says(prepared, tiny_llm, tmp_path, mode, trainable):
    model = build(sft_config(tmp_path, tiny_llm, finetune=mode, lora={"r": 2}), prepared)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(trainable in n for n in names)
    total = sum(p.numel() for p in model.parameters())
    assert (sum(p.numel() for p in model.parameters() if p.requires_grad) == total) == (mode == "full")
    assert set(model.saved_state()) == ({n for n, _ in model.named_parameters() if n in names}
                                        if mode != "full" else set(model.state_dict()))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(prepared, tiny_llm, tmp_path):
    grads = []
    for checkpointing in (False, True):
        model = build(sft_config(tmp_path, tiny_llm, finetune="lora", gradient_checkpointing=checkpointing,
                                 lora={"dropout": 0.0}), prepared)
        model.train()
        x = [torch.from_numpy(prepared.X["train"][k][:4]) for k in ("tokens", "attention_mask")]
        loss = model.training_loss()(model(*x), torch.from_numpy(prepared.y["train"][:4]))
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_lora_fit_cut_after_epoch_one_resumes_exactly(prepared, tiny_llm, tmp_path):
    from modelfoundry.train.loop import fit

    config = sft_config(tmp_path, tiny_llm, finetune="lora", lora={"r": 2})
    cfg = TrainingConfig(epochs=3, batch_size=8, optimizer={"lr": 0.01}, early_stopping=None, precision="bf16")

    def train(run_dir, **kw):
        return fit(build(config, prepared), prepared.X, prepared.y, cfg, task="causal_lm", seed=0, progress=False,
                   run_dir=tmp_path / run_dir, **kw)

    straight = train("a")
    assert {"val_loss", "val_perplexity", "val_token_accuracy"} <= set(straight.history[0])
    assert straight.history[-1]["val_loss"] < straight.history[0]["val_loss"]
    checkpoint = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["model"] and all("lora_" in k for k in checkpoint["model"])
    cut = train("b", callbacks=[InterruptAfter(1)])
    assert cut.interrupted and len(cut.history) == 1
    resumed = train("b", resume=True)
    assert [r["val_loss"] for r in resumed.history] == pytest.approx([r["val_loss"] for r in straight.history],
                                                                     abs=1e-6)
    for key, value in straight.model.saved_state().items():
        torch.testing.assert_close(resumed.model.saved_state()[key], value, rtol=0, atol=1e-6)


def test_a_run_learns_saves_the_adapter_only_and_loads_back_checked(tiny_llm, tmp_path):
    from modelfoundry.api.training import run
    from modelfoundry.errors import RunDirError
    from modelfoundry.rundir import is_language_model, load_language_model

    base = tmp_path / "base"
    shutil.copytree(tiny_llm, base)
    config = sft_config(tmp_path, base, finetune="lora", lora={"r": 8, "dropout": 0.0})
    config.training.epochs, config.training.optimizer.lr = 8, 0.02
    result = run(config, run_dir=tmp_path / "run")
    metrics = result.metrics
    assert metrics["label_accuracy"] >= metrics["baseline_base_label_accuracy"] + 0.3, metrics
    assert metrics["perplexity"] == pytest.approx(np.exp(metrics["loss"]))
    assert is_language_model(result.run_dir) and (result.run_dir / "eval" / "report.md").is_file()
    weights = torch.load(result.run_dir / "model" / "weights.pt", weights_only=True)
    assert weights and all("lora_" in k for k in weights)
    assert sum(v.numel() for v in weights.values()) < 0.5 * result.extras["parameters"]["total"]
    lm = load_language_model(result.run_dir)
    answer = lm.tokenizer.decode(lm.model.generate(torch.tensor([lm.prompt_ids(
        [{"role": "user", "content": "Classify: review 7 was good"}])]), max_new_tokens=3, do_sample=False)[0])
    assert "positive" in answer
    weights_file = base / "model.safetensors"  # another base under the same path: refused, with the reason
    weights_file.write_bytes(weights_file.read_bytes()[:-8] + b"\0" * 8)
    from modelfoundry.models.llm_base import file_sha256

    file_sha256.cache_clear()
    with pytest.raises(RunDirError, match="sha256"):
        load_language_model(result.run_dir)
