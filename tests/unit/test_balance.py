"""data.balance resampling (imbalanced-learn) of the training split, and the focal loss."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from modelfoundry.config import BalanceConfig
from modelfoundry.data.balance import resample
from modelfoundry.errors import ConfigError, DataError
from modelfoundry.train.optim import FocalLoss, build_loss

PLAIN = SimpleNamespace(desc={"kind": "tabular", "features": []})  # a table of numeric columns only


def skewed(n_major: int = 90, n_minor: int = 15, features: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(0, 1, (n_major, features)), rng.normal(2, 1, (n_minor, features))])
    y = np.array([0] * n_major + [1] * n_minor)
    return {"numeric": X.astype(np.float32)}, y, np.arange(100, 100 + len(y))


@pytest.mark.parametrize("method,ratio,expected", [
    ("oversample", "auto", [90, 90]), ("oversample", 0.5, [90, 45]), ("undersample", "auto", [15, 15]),
    ("undersample", 0.5, [30, 15]), ("smote", "auto", [90, 90]), ("smote", 0.4, [90, 36])])
def test_each_method_gives_the_class_counts_asked_for(method, ratio, expected):
    X, y, rows = skewed()
    X2, y2, rows2, info = resample(X, y, rows, BalanceConfig(method=method, ratio=ratio), 0, PLAIN, ["no", "yes"])
    assert np.bincount(y2).tolist() == expected
    assert len(X2["numeric"]) == len(y2) == len(rows2) and X2["numeric"].dtype == np.float32
    assert info["before"] == {"no": 90, "yes": 15} and info["after"] == {"no": expected[0], "yes": expected[1]}
    synthetic = rows2 == -1
    assert info["synthetic"] == int(synthetic.sum()) == (expected[1] - 15 if method == "smote" else 0)
    # every real row keeps its inputs, class and row number; a synthetic row is a minority row in between
    real = np.flatnonzero(~synthetic)
    np.testing.assert_array_equal(X2["numeric"][real], X["numeric"][rows2[real] - 100])
    np.testing.assert_array_equal(y2[real], y[rows2[real] - 100])
    assert (y2[synthetic] == 1).all()
    minority = X["numeric"][y == 1]
    assert ((X2["numeric"][synthetic] >= minority.min(0) - 1e-6) & (X2["numeric"][synthetic] <= minority.max(0) + 1e-6)).all()


def test_adasyn_grows_the_minority_and_multiclass_ratios_are_per_class():
    X, y, rows = skewed()
    _, y2, rows2, info = resample(X, y, rows, BalanceConfig(method="adasyn"), 0, PLAIN)
    assert info["method"] == "adasyn" and info["synthetic"] == (rows2 == -1).sum() > 50
    assert abs(np.bincount(y2)[1] - 90) <= 10  # ADASYN's counts are approximate
    y3 = np.array([0] * 60 + [1] * 30 + [2] * 15)
    _, y4, _, _ = resample(X, y3, rows, BalanceConfig(method="oversample", ratio=0.8), 0, PLAIN)
    assert np.bincount(y4).tolist() == [60, 48, 48]  # each class at least 0.8 x the largest


def test_the_same_seed_gives_the_same_rows_and_another_seed_others():
    X, y, rows = skewed()
    cfg = BalanceConfig(method="smote")
    a, b, c = (resample(X, y, rows, cfg, seed, PLAIN)[0]["numeric"] for seed in (3, 3, 4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_none_and_gan_leave_the_split_alone_and_a_ratio_asking_nothing_changes_nothing():
    X, y, rows = skewed()
    for method in ("none", "gan"):
        assert resample(X, y, rows, BalanceConfig(method=method), 0, PLAIN)[1] is y
    X2, y2, _, info = resample(X, y, rows, BalanceConfig(method="smote", ratio=0.1), 0, PLAIN)
    assert y2 is y and info["synthetic"] == 0 and info["after"] == info["before"]


def test_images_are_interpolated_as_pixels_and_keep_their_shape():
    rng = np.random.default_rng(0)
    X = {"image": rng.random((40, 1, 4, 4)).astype(np.float32)}
    y = np.array([0] * 32 + [1] * 8)
    X2, y2, rows2, _ = resample(X, y, np.arange(40), BalanceConfig(method="smote", k_neighbors=3), 0, PLAIN)
    assert X2["image"].shape == (64, 1, 4, 4) and (rows2 == -1).sum() == 24 and np.bincount(y2).tolist() == [32, 32]


def test_text_is_resampled_by_whole_rows_only():
    tokens = np.arange(30 * 5).reshape(30, 5)
    X = {"tokens": tokens, "attention_mask": np.ones_like(tokens)}
    y = np.array([0] * 24 + [1] * 6)
    X2, y2, rows2, _ = resample(X, y, np.arange(30), BalanceConfig(method="oversample"), 0, PLAIN)
    assert np.bincount(y2).tolist() == [24, 24] and (rows2 >= 0).all()
    np.testing.assert_array_equal(X2["tokens"], tokens[rows2])  # every input takes the same rows
    with pytest.raises(ConfigError, match="text") as error:
        resample(X, y, np.arange(30), BalanceConfig(method="smote"), 0, PLAIN)
    assert "oversample" in error.value.hint


def test_synthetic_methods_need_one_float_input():
    X, y, rows = skewed()
    X["image"] = np.zeros((len(y), 1, 2, 2), dtype=np.float32)
    with pytest.raises(ConfigError, match="one float input"):
        resample(X, y, rows, BalanceConfig(method="adasyn"), 0, PLAIN)
    X2, y2, _, _ = resample(X, y, rows, BalanceConfig(method="undersample"), 0, PLAIN)
    assert len(X2["image"]) == len(X2["numeric"]) == len(y2) == 30


def mixed_table(n: int = 60, minority: int = 12, seed: int = 0):
    """Columns: numeric, a one-hot category of 3, numeric, an ordinal category (codes 0..3)."""
    rng = np.random.default_rng(seed)
    hot = np.eye(3)[rng.integers(0, 3, n)]
    X = np.column_stack([rng.normal(size=n), hot, rng.normal(size=n), rng.integers(0, 4, n)]).astype(np.float32)
    desc = {"kind": "tabular", "features": [
        {"kind": "numeric", "width": 1}, {"kind": "categorical", "encode": "onehot", "width": 3},
        {"kind": "numeric", "width": 1}, {"kind": "categorical", "encode": "ordinal", "width": 1}]}
    return {"numeric": X}, np.array([0] * (n - minority) + [1] * minority), SimpleNamespace(desc=desc)


def test_smotenc_keeps_categorical_columns_valid():
    X, y, pre = mixed_table()
    X2, y2, rows2, info = resample(X, y, np.arange(len(y)), BalanceConfig(method="smotenc"), 0, pre)
    new = X2["numeric"][rows2 == -1]
    assert info["synthetic"] == len(new) == 36 and np.bincount(y2).tolist() == [48, 48]
    assert (new[:, 1:4].sum(1) == 1).all() and set(np.unique(new[:, 1:4])) <= {0.0, 1.0}  # exactly one hot
    assert set(np.unique(new[:, 5])) <= {0.0, 1.0, 2.0, 3.0}  # an ordinal code stays a code
    minority = X["numeric"][y == 1]
    assert minority[:, 0].min() - 1e-6 <= new[:, 0].min() and new[:, 0].max() <= minority[:, 0].max() + 1e-6
    np.testing.assert_array_equal(X2["numeric"][rows2 >= 0], X["numeric"][rows2[rows2 >= 0]])


def test_smotenc_on_a_purely_numeric_table_says_to_use_smote():
    X, y, rows = skewed()
    with pytest.raises(ConfigError, match="no categorical columns") as error:
        resample(X, y, rows, BalanceConfig(method="smotenc"), 0, PLAIN)
    assert "smote" in error.value.hint


def test_too_few_minority_rows_for_k_neighbors_is_a_data_error_with_the_fix():
    X, y, rows = skewed(n_minor=4)
    with pytest.raises(DataError, match=r"k_neighbors \(5\)") as error:
        resample(X, y, rows, BalanceConfig(method="smote"), 0, PLAIN)
    assert "k_neighbors to at most 3" in error.value.hint and "oversample" in error.value.hint
    _, y2, _, _ = resample(X, y, rows, BalanceConfig(method="smote", k_neighbors=3), 0, PLAIN)
    assert np.bincount(y2).tolist() == [90, 90]


def test_imbalanced_learn_refusals_become_data_errors_naming_the_setting():
    # ADASYN weighs minority rows by their majority neighbours; with classes far apart it has none to weigh
    X = {"numeric": np.concatenate([np.zeros((40, 2)), np.full((10, 2), 100.0)]).astype(np.float32)}
    X["numeric"] += np.random.default_rng(0).normal(0, 0.01, X["numeric"].shape).astype(np.float32)
    y = np.array([0] * 40 + [1] * 10)
    with pytest.raises(DataError, match="data.balance.method: adasyn could not resample") as error:
        resample(X, y, np.arange(50), BalanceConfig(method="adasyn"), 0, PLAIN)
    assert "smote" in error.value.hint


@settings(max_examples=25, deadline=None)
@given(counts=st.lists(st.integers(1, 40), min_size=2, max_size=4),
       method=st.sampled_from(["oversample", "undersample"]),
       ratio=st.one_of(st.just("auto"), st.floats(0.05, 1.0)))
def test_random_class_counts_resample_to_the_documented_sizes(counts, method, ratio):
    y = np.repeat(np.arange(len(counts)), counts)
    X = {"numeric": np.arange(len(y), dtype=np.float32).reshape(-1, 1)}
    X2, y2, rows2, _ = resample(X, y, np.arange(len(y)), BalanceConfig(method=method, ratio=ratio), 1, PLAIN)
    after = np.bincount(y2, minlength=len(counts))
    r = 1.0 if ratio == "auto" else ratio
    if method == "oversample":
        assert (after >= counts).all() and (after >= np.ceil(r * max(counts) - 1e-9)).all()
    else:
        assert (after <= counts).all() and (after <= np.floor(min(counts) / r)).all() and after.min() == min(counts)
    np.testing.assert_array_equal(X2["numeric"][:, 0], rows2)  # each row came with its own inputs


# ------------------------------------------------------------------------------------------------- focal loss
@pytest.mark.parametrize("weight", [None, torch.tensor([1.0, 3.0, 0.5])])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_focal_loss_with_gamma_0_is_cross_entropy(weight, smoothing):
    torch.manual_seed(0)
    logits, target = torch.randn(16, 3), torch.randint(0, 3, (16,))
    focal = build_loss("focal", "classification", weight, smoothing, focal_gamma=0.0)
    expected = nn.CrossEntropyLoss(weight=weight, label_smoothing=smoothing)(logits, target)
    torch.testing.assert_close(focal(logits, target), expected)
    soft = torch.softmax(torch.randn(16, 3), 1)  # mixup's soft labels
    torch.testing.assert_close(focal(logits, soft), nn.CrossEntropyLoss(weight=weight, label_smoothing=smoothing)(
        logits, soft))


def test_focal_loss_scales_each_row_by_one_minus_p_to_the_gamma():
    logits = torch.log(torch.tensor([[0.9, 0.1], [0.3, 0.7]]))  # P(true class) 0.9 and 0.3
    target = torch.tensor([0, 0])
    loss = FocalLoss(2.0)(logits, target)
    expected = (-(0.1 ** 2) * np.log(0.9) - (0.7 ** 2) * np.log(0.3)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    alpha = FocalLoss(2.0, torch.tensor([2.0, 1.0]))(logits, target)  # both rows of class 0: the weighted mean
    assert alpha.item() == pytest.approx(expected, rel=1e-5)
    easy, hard = (FocalLoss(2.0)(logits[i:i + 1], target[:1]) / nn.functional.cross_entropy(logits[i:i + 1],
                                                                                                target[:1])
                  for i in (0, 1))
    assert easy < 0.02 and hard > 0.4  # the confident row counts (1 - 0.9)^2 of its cross-entropy
    logits.requires_grad_(True)
    FocalLoss(2.0)(logits, target).backward()
    assert torch.isfinite(logits.grad).all()


# ------------------------------------------------------------------------------------------------- in the data stage
def test_only_the_training_split_is_resampled(make_config):
    from modelfoundry.data.prepare import prepare_data

    plain = prepare_data(make_config(data={"source": "sklearn:breast_cancer"}).data, 0)
    smote = prepare_data(make_config(data={"source": "sklearn:breast_cancer", "balance": {"method": "smote"}}).data, 0)
    for split in ("val", "test"):
        np.testing.assert_array_equal(smote.X[split]["numeric"], plain.X[split]["numeric"])
        np.testing.assert_array_equal(smote.y[split], plain.y[split])
        np.testing.assert_array_equal(smote.rows[split], plain.rows[split])
    before = np.bincount(plain.y["train"])
    assert before[0] < before[1] and np.bincount(smote.y["train"]).tolist() == [before[1], before[1]]
    assert smote.info["balance"]["before"] == {"0": int(before[0]), "1": int(before[1])}
    assert smote.info["split"]["train"] == len(plain.y["train"])  # the split itself is unchanged
    np.testing.assert_array_equal(smote.X["train"]["numeric"][:len(plain.y["train"])], plain.X["train"]["numeric"])


def test_smotenc_finds_the_one_hot_columns_of_a_real_preprocessing(make_config, tmp_path):
    from modelfoundry.data.prepare import prepare_data
    from modelfoundry.data.sources import load_source

    frame = load_source("sklearn:breast_cancer").iloc[:, [0, 1, 2, -1]]
    frame.insert(1, "size", np.where(frame["mean radius"] > 15, "large", np.where(frame["mean radius"] > 12,
                                                                                     "medium", "small")))
    frame.to_csv(tmp_path / "cancer.csv", index=False)
    data = prepare_data(make_config(data={"source": str(tmp_path / "cancer.csv"),
                                          "balance": {"method": "smotenc"}}).data, 0)
    names = data.preprocessor.feature_names_
    hot = [j for j, name in enumerate(names) if "size" in name]
    assert len(hot) == 3 and data.info["balance"]["synthetic"] > 0
    new = data.X["train"]["numeric"][data.rows["train"] == -1]
    assert (new[:, hot].sum(1) == 1).all() and set(np.unique(new[:, hot])) == {0.0, 1.0}
