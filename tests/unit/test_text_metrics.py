"""Generation metrics (evaluate/text_metrics.py): pinned values and properties."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfoundry.evaluate.text_metrics import (
    exact_match,
    is_label_set,
    label_accuracy,
    normalize_tokens,
    predicted_label,
    rouge_l,
    score_generations,
    token_f1,
)

TEXT = st.text(max_size=40)
WORDY = st.lists(st.sampled_from(["cat", "dog", "The", "a", "sat", "on", "mat", "Ünïcode", "東京", "!", ","]),
                 max_size=12).map(" ".join)
METRICS = (exact_match, token_f1, rouge_l)


def test_normalisation_drops_case_punctuation_and_articles():
    assert normalize_tokens("  The Cat, sat on A mat!! ") == ["cat", "sat", "on", "mat"]
    assert normalize_tokens("«Ça va?» — Oui.") == ["ça", "va", "oui"]
    assert exact_match("Paris.", "paris") == 1.0
    assert exact_match("Paris is", "Paris") == 0.0


def test_token_f1_pinned():
    # pred 4 tokens, ref 3 tokens, 2 shared: P = 1/2, R = 2/3, F1 = 4/7
    assert token_f1("the cat sat on here", "a cat on mat") == pytest.approx(4 / 7)
    assert token_f1("dog dog", "dog") == pytest.approx(2 * (1 / 2) * 1 / (1 / 2 + 1))  # multiplicity counts
    assert token_f1("red", "blue") == 0.0


def test_rouge_l_pinned_and_order_sensitive():
    # LCS of "cat sat on mat" and "cat on sat mat" is 3 (cat on mat / cat sat mat): F = 3/4
    assert rouge_l("cat sat on mat", "cat on sat mat") == pytest.approx(0.75)
    assert token_f1("cat sat on mat", "cat on sat mat") == 1.0  # the bag ignores order, ROUGE-L does not
    assert rouge_l("w x y z", "z y x w") == pytest.approx(0.25)


def test_empty_texts():
    for metric in METRICS:
        assert metric("", "") == 1.0
        assert metric("", "something") == 0.0
        assert metric("something", "") == 0.0
        assert metric("!!", "the") == 1.0  # nothing left after normalising on either side


@settings(max_examples=150, deadline=None)
@given(TEXT, TEXT)
def test_metrics_in_unit_interval_and_symmetric(a, b):
    for metric in METRICS:
        value = metric(a, b)
        assert 0.0 <= value <= 1.0
        assert value == pytest.approx(metric(b, a))


@settings(max_examples=150, deadline=None)
@given(st.one_of(TEXT, WORDY))
def test_identical_strings_score_one(text):
    for metric in METRICS:
        assert metric(text, text) == 1.0


@settings(max_examples=100, deadline=None)
@given(WORDY, WORDY)
def test_rouge_bounded_by_token_f1(a, b):
    # the LCS is a common sub-bag, so ROUGE-L never exceeds the bag F1
    assert rouge_l(a, b) <= token_f1(a, b) + 1e-12


def test_label_set_detection():
    assert is_label_set(["positive", "Negative", "positive.", "negative"]) == ["positive", "Negative"]
    assert is_label_set(["Paris", "Berlin", "Rome"]) is None  # no value repeats: short free text
    assert is_label_set(["yes", "yes", "yes"]) is None  # one value: nothing to tell apart
    assert is_label_set(["one two three four five six", "x", "x"]) is None  # too long to be a label
    assert is_label_set([str(i % 21) for i in range(100)]) is None  # 21 distinct values
    assert is_label_set([str(i % 20) for i in range(100)]) is not None
    assert is_label_set(["", "a", "b", "a"]) is None  # an empty completion


def test_predicted_label_rules():
    labels = ["positive", "negative", "very positive"]
    assert predicted_label("Positive!", labels) == "positive"
    assert predicted_label("Very positive, clearly", labels) == "very positive"  # the longest prefix wins
    assert predicted_label("negativegat", labels) == "negative"  # a model that runs on past its label
    assert predicted_label("The sentiment is negative.", labels) == "negative"  # the label named in a sentence
    assert predicted_label("positive or negative", labels) == "positive"  # starts with one
    assert predicted_label("It is negative, not positive", labels) == "negative"  # the first one named
    assert predicted_label("It is very positive, not negative", labels) == "very positive"  # longest at a word
    assert predicted_label("I cannot tell", labels) is None
    assert predicted_label("", labels) is None


def test_label_accuracy_and_score_generations():
    refs = ["positive", "negative", "positive", "negative"]
    preds = ["Positive.", "negative, because", "The answer: negative", "I cannot tell"]
    labels = is_label_set(refs)
    assert label_accuracy(preds, refs, labels) == pytest.approx(0.5)
    scores = score_generations(preds, refs)
    assert set(scores) == {"exact_match", "token_f1", "rouge_l", "label_accuracy"}
    assert scores["label_accuracy"] == pytest.approx(0.5)
    assert scores["exact_match"] == pytest.approx(0.25)
    free = score_generations(["Paris", "the Berlin"], ["Paris", "Berlin"])
    assert free == {"exact_match": 1.0, "token_f1": 1.0, "rouge_l": 1.0}
    assert score_generations([], []) == {}
    with pytest.raises(ValueError):
        score_generations(["a"], ["a", "b"])
