"""Named typed inputs (artifacts/inputs.py): the spec's JSON form, batches checked against it, and helpers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from modelfoundry.artifacts.inputs import InputField, InputSpec, concat, features_matrix, rows_of, take
from modelfoundry.errors import DataError, RunDirError

TEXT_AND_TABLE = InputSpec([InputField("numeric", "float32", (3,)), InputField("tokens", "int64", (5,), vocab_size=50),
                            InputField("attention_mask", "int64", (5,))])


def test_the_spec_round_trips_through_json_and_keeps_its_order():
    data = TEXT_AND_TABLE.to_json()
    assert data[1] == {"name": "tokens", "dtype": "int64", "shape": [5], "vocab_size": 50}
    assert data[2] == {"name": "attention_mask", "dtype": "int64", "shape": [5]}
    again = InputSpec.from_json(data)
    assert again == TEXT_AND_TABLE and hash(again) == hash(TEXT_AND_TABLE)
    assert again.names == ["numeric", "tokens", "attention_mask"] and again["tokens"].dtype == "int64"
    assert InputSpec.for_shape([1, 8, 8]).names == ["image"] and InputSpec.for_shape([30]).names == ["numeric"]
    with pytest.raises(KeyError):
        TEXT_AND_TABLE["image"]
    with pytest.raises(ValueError, match="distinct names"):
        InputSpec([InputField("a", "float32", (1,)), InputField("a", "float32", (2,))])


@pytest.mark.parametrize("bad", [None, 3, [{"name": "x"}], [{"name": "x", "dtype": "float16", "shape": [2]}],
                                 [{"name": "x", "dtype": "float32", "shape": [2, -1]}],
                                 [{"name": "x", "dtype": "float32", "shape": [True]}], [],
                                 [{"name": "x", "dtype": "float32", "shape": [2], "vocab_size": 10}],
                                 [{"name": "x", "dtype": "int64", "shape": [2], "vocab_size": 0}]])
def test_a_malformed_spec_is_one_error_naming_where_it_came_from(bad):
    with pytest.raises(RunDirError, match="'run/model.json' holds a malformed input spec"):
        InputSpec.from_json(bad, "'run/model.json'")


def test_example_batches_have_each_inputs_dtype_and_shape():
    batch = TEXT_AND_TABLE.example(4, seed=0)
    assert [(a.dtype, a.shape) for a in batch.values()] == [(np.float32, (4, 3)), (np.int64, (4, 5)),
                                                            (np.int64, (4, 5))]
    assert (batch["attention_mask"] == 1).all() and (batch["tokens"] == 0).all() and batch["numeric"].std() > 0
    assert (TEXT_AND_TABLE.example(2)["numeric"] == 0).all()
    np.testing.assert_array_equal(TEXT_AND_TABLE.example(4, seed=0)["numeric"], batch["numeric"])  # reproducible
    assert TEXT_AND_TABLE.check(batch, "the example") is not batch


def test_check_names_the_input_and_what_is_wrong():
    good = TEXT_AND_TABLE.example(3)
    with pytest.raises(DataError, match=r"lacks the model input\(s\) \['tokens'\]"):
        TEXT_AND_TABLE.check({k: v for k, v in good.items() if k != "tokens"}, "the request")
    with pytest.raises(DataError, match=r"'numeric' of the request has rows of shape \[4\]; the model takes \[3\]"):
        TEXT_AND_TABLE.check({**good, "numeric": np.zeros((3, 4), np.float32)}, "the request")
    with pytest.raises(DataError, match=r"'tokens' of the request is float64; the model takes int64"):
        TEXT_AND_TABLE.check({**good, "tokens": np.zeros((3, 5))}, "the request")
    with pytest.raises(DataError, match="different numbers of rows"):
        TEXT_AND_TABLE.check({**good, "attention_mask": np.ones((2, 5), np.int64)}, "the request")
    checked = TEXT_AND_TABLE.check({**good, "numeric": np.zeros((3, 3), np.float64), "extra": 1}, "the request")
    assert list(checked) == TEXT_AND_TABLE.names and checked["numeric"].dtype == np.float32  # cast, extras dropped


@settings(max_examples=60, deadline=None)
@given(arrays=st.dictionaries(st.sampled_from(["numeric", "tokens", "attention_mask", "image"]),
                              hnp.arrays(st.sampled_from([np.float64, np.float32, np.int64, np.int8, np.bool_, np.str_]),
                                         hnp.array_shapes(min_dims=1, max_dims=3, max_side=6)), max_size=4))
def test_check_accepts_or_refuses_any_batch_with_a_data_error(arrays):
    try:
        checked = TEXT_AND_TABLE.check(arrays, "the batch")
    except DataError as exc:
        assert "the batch" in exc.message
        return
    assert [a.dtype for a in checked.values()] == [np.float32, np.int64, np.int64]
    assert len({len(a) for a in checked.values()}) == 1


def test_rows_take_concat_and_the_baselines_feature_matrix():
    batch = {"image": np.arange(2 * 4, dtype=np.float32).reshape(2, 1, 2, 2),
             "numeric": np.array([[10.0], [20.0]], np.float32), "tokens": np.array([[1, 2], [3, 4]])}
    assert rows_of(batch) == 2
    assert take(batch, slice(1, 2))["tokens"].tolist() == [[3, 4]]
    assert rows_of(concat([batch, take(batch, [0])])) == 3
    np.testing.assert_array_equal(features_matrix(batch), [[0, 1, 2, 3, 10], [4, 5, 6, 7, 20]])  # no token ids
    assert features_matrix({"tokens": np.zeros((3, 2), np.int64)}).shape == (3, 0)
    assert TEXT_AND_TABLE.arrange({"attention_mask": 3, "numeric": 1, "tokens": 2}) == (1, 2, 3)
