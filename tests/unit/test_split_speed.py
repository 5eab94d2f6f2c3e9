"""The fast stratified split (labels as sorted codes) gives exactly the split of the labels themselves, so runs
made before it rebuild the same rows."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sklearn.model_selection import train_test_split

from modelfoundry.data.split import split_indices


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(["neg", "pos", "neutral", "Zed", "10", "9"]), min_size=60, max_size=400),
       st.integers(0, 2**31 - 1))
def test_stratified_split_equals_the_split_of_the_label_texts(labels, seed):
    labels = np.asarray(labels, dtype=object)
    _, counts = np.unique(labels, return_counts=True)
    assume(counts.min() >= 7)  # rarer classes cannot be stratified: an error either way, tested elsewhere
    got = split_indices(labels, 0.15, 0.2, True, seed)
    rest, test = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=seed, stratify=labels)
    train, val = train_test_split(rest, test_size=0.15 / 0.8, random_state=seed, stratify=labels[rest])
    for name, expected in (("train", train), ("val", val), ("test", test)):
        np.testing.assert_array_equal(got[name], np.sort(expected))
