"""Long texts as overlapping windows (data.text.stride): the windows themselves, the pooled model over them,
and the same document score at training, evaluation, predict, serving and export."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfoundry.artifacts.inputs import InputField, InputSpec, padding_trim
from modelfoundry.config import load_config
from modelfoundry.data.text import TextEncoder
from modelfoundry.errors import ConfigError
from tests.conftest import tiny_config


def words_of(encoder: TextEncoder, ids) -> list[str]:
    vocab = {i: w for w, i in encoder.tokenizer_.get_vocab().items()}
    return [vocab[int(i)] for i in ids]


def test_a_long_text_becomes_overlapping_windows_and_a_short_one_a_single_window():
    frame = pd.DataFrame({"t": ["a b c d e f g h i j", "a b", ""]})
    encoder = TextEncoder(["t"], max_length=4, min_freq=1, stride=1, max_windows=5).fit(frame)
    assert (encoder.windows_, encoder.length_) == (3, 4)
    out = encoder.transform(frame)
    tokens, mask = out["tokens"], out["attention_mask"]
    assert tokens.shape == mask.shape == (3, 3, 4) and tokens.dtype == np.int64
    assert [words_of(encoder, w) for w in tokens[0]] == [list("abcd"), list("defg"), list("ghij")]  # 1 shared
    assert mask[1].tolist() == [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]] and mask[2].sum() == 0
    fields = encoder.input_fields()
    assert fields[0] == InputField("tokens", "int64", (3, 4), encoder.vocab_size_, pool="mean")
    again = TextEncoder.from_description(json.loads(json.dumps(encoder.describe())))  # as preprocess.json holds it
    np.testing.assert_array_equal(again.transform(frame)["tokens"], tokens)
    assert again.input_fields() == fields


def test_max_windows_keeps_the_first_windows_or_with_left_truncation_the_last():
    frame = pd.DataFrame({"t": [" ".join(f"w{i}" for i in range(20))]})
    right = TextEncoder(["t"], max_length=5, min_freq=1, stride=0, max_windows=2).fit(frame)
    left = TextEncoder(["t"], max_length=5, min_freq=1, stride=0, max_windows=2, truncation="left").fit(frame)
    assert [words_of(right, w) for w in right.transform(frame)["tokens"][0]] == [
        [f"w{i}" for i in range(5)], [f"w{i}" for i in range(5, 10)]]
    assert [words_of(left, w) for w in left.transform(frame)["tokens"][0]] == [
        [f"w{i}" for i in range(15, 20)], [f"w{i}" for i in range(10, 15)]]


@settings(max_examples=40, deadline=None)
@given(n_words=st.integers(0, 60), length=st.integers(3, 12), stride=st.integers(0, 6))
def test_windows_cover_the_text_in_order_with_the_stride_shared(n_words, length, stride):
    stride = min(stride, length // 2)
    text = " ".join(f"w{i}" for i in range(n_words))
    train = pd.DataFrame({"t": [" ".join(f"w{i}" for i in range(60))]})
    encoder = TextEncoder(["t"], max_length=length, min_freq=1, stride=stride, max_windows=64).fit(train)
    out = encoder.encode([text])
    windows = [words_of(encoder, w[m == 1]) for w, m in zip(out["tokens"][0], out["attention_mask"][0])]
    used = [w for w in windows if w]
    assert all(not w for w in windows[len(used):])  # used windows first, then only padding
    rebuilt = used[0] if used else []
    for previous, window in zip(used, used[1:]):
        assert window[:stride] == previous[-stride:] if stride else True
        assert len(previous) == length  # only the last window is short
        rebuilt += window[stride:]
    assert rebuilt == text.split()


def test_a_stride_over_half_the_length_is_a_config_error():
    with pytest.raises(ConfigError, match="stride"):
        load_config(tiny_config(data={"source": "r.csv", "text": {"max_length": 16, "stride": 9}}))


def test_padding_trim_cuts_unused_windows_and_padding_steps():
    spec = InputSpec([InputField("tokens", "int64", (4, 6), 50, pool="mean"), InputField("attention_mask", "int64", (4, 6))])
    mask = np.zeros((3, 4, 6), dtype=np.int64)
    mask[0, 0, :6] = mask[0, 1, :2] = 1  # two windows used, the longest 6 tokens
    mask[1, 0, :3] = 1
    trim = padding_trim(spec.names)
    tokens, cut = trim((np.ones_like(mask), mask))
    assert tokens.shape == cut.shape == (3, 2, 6)
    mask[0, 0, 4:] = 0
    assert trim((np.ones_like(mask), mask))[1].shape == (3, 2, 4)


def pooled_model(pool: str, windows: int = 3, steps: int = 5):
    from modelfoundry.models import build_model

    spec = InputSpec([InputField("numeric", "float32", (2,)),
                      InputField("tokens", "int64", (windows, steps), 30, pool=pool),
                      InputField("attention_mask", "int64", (windows, steps))])
    config = tiny_config()
    config["model"] = {"name": "lstm", "hidden": 8, "embedding_dim": 8}
    model = load_config(config).model
    torch.manual_seed(0)
    return build_model(model, spec, 3).eval(), spec


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_the_model_pools_the_outputs_of_the_windows_a_document_uses(pool):
    model, spec = pooled_model(pool)
    assert type(model).__name__ == "WindowPooled" and model.padding_invariant
    rng = np.random.default_rng(0)
    numeric = rng.standard_normal((4, 2)).astype(np.float32)
    tokens = rng.integers(3, 30, (4, 3, 5))
    mask = np.zeros((4, 3, 5), dtype=np.int64)
    used = [3, 1, 2, 1]
    for i, n in enumerate(used):
        mask[i, :n, :] = 1
    mask[3, 0] = 0  # an empty text: one empty window
    tokens[mask == 0] = 0
    with torch.inference_mode():
        got = model(torch.from_numpy(numeric), torch.from_numpy(tokens), torch.from_numpy(mask)).numpy()
        for i, n in enumerate(used):
            per = model.inner(torch.from_numpy(numeric[[i] * n]), torch.from_numpy(tokens[i, :n]),
                              torch.from_numpy(mask[i, :n])).numpy()
            expected = per.mean(0) if pool == "mean" else per.max(0)
            np.testing.assert_allclose(got[i], expected, rtol=1e-5, atol=1e-6)
        changed = mask == 0
        changed[3, 0] = False  # (an empty text is its padding: left as the encoder writes it)
        tokens[changed] = 7  # what unused windows and padding hold changes nothing
        again = model(torch.from_numpy(numeric), torch.from_numpy(tokens), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(again, got, rtol=1e-5, atol=1e-6)


def long_reviews(n: int = 200, seed: int = 0) -> pd.DataFrame:
    """Long texts whose label word comes only at the end, far past the first window."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    filler = ["the", "a", "it", "was", "and", "we", "then", "so", "there", "here"]
    texts = [" ".join(rng.choice(filler, 40)) + (" great lovely" if y else " awful terrible") for y in label]
    return pd.DataFrame({"review": texts, "target": np.where(label, "pos", "neg")})


def run_long(tmp_path, name: str, text: dict, model: dict | None = None):
    from modelfoundry.api import run

    path = tmp_path / "long.csv"
    if not path.exists():
        long_reviews().to_csv(path, index=False)
    config = tiny_config(name=name, data={"source": str(path), "text": {"max_length": 12, "min_freq": 1, **text}},
                         training={"epochs": 12, "batch_size": 16, "optimizer": {"name": "adam", "lr": 0.01}})
    config["model"] = model or {"name": "lstm", "hidden": 16, "embedding_dim": 16}
    return run(config, run_dir=tmp_path / name, progress=False)


@pytest.mark.slow  # two small LSTM runs: ~10 s
def test_windows_let_a_model_read_the_end_of_long_texts_everywhere_alike(tmp_path):
    from modelfoundry.api import evaluate, predict
    from modelfoundry.data.input_schema import InputSchema
    from modelfoundry.export import export_onnx, load_onnx_predictor
    from modelfoundry.models.inference import predict_outputs
    from modelfoundry.rundir import load_model

    cut = run_long(tmp_path, "cut", {})
    windowed = run_long(tmp_path, "windowed", {"stride": 2, "max_windows": 6})
    # the label is only in the last words: cut to 12 tokens the model guesses, with windows it reads them
    assert cut.metrics["accuracy"] < 0.75 and windowed.metrics["accuracy"] >= 0.95
    coverage = {name: json.loads((tmp_path / name / "data.json").read_text())["text"] for name in ("cut", "windowed")}
    assert coverage["cut"] == {"length": 12, "windows": None, "at_limit": 1.0}  # every text was cut
    assert coverage["windowed"]["windows"] == 4  # 42 words in windows of 12 sharing 2: 4 windows hold them all
    saved = load_model(tmp_path / "windowed")
    assert saved.record.input_spec["tokens"].shape == (4, 12) and saved.record.input_spec["tokens"].pool == "mean"
    rows = long_reviews(40, seed=1)
    rows.to_csv(tmp_path / "new.csv", index=False)
    table = predict(tmp_path / "windowed", tmp_path / "new.csv")
    assert (table["prediction"] == rows["target"]).mean() >= 0.95
    schema = InputSchema(saved.preprocessor.desc)
    served = predict_outputs(saved.model, schema.from_records(rows.drop(columns="target").to_dict("records")).inputs,
                             saved.task)
    np.testing.assert_allclose(served, table[[c for c in table.columns if c.startswith("prob_")]].to_numpy(),
                               rtol=1e-5, atol=1e-6)
    assert evaluate(tmp_path / "windowed", data=tmp_path / "new.csv").metrics["accuracy"] >= 0.95
    exported = export_onnx(tmp_path / "windowed")
    assert exported.max_abs_diff <= 1e-4
    onnx = load_onnx_predictor(exported.out_dir).predict_frame(rows.drop(columns="target").head(5))
    np.testing.assert_allclose(onnx, served[:5], atol=1e-4)


@pytest.mark.slow  # a tiny BERT with LoRA over windows: ~6 s
def test_a_pretrained_lora_model_reads_windows_saves_its_adapters_and_merges(tmp_path):
    from modelfoundry.rundir import load_model
    from tests.unit.test_pretrained_models import tiny_bert  # noqa: F401 - the fixture, built here by hand

    bert = tiny_bert.__wrapped__(tmp_path_factory=_Factory(tmp_path))
    run_long(tmp_path, "bert", {"stride": 2, "max_windows": 4},
             model={"name": "pretrained", "path": str(bert), "finetune": "lora", "lora": {"r": 4}})
    saved = load_model(tmp_path / "bert")
    model, spec = saved.model, saved.record.input_spec
    assert type(model).__name__ == "WindowPooled" and spec["tokens"].shape[0] == 4
    record = json.loads((tmp_path / "bert" / "model" / "model.json").read_text())
    assert len(record["base"]["sha256"]) == 64  # the base weights by reference, not copied
    weights = sum(f.stat().st_size for f in (tmp_path / "bert" / "model").glob("*") if f.suffix != ".json")
    assert weights < sum(f.stat().st_size for f in bert.glob("*.safetensors")) / 3  # adapters and head only
    trainable, total = model.parameter_counts()
    assert 0 < trainable < total / 5  # LoRA and the head only
    batch = {"tokens": np.random.default_rng(0).integers(5, 100, (3, *spec["tokens"].shape)),
             "attention_mask": np.ones((3, *spec["tokens"].shape), dtype=np.int64)}
    batch["attention_mask"][1, 2:] = 0
    inputs = [torch.from_numpy(batch[n]) for n in spec.names]
    with torch.inference_mode():
        merged = model.merged()
        assert type(merged).__name__ == "WindowPooled"
        assert float((model(*inputs) - merged(*inputs)).abs().max()) <= 1e-5


class _Factory:
    def __init__(self, root):
        self.root = root

    def mktemp(self, name):
        path = self.root / name
        path.mkdir()
        return path


def test_windowed_tokens_come_back_from_the_cache_as_they_were_made(tmp_path, monkeypatch):
    from modelfoundry.data.prepare import prepare_data

    monkeypatch.setenv("FOUNDRY_CACHE_DIR", str(tmp_path / "cache"))
    long_reviews(80).to_csv(tmp_path / "long.csv", index=False)
    cfg = load_config(tiny_config(data={"source": str(tmp_path / "long.csv"),
                                        "text": {"max_length": 12, "min_freq": 1, "stride": 2, "max_windows": 6}}))
    made, again = prepare_data(cfg.data, cfg.seed), prepare_data(cfg.data, cfg.seed)
    assert not made.info["text_cache"]["hit"] and again.info["text_cache"]["hit"]
    for split in ("train", "val", "test"):
        assert again.X[split]["tokens"].shape == made.X[split]["tokens"].shape == (len(made.y[split]), 4, 12)
        for name in ("tokens", "attention_mask"):
            np.testing.assert_array_equal(again.X[split][name], made.X[split][name])
