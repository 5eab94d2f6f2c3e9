"""Scores of generated text against reference completions: exact match, token F1, ROUGE-L and, when the
completions are labels, label accuracy. Pure Python (no torch, no scoring packages): each is a few lines.

Every metric compares *normalised tokens* (SQuAD's normalisation, made Unicode-aware): the text is NFKC-folded
and lower-cased, punctuation (any Unicode P* character) becomes a space, the English articles a/an/the are
dropped, and the rest is split on whitespace. Two texts that differ only in case, punctuation, articles or
spacing therefore score 1.
"""

from __future__ import annotations

import unicodedata
from collections import Counter

ARTICLES = frozenset({"a", "an", "the"})
MAX_LABELS = 20  # completions with more distinct values than this are free text, not labels
MAX_LABEL_WORDS = 5


def normalize_tokens(text: str) -> list[str]:
    """`text` as normalised tokens: lower case, no punctuation, no articles, split on whitespace."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    spaced = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in folded)
    return [t for t in spaced.split() if t not in ARTICLES]


def exact_match(pred: str, ref: str) -> float:
    """1.0 when `pred` and `ref` have the same normalised tokens, else 0.0."""
    return float(normalize_tokens(pred) == normalize_tokens(ref))


def token_f1(pred: str, ref: str) -> float:
    """SQuAD's F1 of the bags of normalised tokens (shared tokens counted with multiplicity).

    Two texts with no tokens at all (empty, or only punctuation/articles) agree: 1.0; one empty: 0.0.
    """
    p, r = normalize_tokens(pred), normalize_tokens(ref)
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F1: the longest common subsequence of the normalised tokens over their lengths (harmonic mean
    of LCS/len(pred) and LCS/len(ref)). Both empty: 1.0; one empty: 0.0."""
    p, r = normalize_tokens(pred), normalize_tokens(ref)
    if not p or not r:
        return float(p == r)
    lcs = _lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def _lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of `a` and `b` (dynamic programming, one row kept)."""
    if len(b) > len(a):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, 1):
            prev_diag, row[j] = row[j], prev_diag + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def is_label_set(references: list[str], max_labels: int = MAX_LABELS,
                 max_words: int = MAX_LABEL_WORDS) -> list[str] | None:
    """The labels, when the completions are labels; None when they are free text.

    Completions are labels when they take 2 to `max_labels` distinct values (compared normalised), each at
    most `max_words` words and not empty, and at least one value repeats (as many distinct values as rows is
    short free text, such as names). The labels come back as first written, in order of first appearance.
    """
    seen: dict[tuple[str, ...], str] = {}
    for ref in references:
        tokens = tuple(normalize_tokens(ref))
        if not tokens or len(tokens) > max_words:
            return None
        seen.setdefault(tokens, ref.strip())
        if len(seen) > max_labels:
            return None
    if not 2 <= len(seen) < len(references):
        return None
    return list(seen.values())


def predicted_label(pred: str, labels: list[str]) -> str | None:
    """The label a generated text gives, or None when it names none.

    Compared normalised (`normalize_tokens`, joined by single spaces): the label the text equals; else the
    longest label the text starts with, as characters ("Positive. The review praises..." and a model that runs
    on, "negativegat", give their label); else the label named earliest in the text as whole words ("The
    sentiment is neutral, not strongly negative" gives neutral; the longest one where two start at the same
    word). Base models answer in sentences, so the first label named is taken as their answer.
    """
    tokens = normalize_tokens(pred)
    text = " ".join(tokens)
    by_text = {" ".join(normalize_tokens(label)): label for label in labels}
    by_text.pop("", None)
    if text in by_text:
        return by_text[text]
    prefixes = [t for t in by_text if text.startswith(t)]
    if prefixes:
        return by_text[max(prefixes, key=len)]
    for start in range(len(tokens)):
        found = [t for t in by_text if tokens[start:start + t.count(" ") + 1] == t.split(" ")]
        if found:
            return by_text[max(found, key=len)]
    return None


def label_accuracy(preds: list[str], refs: list[str], labels: list[str]) -> float:
    """Share of rows whose generated text gives the reference's label (see `predicted_label`); a text that
    names no label counts as wrong. 0.0 for no rows."""
    if not refs:
        return 0.0
    hits = 0
    for pred, ref in zip(preds, refs, strict=True):
        label = predicted_label(pred, labels)
        hits += label is not None and normalize_tokens(label) == normalize_tokens(ref)
    return hits / len(refs)


def score_generations(preds: list[str], refs: list[str]) -> dict[str, float]:
    """Mean exact_match, token_f1 and rouge_l of `preds` against `refs` and, when the references are labels
    (`is_label_set`), label_accuracy. Empty when there are no rows."""
    if not refs:
        return {}
    n = len(refs)
    pairs = list(zip(preds, refs, strict=True))
    scores = {name: sum(metric(p, r) for p, r in pairs) / n
              for name, metric in (("exact_match", exact_match), ("token_f1", token_f1), ("rouge_l", rouge_l))}
    labels = is_label_set(refs)
    if labels is not None:
        scores["label_accuracy"] = label_accuracy(preds, refs, labels)
    return scores
