"""The sequence models from scratch (models/rnn.py: lstm, gru; models/transformer.py: transformer): built from a
config for token, token + numeric and series inputs; padding never changes a row's output; the packed training
path computes what the exportable one does; ONNX export keeps parity; and a tiny token task is learnt."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from modelfoundry.artifacts.inputs import InputField, InputSpec
from modelfoundry.config import load_config
from modelfoundry.errors import ConfigError
from modelfoundry.models import build_model
from tests.conftest import tiny_config

STEPS, VOCAB = 9, 30
TOKENS = InputSpec([InputField("tokens", "int64", (STEPS,), VOCAB), InputField("attention_mask", "int64", (STEPS,))])
TOKENS_NUMERIC = TOKENS.with_field(InputField("numeric", "float32", (3,)))
SERIES = InputSpec.single("series", (STEPS, 2))
SPECS = {"tokens": TOKENS, "tokens+numeric": TOKENS_NUMERIC, "series": SERIES}

SMALL = {"lstm": {"embedding_dim": 8, "hidden": 6}, "gru": {"embedding_dim": 8, "hidden": 6},
         "transformer": {"d_model": 16, "heads": 2, "ff": 32, "max_length": 16}}
# every model and pooling, one- and two-layer, one and both directions, both kinds of positions
VARIANTS = [
    {"name": "lstm", "pooling": "last"},
    {"name": "lstm", "pooling": "mean", "bidirectional": True},
    {"name": "lstm", "pooling": "last", "bidirectional": True, "layers": 2},
    {"name": "lstm", "pooling": "max", "layers": 2, "head": [5]},
    {"name": "gru", "pooling": "last", "bidirectional": True},
    {"name": "gru", "pooling": "mean", "layers": 2},
    {"name": "gru", "pooling": "max", "bidirectional": True, "layers": 2},
    {"name": "transformer", "pooling": "cls", "positional": "learned"},
    {"name": "transformer", "pooling": "mean", "positional": "sinusoidal", "head": [5]},
    {"name": "transformer", "pooling": "cls", "positional": "sinusoidal", "layers": 1},
]
IDS = ["-".join(str(v) for k, v in m.items() if k != "head") for m in VARIANTS]


def model_config(**keys):
    sections = tiny_config()
    sections["model"] = {**SMALL[keys["name"]], **keys}  # replaced, not merged with the tiny MLP's keys
    return load_config(sections).model


def build(keys: dict, spec: InputSpec, n_outputs: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(model_config(**{**keys, "dropout": 0.0}), spec, n_outputs).eval()


def padded_batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, STEPS) right-padded with *random* ids (the mask, not the pad id, marks padding) and the mask."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, VOCAB, (len(lengths), STEPS), generator=gen)
    mask = (torch.arange(STEPS).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()
    return tokens, mask


# ------------------------------------------------------------------------------------------------ building
@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("keys", VARIANTS, ids=IDS)
def test_every_sequence_model_builds_for_tokens_tokens_and_numeric_and_series(keys, spec_name):
    spec = SPECS[spec_name]
    model = build(keys, spec, n_outputs=4)
    batch = {k: torch.from_numpy(v) for k, v in spec.example(5, seed=1).items()}
    out = model(*spec.arrange(batch))
    assert out.shape == (5, 4) and torch.isfinite(out).all()  # (B, n_outputs)
    if spec_name == "tokens+numeric":  # the numeric columns reach the head
        changed = model(*spec.arrange({**batch, "numeric": batch["numeric"] + 1.0}))
        assert not torch.allclose(changed, out)


def test_a_regressor_has_one_output_and_the_defaults_build():
    for name in ("lstm", "gru", "transformer"):
        sections = tiny_config()
        sections["model"] = {"name": name}  # the defaults: small enough for a 2-core CPU
        model = build_model(load_config(sections).model, TOKENS, 1)
        tokens, mask = padded_batch([3, 9])
        assert model.eval()(tokens, mask).shape == (2, 1)
        assert sum(p.numel() for p in model.parameters()) < 200_000


# ------------------------------------------------------------------------------------------------- masking
@pytest.mark.parametrize("keys", VARIANTS, ids=IDS)
def test_padding_does_not_change_a_rows_output(keys):
    """A row padded to STEPS (with random ids under mask 0) gives what the row alone, unpadded, gives."""
    model = build(keys, TOKENS)
    lengths = [9, 4, 1, 6, 2]
    tokens, mask = padded_batch(lengths)
    with torch.no_grad():
        together = model(tokens, mask)
        for i, n in enumerate(lengths):
            alone = model(tokens[i:i + 1, :n], mask[i:i + 1, :n])
            torch.testing.assert_close(together[i:i + 1], alone, rtol=0, atol=1e-5)
        other_pads = tokens.masked_fill(mask == 0, 0)  # the pad id 0 of a fitted vocabulary instead
        torch.testing.assert_close(model(other_pads, mask), together, rtol=0, atol=1e-6)
        assert not torch.allclose(model(tokens, torch.ones_like(mask)), together, atol=1e-3)  # the mask matters


@pytest.mark.parametrize("name", ["lstm", "gru", "transformer"])
def test_an_empty_row_gives_a_finite_output(name):
    model = build({"name": name, "pooling": "mean"}, TOKENS)
    tokens, mask = padded_batch([0, 5])
    assert torch.isfinite(model(tokens, mask)).all()


# ------------------------------------------------------------------------------------ packed == exportable
RNN_VARIANTS = [(k, i) for k, i in zip(VARIANTS, IDS) if k["name"] != "transformer"]


@pytest.mark.parametrize("keys", [k for k, _ in RNN_VARIANTS], ids=[i for _, i in RNN_VARIANTS])
def test_the_packed_training_path_computes_what_the_exportable_path_computes(keys):
    model = build(keys, TOKENS)
    encoder = model.encoder
    tokens, mask = padded_batch([9, 4, 1, 6, 2], seed=3)
    lengths = mask.sum(1)
    x = encoder.embedding(tokens)
    packed, padded = encoder._packed(x, lengths), encoder._padded(x, lengths)  # (B, T, D*H) each
    real = mask.bool()
    torch.testing.assert_close(packed[real], padded[real], rtol=0, atol=1e-5)  # every real step, both directions
    assert packed[~real].abs().max() == 0  # packed outputs are zero on padding: it is never computed

    eval_out = model(tokens, mask)
    model.train()  # dropout 0: the training forward differs only in running packed sequences
    train_out = model(tokens, mask)
    torch.testing.assert_close(train_out, eval_out, rtol=0, atol=1e-5)
    train_out.sum().backward()
    assert all(p.grad is not None for p in encoder.rnn.parameters())


def test_a_series_runs_every_step_and_is_packed_in_training_too():
    model = build({"name": "lstm", "bidirectional": True, "layers": 2}, SERIES)
    series = torch.randn(4, STEPS, 2)
    out = model(series)
    torch.testing.assert_close(model.train()(series), out, rtol=0, atol=1e-5)
    assert not torch.allclose(model.eval()(series[:, :5]), out, atol=1e-3)  # no mask: the whole window is read


# ----------------------------------------------------------------------------------------------- the config
def test_bad_settings_are_config_errors_that_say_the_fix():
    with pytest.raises(ConfigError, match=r"d_model \(30\) must be a multiple of heads \(4\).*d_model: 32"):
        model_config(name="transformer", d_model=30, heads=4)
    with pytest.raises(ConfigError, match=r"model\.hidden"):
        model_config(name="lstm", hidden=0)
    with pytest.raises(ConfigError, match=r"model\.pooling"):
        model_config(name="gru", pooling="cls")
    with pytest.raises(ConfigError, match=r"(?s)max_length is 8.*9 steps plus the CLS token.*max_length: 10"):
        build_model(model_config(name="transformer", max_length=8), TOKENS, 2)
    build_model(model_config(name="transformer", max_length=8, positional="sinusoidal"), TOKENS, 2)  # no limit
    for name in ("lstm", "transformer"):
        with pytest.raises(ConfigError, match=rf"model {name} needs token ids \(a text column\) or a time series"):
            build_model(model_config(name=name), InputSpec.single("numeric", (4,)), 2)
        with pytest.raises(ConfigError, match="needs the vocabulary size"):
            build_model(model_config(name=name), InputSpec.single("tokens", (STEPS,), "int64"), 2)
        with pytest.raises(ConfigError, match=r"cannot combine .* \['codes'\]"):
            build_model(model_config(name=name), TOKENS.with_field(InputField("codes", "int64", (3,))), 2)
        with_image = build_model(model_config(name=name), TOKENS.with_field(InputField("image", "float32", (1, 4, 4))), 2)
        assert any(isinstance(m, torch.nn.Conv2d) for m in with_image.modules())  # an image gets its own encoder


# -------------------------------------------------------------------------------------------------- ONNX
def _export(model: torch.nn.Module, spec: InputSpec, path) -> None:
    from modelfoundry.export import _export_model

    _export_model(model, spec, path, "logits", None)  # what `foundry export` does: dynamic batch and steps


@pytest.mark.slow  # ~3-8 s per ONNX export on 2 cores
@pytest.mark.parametrize("keys", [VARIANTS[2], VARIANTS[6], VARIANTS[7], VARIANTS[8]], ids=lambda k: k["name"])
def test_onnx_export_keeps_parity_on_padded_rows_and_with_a_dynamic_length(keys, tmp_path):
    from modelfoundry.models.onnx_graph import ort_session

    model = build(keys, TOKENS_NUMERIC, n_outputs=3)
    rng = np.random.default_rng(0)

    def feed(lengths, steps):
        tokens, mask = padded_batch(lengths)
        return {"tokens": tokens[:, :steps].numpy(), "attention_mask": mask[:, :steps].numpy(),
                "numeric": rng.standard_normal((len(lengths), 3)).astype(np.float32)}

    path = tmp_path / "model.onnx"
    _export(model, TOKENS_NUMERIC, path)
    session = ort_session(path)
    assert [i.name for i in session.get_inputs()] == TOKENS_NUMERIC.names
    assert isinstance(session.get_inputs()[1].shape[1], str)  # the steps of tokens are dynamic
    for inputs in [feed([9, 4, 1, 6, 2], STEPS), feed([3, 5, 1], 5), feed([7], 7)]:
        got = session.run(None, inputs)[0]
        expected = model(*(torch.from_numpy(a) for a in TOKENS_NUMERIC.arrange(inputs))).detach().numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------ learning
def _has_token_7_task(rows: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Class 1 iff token 7 occurs among a row's real tokens (variable lengths; padding holds random ids)."""
    lengths = rng.integers(2, STEPS + 1, size=rows)
    mask = (np.arange(STEPS)[None, :] < lengths[:, None]).astype(np.int64)
    tokens = rng.integers(8, VOCAB, size=(rows, STEPS))
    positive = rng.random(rows) < 0.5
    where = (rng.random(rows) * lengths).astype(int)
    tokens[np.flatnonzero(positive), where[positive]] = 7
    tokens[mask == 0] = np.where(rng.random((rows, STEPS)) < 0.5, 7, 0)[mask == 0]  # 7s in the padding mislead
    return {"tokens": tokens, "attention_mask": mask}, positive.astype(np.int64)


@pytest.mark.parametrize("name", ["gru", "transformer"])
def test_a_small_token_task_is_learnt_in_a_few_seconds(name):
    from modelfoundry.config import TrainingConfig
    from modelfoundry.train.loop import fit

    rng = np.random.default_rng(0)
    X, y = {}, {}
    for split, rows in (("train", 512), ("val", 200)):
        X[split], y[split] = _has_token_7_task(rows, rng)
        X[split] = TOKENS.check(X[split], f"the {split} split")
    keys = {"gru": {"name": "gru", "pooling": "max", "hidden": 16},
            "transformer": {"name": "transformer", "pooling": "mean", "layers": 1}}[name]
    model = build_model(model_config(**keys, dropout=0.0), TOKENS, 2)
    cfg = TrainingConfig(epochs=8, batch_size=32, optimizer={"lr": 0.01}, early_stopping=None)
    result = fit(model, X, y, cfg, task="classification", seed=0, progress=False)
    assert result.history[-1]["val_accuracy"] > 0.9, result.history[-1]


@pytest.mark.parametrize("keys", VARIANTS, ids=lambda k: f"{k['name']}-{k.get('pooling', '')}")
def test_batches_cut_to_their_longest_text_give_the_same_outputs(keys):
    from modelfoundry.models.inference import predict_outputs

    model = build(keys, TOKENS_NUMERIC, n_outputs=3).eval()
    assert model.padding_invariant  # so the loop and inference cut padding past the longest text of a batch
    tokens, mask = padded_batch([3, 5, 2, 4])  # the longest is 5 of STEPS
    values = {"numeric": np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32),
              "tokens": tokens.numpy(), "attention_mask": mask.numpy()}
    inputs = {name: values[name] for name in TOKENS_NUMERIC.names}  # in the spec's order, as preprocessing gives
    with torch.no_grad():
        full = torch.softmax(model(*(torch.from_numpy(a) for a in TOKENS_NUMERIC.arrange(inputs))), dim=1).numpy()
    np.testing.assert_allclose(predict_outputs(model, inputs, "classification"), full, rtol=0, atol=1e-5)


@pytest.mark.slow  # four ONNX exports: ~15 s
def test_an_lstm_exported_again_in_the_same_process_keeps_a_dynamic_length(tmp_path):
    """torch 2.13 unrolls an LSTM exported a second time in a process over the example's steps; the export must
    notice the fixed axis and fall back to the exporter that keeps it free, windows of long texts included."""
    from modelfoundry.export import _export_model
    from modelfoundry.models.onnx_graph import ort_session

    windowed = InputSpec([InputField("tokens", "int64", (3, STEPS), VOCAB, pool="max"),
                          InputField("attention_mask", "int64", (3, STEPS))])
    for i, spec in enumerate([TOKENS, TOKENS, windowed, windowed]):
        model = build(VARIANTS[1], spec, n_outputs=2)
        path = tmp_path / f"m{i}.onnx"
        _export_model(model, spec, path, "logits", None)
        session = ort_session(path)
        shape = session.get_inputs()[0].shape
        assert all(isinstance(d, str) for d in [shape[0], *shape[1:]]), (i, shape)  # batch, (windows,) steps free
        tokens, mask = padded_batch([4, 2], seed=i)
        if len(spec["tokens"].shape) == 2:  # two rows of up to 2 windows of 5 steps
            tokens, mask = tokens[:, :5].reshape(2, 1, 5).repeat(1, 2, 1), mask[:, :5].reshape(2, 1, 5).repeat(1, 2, 1)
            mask[1, 1] = 0
        else:
            tokens, mask = tokens[:, :5], mask[:, :5]
        got = session.run(None, {"tokens": tokens.numpy(), "attention_mask": mask.numpy()})[0]
        np.testing.assert_allclose(got, model(tokens, mask).detach().numpy(), rtol=0, atol=1e-5)


def test_predictions_of_rows_taken_in_order_of_length_come_back_in_the_rows_order(monkeypatch):
    import modelfoundry.models.inference as inference

    model = build(VARIANTS[1], TOKENS, n_outputs=3)
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, STEPS + 1, 50).tolist()
    tokens, mask = padded_batch(lengths)
    one_by_one = np.vstack([inference.predict_outputs(model, {"tokens": tokens[i:i + 1].numpy(),
                                                              "attention_mask": mask[i:i + 1].numpy()},
                                                      "classification") for i in range(50)])
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *x: calls.append(x[0].shape) or forward(*x))
    monkeypatch.setattr(inference, "TOKENS", 8 * STEPS)  # 8 rows a batch
    batched = inference.predict_outputs(model, {"tokens": tokens.numpy(), "attention_mask": mask.numpy()},
                                        "classification")
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-6)
    assert len(calls) == 7 and all(shape[0] <= 8 for shape in calls)
    assert calls[0][1] < STEPS  # the shortest rows came together and were cut to their longest
