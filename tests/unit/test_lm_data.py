"""The data stage of causal language models: completion-only labels, chat messages, packing, cutting, cache."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelfoundry.config import load_config
from modelfoundry.data.lm import IGNORE, assemble, encode, prepare_lm
from modelfoundry.errors import DataError


@pytest.fixture(scope="module")
def tokenizer(tiny_llm):
    from modelfoundry.models.llm_base import load_tokenizer

    return load_tokenizer(tiny_llm)


def lm_config(source, **lm):
    return load_config({"name": "t", "data": {"source": str(source), "lm": lm},
                        "model": {"name": "llm", "base": "unused"}}).data


def labelled_text(tokenizer, tokens, labels):
    """The text of the tokens that carry loss (labels are shifted: labels[t] is token t + 1)."""
    return tokenizer.decode([int(label) for label in labels if label != IGNORE])


def sentiment_file(tmp_path, rows=60):
    path = tmp_path / "pairs.jsonl"
    pd.DataFrame([{"text": f"review {i} was {'good' if i % 2 else 'bad'}",
                   "label": "positive" if i % 2 else "negative"} for i in range(rows)]).to_json(
        path, orient="records", lines=True)
    return path


def test_only_the_completion_and_its_end_token_carry_loss(tmp_path, tokenizer):
    cfg = lm_config(sentiment_file(tmp_path), prompt="Classify: {text}", completion="label", max_length=64)
    data = prepare_lm(cfg, 0, tokenizer)
    assert data.task == "causal_lm" and data.info["split"]["stratified"]
    for split in ("train", "val", "test"):
        for tokens, mask, labels in zip(data.X[split]["tokens"], data.X[split]["attention_mask"], data.y[split]):
            text = tokenizer.decode(tokens[mask == 1])
            answer = "positive" if "good" in text else "negative"
            assert labelled_text(tokenizer, tokens, labels) == f"{answer}<|im_end|>\n"
            assert (labels[mask == 0] == IGNORE).all()
    ref = data.references["test"][0]
    assert ref["reference"] in ("positive", "negative") and ref["messages"][-1]["role"] == "user"
    assert ref["messages"][-1]["content"].startswith("Classify: review")


def test_train_on_all_labels_every_next_token(tmp_path, tokenizer):
    cfg = lm_config(sentiment_file(tmp_path), prompt="text", completion="label", train_on="all")
    data = prepare_lm(cfg, 0, tokenizer)
    tokens, mask, labels = data.X["train"]["tokens"][0], data.X["train"]["attention_mask"][0], data.y["train"][0]
    n = int(mask.sum())
    assert (labels[:n - 1] == tokens[1:n]).all() and labels[n - 1] == IGNORE


def test_multi_turn_messages_label_every_assistant_turn_and_no_user_turn(tmp_path, tokenizer):
    convo = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"},
             {"role": "user", "content": "and Paris?"}, {"role": "assistant", "content": "capital of France"}]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps({"messages": convo}) for _ in range(30)))
    data = prepare_lm(lm_config(path, messages="messages", system="be brief"), 0, tokenizer)
    text = labelled_text(tokenizer, data.X["train"]["tokens"][0], data.y["train"][0])
    assert text == "hello there<|im_end|>\ncapital of France<|im_end|>\n"
    assert data.references["val"][0]["messages"][0] == {"role": "system", "content": "be brief"}


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_messages_in_a_csv_or_parquet_file_read_the_same(tmp_path, tokenizer, suffix):
    convo = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    path = tmp_path / f"chat.{suffix}"
    if suffix == "csv":  # JSON text in a cell
        pd.DataFrame({"messages": [json.dumps(convo)] * 30}).to_csv(path, index=False)
    else:  # a list column (read back as arrays of structs)
        pd.DataFrame({"messages": [convo] * 30}).to_parquet(path)
    data = prepare_lm(lm_config(path, messages="messages"), 0, tokenizer)
    assert labelled_text(tokenizer, data.X["train"]["tokens"][0], data.y["train"][0]) == "yo<|im_end|>\n"


@pytest.mark.parametrize("convo, expected", [
    ([{"role": "human", "content": "hi"}, {"role": "assistant", "content": "yo"}], "role 'human'"),
    ([{"role": "user", "content": "hi"}], "ends with a user message"),
    ([{"role": "user", "content": 3}], "string 'role' and 'content'"),
    ("not a list", "not a JSON list"),
])
def test_bad_conversations_name_the_row_and_the_problem(tmp_path, tokenizer, convo, expected):
    path = tmp_path / "chat.jsonl"
    good = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    path.write_text(json.dumps({"messages": good}) + "\n" + json.dumps({"messages": convo}) + "\n")
    with pytest.raises(DataError, match=expected) as info:
        prepare_lm(lm_config(path, messages="messages"), 0, tokenizer)
    assert "row 1" in info.value.message


def test_a_missing_column_or_placeholder_lists_the_columns(tmp_path, tokenizer):
    path = sentiment_file(tmp_path)
    with pytest.raises(DataError, match=r"data.lm.completion names column\(s\) 'answer'.*columns: text, label"):
        prepare_lm(lm_config(path, prompt="text", completion="answer"), 0, tokenizer)
    with pytest.raises(DataError, match="data.lm.prompt names column.*'body'"):
        prepare_lm(lm_config(path, prompt="Classify: {body}", completion="label"), 0, tokenizer)


def test_rows_without_an_answer_are_dropped_and_counted(tmp_path, tokenizer):
    frame = pd.DataFrame({"q": [f"question {i}" for i in range(40)], "a": ["yes", None, ""] * 13 + ["no"]})
    path = tmp_path / "qa.csv"
    frame.to_csv(path, index=False)
    data = prepare_lm(lm_config(path, prompt="q", completion="a"), 0, tokenizer)
    assert data.info["lm"]["dropped_rows"] == 26 and data.info["lm"]["examples"] == 14


def test_packing_fills_rows_and_keeps_each_examples_labels(tokenizer):
    convos = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"answer {i}"}] for i in range(9)]
    cfg = lm_config("x.jsonl", max_length=64)
    ids, masks, cut = encode(tokenizer, convos, cfg.lm, "test")
    packed = assemble(ids, masks, 64, tokenizer.pad_token_id, packing=True)
    single = assemble(ids, masks, max(map(len, ids)), tokenizer.pad_token_id, packing=False)
    assert cut == 0 and len(single["tokens"]) == 9 and len(packed["tokens"]) < 9
    assert packed["attention_mask"].sum() == single["attention_mask"].sum()  # every token kept
    texts = [labelled_text(tokenizer, t, lab) for t, lab in zip(packed["tokens"], packed["labels"])]
    assert "".join(texts) == "".join(f"answer {i}<|im_end|>\n" for i in range(9))
    # no label crosses from one example into the next: the token after an example's end is never a target
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert not (packed["labels"] == start).any()


def test_long_examples_are_cut_and_those_left_without_an_answer_dropped(tokenizer):
    convos = [[{"role": "user", "content": "word " * n}, {"role": "assistant", "content": "fine"}] for n in (2, 200)]
    cfg = lm_config("x.jsonl", max_length=32)
    ids, masks, cut = encode(tokenizer, convos, cfg.lm, "test")
    assert cut == 1 and max(len(i) for i in ids) == 32
    rows = assemble(ids, masks, 32, tokenizer.pad_token_id, packing=False)
    assert len(rows["tokens"]) == 1  # the long one lost its answer


def test_a_second_preparation_reads_the_tokenized_splits_from_the_cache(tmp_path, tokenizer):
    cfg = lm_config(sentiment_file(tmp_path), prompt="Classify: {text}", completion="label")
    first, second = prepare_lm(cfg, 0, tokenizer), prepare_lm(cfg, 0, tokenizer)
    assert not first.info["lm"]["cache_hit"] and second.info["lm"]["cache_hit"]
    for split in first.X:
        np.testing.assert_array_equal(first.X[split]["tokens"], second.X[split]["tokens"])
        np.testing.assert_array_equal(first.y[split], second.y[split])
    other = prepare_lm(cfg, 1, tokenizer)  # another split seed: other rows, another entry
    assert not other.info["lm"]["cache_hit"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=st.text(min_size=1, max_size=40), answer=st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=30))
def test_any_answer_text_is_exactly_what_carries_loss(tokenizer, prompt, answer):
    for template in ("chatml", "plain"):
        cfg = lm_config("x.jsonl", template=template, max_length=4096)
        convo = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        ids, masks, _ = encode(tokenizer, [convo], cfg.lm, "fuzz")
        text = tokenizer.decode(ids[0][masks[0]])
        end = "<|im_end|>\n" if template == "chatml" else "<|im_end|>"
        assert text == answer + end
