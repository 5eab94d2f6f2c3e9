"""Cross-validation pieces: k-fold and hold-out positions, fold data fitted on its training rows, mean ± std."""

import numpy as np
import pytest

from modelfoundry.config import load_config
from modelfoundry.cv import summarise
from modelfoundry.data.prepare import load_clean, prepare_parts
from modelfoundry.data.split import holdout_indices, kfold_indices
from modelfoundry.errors import DataError
from tests.conftest import tiny_config

LABELS = np.array(["a"] * 60 + ["b"] * 30 + ["c"] * 10)


@pytest.mark.parametrize("stratify", [True, False])
def test_kfold_holds_out_every_row_exactly_once(stratify):
    folds = kfold_indices(LABELS, 7, stratify, seed=3)
    assert len(folds) == 7
    held_out = np.concatenate([h for _, h in folds])
    assert np.array_equal(np.sort(held_out), np.arange(len(LABELS)))  # a partition: no row twice, none missing
    for train, held in folds:
        assert np.array_equal(np.sort(np.concatenate([train, held])), np.arange(len(LABELS)))
        assert not np.intersect1d(train, held).size
        assert np.array_equal(train, np.sort(train)) and np.array_equal(held, np.sort(held))
    assert max(len(h) for _, h in folds) - min(len(h) for _, h in folds) <= 1


def test_stratified_folds_keep_class_proportions():
    for _, held in kfold_indices(LABELS, 5, True, seed=0):
        values, counts = np.unique(LABELS[held], return_counts=True)
        assert dict(zip(values, counts)) == {"a": 12, "b": 6, "c": 2}


def test_folds_are_shuffled_and_reproducible_from_the_seed():
    first = kfold_indices(LABELS, 5, False, seed=0)
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(first, kfold_indices(LABELS, 5, False, seed=0)))
    assert not all(np.array_equal(a, b) for (_, a), (_, b) in zip(first, kfold_indices(LABELS, 5, False, seed=1)))
    assert not np.array_equal(first[0][1], np.arange(20))  # shuffled, not the first 20 rows


def test_kfold_errors_say_what_to_do():
    with pytest.raises(DataError, match="at least 2 folds, got 1"):
        kfold_indices(LABELS, 1, False, seed=0)
    with pytest.raises(DataError, match="101 folds need at least 101 rows; the data has 100") as err:
        kfold_indices(LABELS, 101, False, seed=0)
    assert "--folds 100 or fewer" in err.value.hint
    with pytest.raises(DataError, match=r"'c' \(10 rows\) have fewer rows than the 11 folds") as err:
        kfold_indices(LABELS, 11, True, seed=0)
    assert "--folds 10 or fewer" in err.value.hint and "--no-stratified" in err.value.hint
    assert len(kfold_indices(LABELS, 11, False, seed=0)) == 11  # unstratified folds need no rows per class


def test_holdout_is_a_stratified_fraction_of_the_rows():
    kept, held = holdout_indices(LABELS, 0.2, True, seed=0)
    assert len(held) == 20 and len(kept) == 80 and not np.intersect1d(kept, held).size
    values, counts = np.unique(LABELS[held], return_counts=True)
    assert dict(zip(values, counts)) == {"a": 12, "b": 6, "c": 2}
    with pytest.raises(DataError, match=r"class\(es\) 'z' \(1 row\) have a single row"):
        holdout_indices(np.array(["a"] * 10 + ["z"]), 0.3, True, seed=0)
    with pytest.raises(DataError, match="3 classes do not fit in 2 rows"):
        holdout_indices(np.array(list("aabbccaabbcc")), 0.15, True, seed=0)


def test_mean_and_sample_std_over_metrics_every_fold_has():
    mean, std = summarise([{"accuracy": 0.8, "roc_auc": 0.9}, {"accuracy": 0.9}, {"accuracy": 1.0, "roc_auc": 1.0}])
    assert mean == {"accuracy": pytest.approx(0.9)}  # roc_auc is missing from one fold: no mean for it
    assert std == {"accuracy": pytest.approx(0.1)}  # ddof=1: sqrt((0.01 + 0 + 0.01) / 2)


def test_fold_preprocessing_and_target_scale_are_fitted_on_its_training_rows_only():
    cfg = load_config(tiny_config(data={"source": "sklearn:diabetes"})).data
    clean = load_clean(cfg)
    frame = clean.frame
    parts = {"train": frame.iloc[:200], "val": frame.iloc[200:250], "test": frame.iloc[250:]}
    data = prepare_parts(clean, parts, cfg, seed=7, stratified=False)
    assert data.target_encoder.mean_ == pytest.approx(frame["target"].iloc[:200].mean())
    assert data.X["train"]["numeric"].mean(0) == pytest.approx(np.zeros(data.X["train"]["numeric"].shape[1]), abs=1e-5)
    assert np.array_equal(data.rows["test"], frame.index[250:])
    assert data.info["split"] == {"seed": 7, "stratified": False, "train": 200, "val": 50, "test": len(frame) - 250}
