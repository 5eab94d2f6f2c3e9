"""Data stage: sources, typing, cleaning, fitted preprocessing, splits, class weights, fingerprint."""

import json

import numpy as np
import pandas as pd
import pytest

from modelfoundry.artifacts.inputs import InputSpec
from modelfoundry.config import load_config
from modelfoundry.data.balance import class_weights
from modelfoundry.data.clean import OutlierClipper, clean_rows, infer_task, plan_features
from modelfoundry.data.prepare import load_clean, prepare_data
from modelfoundry.data.sources import load_source, read_table
from modelfoundry.data.split import split_indices
from modelfoundry.data.transform import Preprocessor, TargetEncoder
from modelfoundry.errors import ConfigError, DataError
from tests.conftest import tiny_config


def data_cfg(source, **data):
    return load_config(tiny_config(data={"source": str(source), **data})).data


@pytest.fixture
def wine():
    return load_source("sklearn:wine")


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl", ".tsv"])
def test_every_file_format_reads_back_the_bundled_data(tmp_path, wine, suffix):
    path = tmp_path / f"wine{suffix}"
    {".csv": lambda: wine.to_csv(path, index=False), ".tsv": lambda: wine.to_csv(path, index=False, sep="\t"),
     ".parquet": lambda: wine.to_parquet(path, index=False),
     ".jsonl": lambda: wine.to_json(path, orient="records", lines=True)}[suffix]()
    back = read_table(path)
    assert list(back.columns) == list(wine.columns)
    np.testing.assert_allclose(back.to_numpy(float), wine.to_numpy(float))


def test_bundled_sources_keep_scikit_learn_names():
    frame = load_source("sklearn:breast_cancer")
    assert "mean radius" in frame.columns and set(frame["target"]) == {0, 1} and len(frame) == 569
    with pytest.raises(DataError, match="Did you mean 'sklearn:digits'"):
        load_source("sklearn:digit")


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_table(tmp_path / "missing.csv")
    (tmp_path / "x.xlsx").write_text("a")
    with pytest.raises(DataError, match="suffix '.xlsx'"):
        read_table(tmp_path / "x.xlsx")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        read_table(tmp_path / "empty.csv")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="bad.parquet"):
        read_table(tmp_path / "bad.parquet")


def test_column_kinds_are_inferred_and_overridable(tmp_path):
    frame = pd.DataFrame({"age": [1.0, 2, 3, 4], "city": ["a", "b", "a", "c"], "code": ["1", "2", "3", "4"],
                          "y": [0, 1, 0, 1]})
    specs = plan_features(frame.copy(), data_cfg("f.csv", target="y"), "f.csv")
    assert {s.name: s.kind for s in specs} == {"age": "numeric", "city": "categorical", "code": "numeric"}
    cfg = data_cfg("f.csv", target="y", features={"code": {"type": "categorical"}, "city": {"type": "ignore"}})
    specs = plan_features(frame.copy(), cfg, "f.csv")
    assert {s.name: s.kind for s in specs} == {"age": "numeric", "code": "categorical"}


def test_text_in_a_numeric_column_names_column_and_row():
    frame = pd.DataFrame({"x": ["1", "2", "oops", "4", "5", "6", "7", "8", "9", "10", "11"], "y": [0, 1] * 5 + [0]})
    with pytest.raises(DataError) as err:
        plan_features(frame, data_cfg("f.csv", target="y"), "f.csv")
    assert "'x'" in str(err.value) and "row 2: 'oops'" in str(err.value) and "f.csv" in str(err.value)


def test_unknown_target_and_feature_keys_are_reported(wine):
    with pytest.raises(DataError, match="Target column 'targt'.*Did you mean 'target'"):
        plan_features(wine.copy(), data_cfg("w", target="targt"), "w.csv")
    with pytest.raises(DataError, match="'alcohl'.*matches no column.*Did you mean 'alcohol'"):
        plan_features(wine.copy(), data_cfg("w", features={"alcohl": {"type": "numeric"}}), "w.csv")


def test_task_inference():
    assert infer_task(pd.Series([0, 1, 2, 1]), "auto") == "classification"
    assert infer_task(pd.Series(["a", "b"]), "auto") == "classification"
    assert infer_task(pd.Series(np.linspace(0, 1, 50)), "auto") == "regression"
    assert infer_task(pd.Series(range(100)), "auto") == "regression"
    assert infer_task(pd.Series([0, 1]), "regression") == "regression"


def test_cleaning_drops_missing_targets_duplicates_and_drop_rows():
    frame = pd.DataFrame({"a": [1.0, 1.0, 2.0, np.nan, 5.0], "b": [1.0, 1.0, np.nan, 3.0, 4.0],
                          "y": [0, 0, 1, 1, None]})
    cfg = data_cfg("f.csv", target="y", features={"b": {"missing": "drop"}})
    specs = plan_features(frame.copy(), cfg, "f.csv")
    out, report = clean_rows(frame, specs, cfg, "f.csv")
    assert (report.missing_target, report.duplicates, report.dropped_missing["b"]) == (1, 1, 1)
    assert out.index.tolist() == [0, 3]


def test_nothing_left_after_cleaning_is_an_error():
    frame = pd.DataFrame({"a": [np.nan, np.nan], "y": [0, 1]})
    cfg = data_cfg("f.csv", target="y", features={"a": {"missing": "drop"}})
    with pytest.raises(DataError, match="Nothing is left"):
        clean_rows(frame, plan_features(frame.copy(), cfg, "f.csv"), cfg, "f.csv")


def test_single_class_target_is_an_error(tmp_path):
    path = tmp_path / "one.csv"
    pd.DataFrame({"a": range(20), "y": ["same"] * 20}).to_csv(path, index=False)
    with pytest.raises(DataError, match="single class"):
        load_clean(data_cfg(path, target="y"))


def test_outlier_clipper_learns_bounds_on_fit_data_only():
    train = np.array([[1.0], [2.0], [3.0], [4.0]])
    clip = OutlierClipper("iqr", 1.0).fit(train)
    q1, q3 = 1.75, 3.25
    np.testing.assert_allclose(clip.transform([[100.0], [-100.0]]).ravel(), [q3 + 1.5, q1 - 1.5])
    z = OutlierClipper("zscore", 2.0).fit(train)
    assert z.transform([[100.0]])[0, 0] == pytest.approx(train.mean() + 2 * train.std())
    with pytest.raises(RuntimeError, match="not fitted"):
        OutlierClipper().transform(train)


def test_preprocessing_is_fitted_on_the_training_split_only():
    prepared = prepare_data(data_cfg("sklearn:wine"), seed=0)
    assert prepared.X["train"]["numeric"].mean(0) == pytest.approx(np.zeros(13), abs=1e-5)
    assert not np.allclose(prepared.X["test"]["numeric"].mean(0), 0, atol=1e-3)  # test rows were not used to fit
    assert list(prepared.X["train"]) == ["numeric"] and prepared.X["train"]["numeric"].dtype == np.float32
    assert prepared.input_spec == InputSpec.single("numeric", (13,)) and prepared.preprocessor.input_shape_ == (13,)


def test_imputation_encoding_and_unknown_categories():
    train = pd.DataFrame({"n": [1.0, np.nan, 3.0, 10.0], "c": ["a", "b", None, "a"], "o": ["x", "y", "x", "y"],
                          "k": [np.nan, 1.0, 1.0, 1.0]})
    cfg = data_cfg("f.csv", target="y", features={"n": {"missing": "mean", "scale": "none"},
                                                  "o": {"encode": "ordinal"},
                                                  "k": {"missing": "constant", "fill_value": -5, "scale": "none"}})
    specs = plan_features(train.assign(y=[0, 1, 0, 1]), cfg, "f.csv")
    pre = Preprocessor(specs).fit(train)
    out = pre.transform(train)["numeric"]
    names = pre.feature_names_
    assert out[1, names.index("n")] == pytest.approx(14 / 3)  # mean of 1, 3, 10
    assert out[0, names.index("k")] == -5
    assert out[2, names.index("c_a")] == 1  # most frequent fills the missing category
    assert sorted(set(out[:, names.index("o")])) == [0, 1]
    unseen = pre.transform(pd.DataFrame({"n": [1.0], "c": ["zzz"], "o": ["q"], "k": [1.0]}))["numeric"]
    assert unseen[0, names.index("c_a")] == 0 and unseen[0, names.index("o")] == -1
    with pytest.raises(DataError, match="lacks column"):
        pre.transform(train.drop(columns=["c"]))
    with pytest.raises(DataError, match="'n'.*text"):
        pre.transform(train.assign(n=["1", "x", "3", "4"]))


def test_images_from_pixel_columns_and_from_array_cells(tmp_path):
    cfg = data_cfg("sklearn:digits", features={"pixel_*": {"type": "image", "scale": "minmax"}})
    prepared = prepare_data(cfg, seed=0)
    assert list(prepared.X["train"]) == ["image"] and prepared.X["train"]["image"].shape[1:] == (1, 8, 8)
    assert prepared.X["train"]["image"].min() == 0 and prepared.X["train"]["image"].max() == 1
    digits = load_source("sklearn:digits")
    pixels = digits.drop(columns="target").to_numpy()
    path = tmp_path / "images.jsonl"
    pd.DataFrame({"img": [p.reshape(8, 8).tolist() for p in pixels[:300]],
                  "label": digits["target"][:300]}).to_json(path, orient="records", lines=True)
    from_arrays = prepare_data(data_cfg(path, target="label"), seed=0)
    assert from_arrays.X["train"]["image"].shape[1:] == (1, 8, 8) and from_arrays.task == "classification"


def test_target_encoder_round_trip_and_unseen_labels():
    enc = TargetEncoder("classification").fit(pd.Series(["b", "a", "c", "a"], name="t"))
    codes = enc.encode(pd.Series(["c", "a"], name="t"))
    assert codes.tolist() == [2, 0] and enc.decode(codes).tolist() == ["c", "a"]
    with pytest.raises(DataError, match="never saw"):
        enc.encode(pd.Series(["d"], name="t"))
    reg = TargetEncoder("regression").fit(pd.Series([1.0, 2.0, 3.0], name="t"))
    np.testing.assert_allclose(reg.decode(reg.encode(pd.Series([5.0], name="t"))), [5.0])


def test_stratified_split_is_reproducible_and_keeps_class_balance():
    labels = np.array(["a"] * 80 + ["b"] * 20)
    first = split_indices(labels, 0.2, 0.2, True, seed=3)
    assert all(np.array_equal(first[k], split_indices(labels, 0.2, 0.2, True, seed=3)[k]) for k in first)
    assert not np.array_equal(first["test"], split_indices(labels, 0.2, 0.2, True, seed=4)["test"])
    assert sorted(np.concatenate(list(first.values())).tolist()) == list(range(100))
    for part in first.values():
        assert (labels[part] == "b").mean() == pytest.approx(0.2, abs=0.02)
    with pytest.raises(DataError, match="(?s)too few rows.*stratify: false"):
        split_indices(np.array(["a"] * 30 + ["b"]), 0.2, 0.2, True, seed=0)


def test_class_weights():
    codes = np.array([0, 0, 0, 1])
    np.testing.assert_allclose(class_weights(codes, ["x", "y"], "balanced"), [4 / 6, 2.0])
    np.testing.assert_allclose(class_weights(codes, ["x", "y"], {"y": 3.0}), [1.0, 3.0])
    assert class_weights(codes, ["x", "y"], "none") is None
    with pytest.raises(ConfigError, match="'z'"):
        class_weights(codes, ["x", "y"], {"z": 2.0})


def test_fingerprint_records_hash_shape_balance_and_missing(tmp_path):
    frame = load_source("sklearn:iris")
    frame.loc[3, "sepal length (cm)"] = np.nan
    path = tmp_path / "iris.csv"
    frame.to_csv(path, index=False)
    info = load_clean(data_cfg(path)).info
    fp = info["fingerprint"]
    assert fp["rows"] == 150 and fp["class_balance"] == {"0": 50, "1": 50, "2": 50}
    assert fp["missing"] == {"sepal length (cm)": 1} and len(fp["sha256"]) == 64
    frame.loc[5, "petal width (cm)"] = 9.9
    frame.to_csv(path, index=False)
    assert load_clean(data_cfg(path)).info["fingerprint"]["sha256"] != fp["sha256"]
    json.dumps(info)  # data.json must be serialisable


def test_clipping_without_scaling_and_an_empty_training_column():
    train = pd.DataFrame({"a": [1.0, 2.0, 3.0, 100.0], "empty": [np.nan] * 4, "y": [0, 1, 0, 1]})
    cfg = data_cfg("f.csv", target="y", features={"a": {"scale": "none"}})
    pre = Preprocessor(plan_features(train.copy(), cfg, "f.csv"), "zscore", 1.0).fit(train)
    out = pre.transform(pd.DataFrame({"a": [1000.0], "empty": [5.0]}))["numeric"]
    assert out.shape == (1, 2) and pre.feature_names_ == ["a", "empty"]
    assert out[0, 0] == pytest.approx(train.a.mean() + train.a.std(ddof=0))  # clipped, not scaled


def test_a_wide_table_is_one_pipeline_per_treatment_and_keeps_column_order():
    """2,000 numeric columns used to be 2,000 scikit-learn pipelines (52 s); now columns that share a
    treatment share one step, and the output is still in the columns' order, equal to the portable form."""
    import pandas as pd

    from modelfoundry.config import load_config
    from modelfoundry.data.clean import plan_features
    from modelfoundry.data.portable import apply_portable, describe_preprocessor
    from modelfoundry.data.transform import Preprocessor

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(40, 300)) * np.arange(1, 301), columns=[f"f{i}" for i in range(300)])
    frame.iloc[3, 7] = np.nan
    frame.insert(150, "colour", rng.choice(["red", "blue"], size=40))
    frame["target"] = rng.integers(0, 2, size=40)
    cfg = load_config({"name": "w", "data": {"source": "x.csv", "target": "target",
                                             "features": {"f299": {"scale": "minmax"}}},
                       "model": {"name": "mlp"}}).data
    specs = plan_features(frame, cfg, "wide.csv")
    pre = Preprocessor(specs).fit(frame)
    assert len(pre.column_transformer_.transformers_) == 3  # standard numeric, minmax numeric, categorical
    out = pre.transform(frame)["numeric"]
    assert pre.feature_names_[:2] == ["f0", "f1"] and pre.feature_names_[150:152] == ["colour_blue", "colour_red"]
    assert out.shape == (40, 302)
    np.testing.assert_allclose(out[:, 0], (frame["f0"] - frame["f0"].mean()) / frame["f0"].std(ddof=0), rtol=1e-5)
    np.testing.assert_allclose(out[:, -1], (frame["f299"] - frame["f299"].min()) / np.ptp(frame["f299"]), rtol=1e-5)
    assert (out[:, 150] + out[:, 151] == 1).all()
    np.testing.assert_allclose(apply_portable(describe_preprocessor(pre), frame)["numeric"], out, rtol=1e-6)


def test_content_hash_is_unchanged_by_the_block_path():
    """Run directories record the data's hash and resume compares it: the per-dtype block hashing must give
    exactly the bytes the per-column hashing gave."""
    import hashlib

    import pandas as pd

    from modelfoundry.data.fingerprint import content_hash

    frame = pd.DataFrame({"a": [1, 2, 3], "b": ["x", None, "z"], "c": [1.5, np.nan, 2.0],
                          "d": [True, False, True], "e": np.array([7, 8, 9], dtype=np.int32)})
    digest = hashlib.sha256("\x1fa\x1fb\x1fc\x1fd\x1fe".replace("\x1fa", "a", 1).encode())
    for column in frame.columns:
        digest.update(pd.util.hash_pandas_object(frame[column], index=False).to_numpy().tobytes())
    assert content_hash(frame) == digest.hexdigest()
    assert content_hash(frame.iloc[::-1].reset_index(drop=True)) != digest.hexdigest()
