"""ONNX export: portable preprocessing equals the fitted one, the export reproduces torch, failures publish nothing."""

import json

import numpy as np
import pandas as pd
import pytest

from modelfoundry.artifacts.inputs import rows_of, take
from modelfoundry.config import load_config
from modelfoundry.data import portable
from modelfoundry.data.clean import plan_features
from modelfoundry.data.portable import apply_portable, describe_preprocessor
from modelfoundry.data.prepare import load_clean, split_frame
from modelfoundry.data.transform import Preprocessor
from modelfoundry.errors import ConfigError, DataError, RunDirError
from modelfoundry.export import ExportError, export_onnx, load_onnx_predictor
from modelfoundry.api.prediction import predict
from modelfoundry.api.training import run
from modelfoundry.rundir import load_model
from tests.conftest import tiny_config

RUNS = {  # name -> config sections; "csv" is written by the fixture
    "mlp_breast_cancer": {"data": {"source": "sklearn:breast_cancer", "clean": {"outliers": {"method": "iqr"}}},
                          "model": {"name": "mlp", "hidden": [16], "batch_norm": True}},
    "mlp_categorical": {"data": {"source": "csv", "features": {
        "size": {"encode": "ordinal"},
        "petal width (cm)": {"scale": "minmax"},
        "sepal width (cm)": {"missing": "constant", "fill_value": 0, "scale": "none"}}}},
    "cnn_digits": {"data": {"source": "sklearn:digits", "features": {"pixel_*": {"type": "image"}}},
                   "model": {"name": "cnn", "channels": [4, 8]}, "training": {"batch_size": 64}},
    "mlp_regression": {"data": {"source": "sklearn:diabetes"}, "model": {"name": "mlp", "hidden": [8]}},
}


def iris_with_categories(path):
    """iris plus a categorical column tied to the class, an ordinal one, and missing values in three columns."""
    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True).frame
    rng = np.random.RandomState(0)
    colours = np.array(["red", "green", "blue"])[frame["target"].to_numpy()]
    frame["colour"] = np.where(rng.rand(len(frame)) < 0.2, rng.choice(["red", "green", "blue"], len(frame)), colours)
    frame["size"] = rng.choice(["S", "M", "L"], len(frame))
    for column in ("colour", "size", "sepal length (cm)"):
        frame.loc[rng.rand(len(frame)) < 0.1, column] = np.nan
    frame.to_csv(path, index=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (run_dir, out_dir, ExportResult), each run trained and exported once, on first use."""
    done = {}

    def get(name):
        if name not in done:
            tmp = tmp_path_factory.mktemp(name)
            sections = json.loads(json.dumps(RUNS[name]))
            if sections["data"]["source"] == "csv":
                iris_with_categories(tmp / "data.csv")
                sections["data"]["source"] = str(tmp / "data.csv")
            run(load_config(tiny_config(**sections)), run_dir=tmp / "run", progress=False)
            done[name] = (tmp / "run", tmp / "onnx", export_onnx(tmp / "run", tmp / "onnx"))
        return done[name]

    return get


def split_rows(run_dir):
    """The raw rows of a run's test split."""
    config = load_model(run_dir).config
    clean = load_clean(config.data)
    return clean.frame.iloc[split_frame(clean, config.data, config.seed)["test"]]


def fitted_preprocessor(run_dir):
    """The scikit-learn preprocessing of a run, fitted again on its training split (run dirs keep only the
    portable description)."""
    from modelfoundry.data.prepare import prepare_data

    config = load_model(run_dir).config
    return prepare_data(config.data, config.seed).preprocessor.fitted


def round_trip(desc):
    return json.loads(json.dumps(desc))


@pytest.mark.parametrize("name", list(RUNS))
def test_portable_preprocessing_equals_the_fitted_one(exported, name):
    run_dir, out_dir, _ = exported(name)
    saved = load_model(run_dir)
    desc = json.loads((out_dir / "preprocess.json").read_text())
    assert desc == round_trip(describe_preprocessor(saved.preprocessor, saved.target_encoder, "target"))
    assert desc["format"] == portable.PORTABLE_FORMAT and desc["feature_names"] == saved.preprocessor.feature_names_
    rows = split_rows(run_dir)
    expected = fitted_preprocessor(run_dir).transform(rows)
    got = apply_portable(desc, rows)
    assert list(got) == list(expected) == [f["name"] for f in desc["inputs"]] == saved.record.input_spec.names
    for name, array in got.items():
        assert array.dtype == np.float32 and array.shape == expected[name].shape == (len(rows), *desc["input_shape"])
        np.testing.assert_allclose(array, expected[name], rtol=1e-6, atol=0)


def test_unseen_categories_missing_values_and_numeric_text(exported):
    run_dir, out_dir, _ = exported("mlp_categorical")
    pre = fitted_preprocessor(run_dir)
    desc = json.loads((out_dir / "preprocess.json").read_text())
    rows = pd.DataFrame({"sepal length (cm)": [np.nan, "5.1", 4.4, None], "sepal width (cm)": [np.nan, 3.0, 99.0, 2.5],
                         "petal length (cm)": ["1.4", "4.0", "6.1", "2.2"], "petal width (cm)": [0.2, 1.3, 2.5, 9.0],
                         "colour": ["purple", None, "red", np.nan], "size": ["XL", "M", None, "S"]})
    expected = pre.transform(rows)["numeric"]
    got = apply_portable(desc, rows)["numeric"]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)
    names = desc["feature_names"]
    colours = [names.index(f"colour_{c}") for c in ("blue", "green", "red")]
    assert got[0, colours].tolist() == [0, 0, 0]  # unseen category: all-zero one-hot
    assert got[1, colours].sum() == 1  # missing: the most frequent colour
    assert got[0, names.index("size")] == -1  # unseen ordinal category
    assert got[0, names.index("sepal width (cm)")] == 0  # missing: constant 0, no scaling
    with pytest.raises(DataError, match="lacks column.*'colour'"):
        apply_portable(desc, rows.drop(columns="colour"))
    with pytest.raises(DataError, match="'sepal width \\(cm\\)'.*text"):
        apply_portable(desc, rows.assign(**{"sepal width (cm)": ["1", "wide", "3", "4"]}))


def test_portable_image_from_array_cells():
    digits = load_config(tiny_config(data={"source": "sklearn:digits"})).data
    from modelfoundry.data.sources import load_source

    source = load_source(digits.source)
    frame = pd.DataFrame({"img": [p.reshape(8, 8) for p in source.drop(columns="target").to_numpy()[:200]],
                          "y": source["target"][:200]})
    cfg = load_config(tiny_config(data={"source": "f.jsonl", "target": "y",
                                        "features": {"img": {"scale": "minmax"}}})).data
    pre = Preprocessor(plan_features(frame, cfg, "f.jsonl")).fit(frame)
    desc = round_trip(describe_preprocessor(pre))
    assert desc["image"]["array_column"] == "img" and "target" not in desc
    np.testing.assert_allclose(apply_portable(desc, frame)["image"], pre.transform(frame)["image"], rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", list(RUNS))
def test_onnx_model_takes_any_batch_and_matches_torch(exported, name):
    from modelfoundry.models.inference import predict_outputs

    run_dir, out_dir, result = exported(name)
    saved = load_model(run_dir)
    predictor = load_onnx_predictor(out_dir)
    rows = pd.concat([split_rows(run_dir)] * 2).iloc[:37]
    X = saved.preprocessor.transform(rows)
    assert result.input_names == saved.record.input_spec.names == [i.name for i in predictor.session.get_inputs()]
    for batch in (take(X, slice(0, 1)), X):
        onnx_out = predictor.session.run(None, batch)[0]  # the graph's inputs are the model's named inputs
        assert onnx_out.shape == (rows_of(batch), saved.record.n_outputs)
        torch_out = predict_outputs(saved.model, batch, saved.task).reshape(rows_of(batch), -1)
        np.testing.assert_allclose(onnx_out, torch_out, rtol=0, atol=1e-4)
    if saved.task == "classification":
        assert result.output_name == "probabilities" and np.allclose(onnx_out.sum(1), 1, atol=1e-5)


@pytest.mark.parametrize("name", list(RUNS))
def test_export_json_records_what_and_how(exported, name):
    run_dir, out_dir, result = exported(name)
    meta = json.loads((out_dir / "export.json").read_text())
    n_test = json.loads((run_dir / "data.json").read_text())["split"]["test"]
    assert meta["parity"]["rows_checked"] == result.rows_checked == n_test
    assert meta["parity"]["max_abs_diff"] == result.max_abs_diff <= 1e-4 == meta["parity"]["tolerance"]
    assert meta["parity"]["preprocess_max_abs_diff"] == 0
    assert meta["exporter"] == result.exporter == "dynamo" and meta["opset"] == result.opset >= 17
    spec = load_model(run_dir).record.input_spec
    assert meta["inputs"] == [{"name": f.name, "shape": ["batch", *f.shape], "dtype": f.dtype} for f in spec]
    assert meta["input"] == meta["inputs"][0] and meta["input"]["name"] in ("numeric", "image")
    assert set(meta["versions"]) == {"modelfoundry", "torch", "onnx", "onnxruntime"}
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(meta["files"])  # nothing else left behind


@pytest.mark.parametrize("name", list(RUNS))
def test_onnx_predictor_matches_foundry_predict(exported, name, tmp_path):
    run_dir, out_dir, _ = exported(name)
    csv = tmp_path / "rows.csv"
    split_rows(run_dir).drop(columns="target").to_csv(csv, index=False)
    table = predict(run_dir, csv)
    predictor = load_onnx_predictor(out_dir)
    got = predictor.predict_frame(pd.read_csv(csv))
    if predictor.task == "classification":
        expected = table[[f"prob_{label}" for label in predictor.labels]].to_numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
        assert (np.asarray(predictor.labels)[got.argmax(1)] == table["prediction"].astype(str)).all()
    else:
        std = predictor.preprocess["target"]["std"]
        np.testing.assert_allclose(got, table["prediction"], rtol=0, atol=1e-4 * std)


def test_a_failed_parity_check_publishes_nothing(exported, tmp_path, monkeypatch):
    run_dir, out_dir, _ = exported("mlp_breast_cancer")
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    from modelfoundry import export

    exportable = export._exportable

    def drifted(saved):  # a graph that no longer computes what the torch model does
        module = __import__("copy").deepcopy(exportable(saved))  # the saved model itself stays as trained
        with __import__("torch").no_grad():
            next(module.parameters()).add_(0.5)
        return module

    monkeypatch.setattr(export, "_exportable", drifted)
    with pytest.raises(ExportError, match=r"differs from the PyTorch model by up to .* tolerance 0.0001"):
        export_onnx(run_dir, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()
    with pytest.raises(ExportError):
        export_onnx(run_dir, out_dir)  # over a good export: the good one stays, byte for byte
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before
    with pytest.raises(ConfigError, match="'tolerance' parameter of export_onnx must be >= 0. Got -1"):
        export_onnx(run_dir, tmp_path / "fresh", tolerance=-1)
    assert not (tmp_path / "fresh").exists()


def test_external_weights_and_re_export_and_incomplete_exports(exported, tmp_path, monkeypatch):
    from modelfoundry import export

    run_dir, _, _ = exported("mlp_regression")
    monkeypatch.setattr(export, "EXTERNAL_DATA_BYTES", 0)  # as if the model were too large to embed
    first = export_onnx(run_dir, tmp_path / "onnx")
    assert first.files == ["model.onnx.data", "model.onnx", "preprocess.json", "export.json"]
    rows = split_rows(run_dir)
    expected = load_onnx_predictor(tmp_path / "onnx").predict_frame(rows)
    monkeypatch.undo()
    second = export_onnx(run_dir, tmp_path / "onnx")  # embedded weights: the stale .data file goes
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == sorted(second.files) == sorted(first.files[1:])
    np.testing.assert_array_equal(load_onnx_predictor(tmp_path / "onnx").predict_frame(rows), expected)
    (tmp_path / "onnx" / "export.json").unlink()
    with pytest.raises(RunDirError, match="no complete ONNX export .*export.json"):
        load_onnx_predictor(tmp_path / "onnx")


def test_falls_back_to_the_torchscript_exporter(exported, tmp_path, monkeypatch):
    import torch

    run_dir, _, _ = exported("cnn_digits")
    real_export = torch.onnx.export

    def dynamo_fails(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("simulated torch.export failure")
        return real_export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_fails)
    result = export_onnx(run_dir, tmp_path / "onnx")
    assert result.exporter == "torchscript" and result.max_abs_diff <= 1e-4
    assert json.loads((tmp_path / "onnx" / "export.json").read_text())["exporter"] == "torchscript"
    assert load_onnx_predictor(tmp_path / "onnx").session.get_inputs()[0].shape[0] == "batch"
