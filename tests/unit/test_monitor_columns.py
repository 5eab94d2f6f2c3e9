"""Monitored columns read from checked rows (numeric, categorical, pixels, text), the reference built from a
run's raw splits, and the reference that `foundry run` saves (or skips without failing the run)."""

import json
import logging

import numpy as np
import pandas as pd
import pytest

from modelfoundry.config.monitor import DriftConfig, MonitorConfig
from modelfoundry.data.input_schema import InputSchema
from modelfoundry.monitor.columns import (
    PREDICTION,
    column_values,
    monitored_columns,
    prediction_values,
    raw_frame,
)
from modelfoundry.monitor.drift import compare
from modelfoundry.monitor.profile import Reference, build_reference, load_reference
from tests.conftest import tiny_config
from tests.unit.test_export import iris_with_categories
from tests.unit.test_text_data import reviews


def prepared(data: dict):
    from modelfoundry.config import load_config
    from modelfoundry.data.prepare import prepare_data

    cfg = load_config(tiny_config(data=data))
    return prepare_data(cfg.data, cfg.seed)


@pytest.fixture(scope="module")
def iris(tmp_path_factory):
    csv = tmp_path_factory.mktemp("columns") / "iris.csv"
    iris_with_categories(csv)
    return prepared({"source": str(csv)})


def test_numeric_and_categorical_values_with_missing_and_unseen(iris):
    schema = InputSchema(iris.preprocessor.desc)
    frame = pd.DataFrame({"sepal length (cm)": [np.nan, 5.1], "sepal width (cm)": [3.0, 2.0],
                          "petal length (cm)": [1.4, 4.0], "petal width (cm)": [0.2, 1.3],
                          "colour": ["Atlantis", None], "size": ["M", "S"]})
    values = column_values(schema, schema.from_frame(frame))
    kinds = {c.name: c.kind for c in monitored_columns(schema)}
    assert kinds["colour"] == "categorical" and kinds["sepal length (cm)"] == "numeric" and set(values) == set(kinds)
    assert np.isnan(values["sepal length (cm)"][0]) and values["sepal length (cm)"][1] == 5.1
    assert values["colour"].tolist() == ["<unseen>", "<missing>"] and values["size"].tolist() == ["M", "S"]
    again = raw_frame(schema, schema.from_frame(frame))
    np.testing.assert_array_equal(schema.from_frame(again).inputs["numeric"], schema.from_frame(frame).inputs["numeric"])


def test_pixels_are_the_raw_values_and_raw_frame_rebuilds_them():
    digits = prepared({"source": "sklearn:digits",
                       "features": {"pixel_*": {"type": "image", "shape": [1, 8, 8], "scale": "minmax"}}})
    schema = InputSchema(digits.preprocessor.desc)
    frame = digits.frames["test"].iloc[:20]
    rows = schema.from_frame(frame)
    values = column_values(schema, rows)
    assert len(values) == 64 and [c.kind for c in monitored_columns(schema)] == ["numeric"] * 64
    np.testing.assert_allclose(values["pixel_3_4"], frame["pixel_3_4"].to_numpy())
    rebuilt = raw_frame(schema, rows)
    np.testing.assert_allclose(rebuilt.to_numpy(), frame[rebuilt.columns].to_numpy())
    np.testing.assert_array_equal(schema.from_frame(rebuilt).inputs["image"], rows.inputs["image"])


def test_text_columns_give_lengths_and_tokens_and_new_vocabulary_drifts(tmp_path):
    reviews(300).to_csv(tmp_path / "r.csv", index=False)
    data = prepared({"source": str(tmp_path / "r.csv"), "text": {"max_length": 32}})
    desc = data.preprocessor.desc
    names = [c.name for c in monitored_columns(InputSchema(desc))]
    assert names[-2:] == ["review:length", "review:tokens"]
    labels = list(data.target_encoder.classes_)
    outputs = np.eye(len(labels))[data.y["val"]]
    reference = build_reference(desc, "classification", labels, data.frames["train"], data.frames["val"], outputs,
                                {}, MonitorConfig())
    schema = InputSchema(desc)
    same = column_values(schema, schema.from_frame(data.frames["test"]))
    assert len(same["review:tokens"]) == same["review:length"].sum()
    config = DriftConfig()
    quiet = compare(reference, same, config, len(data.frames["test"]))
    assert not {"review:length", "review:tokens"} & set(quiet.drifted)
    assert {c.column: c.test for c in quiet.columns}["review:tokens"] == "jensen_shannon"
    other = data.frames["test"].assign(review="zebra quantum")
    moved = compare(reference, column_values(schema, schema.from_frame(other)), config, len(other))
    assert {"review:length", "review:tokens"} <= set(moved.drifted)


def test_a_reference_from_the_splits(iris):
    labels = list(iris.target_encoder.classes_)
    outputs = np.eye(len(labels))[iris.y["val"]]
    config = MonitorConfig()
    reference = build_reference(iris.preprocessor.desc, "classification", labels, iris.frames["train"],
                                iris.frames["val"], outputs, {"accuracy": 1.0, "nan": float("nan")}, config)
    assert reference.rows == len(iris.frames["train"]) + len(iris.frames["val"])
    assert reference.columns["colour"].missing > 0 and reference.columns["sepal length (cm)"].missing > 0
    assert reference.prediction.categories == [str(label) for label in labels]
    assert reference.prediction.counts.sum() == len(iris.frames["val"])
    assert reference.metrics == {"accuracy": 1.0}  # NaN metrics are left out (JSON has no NaN)
    X = iris.X["val"]["numeric"]
    assert 0 < reference.ood.flag(X).mean() <= 0.1
    text = json.dumps(reference.to_json(), allow_nan=False)
    assert Reference.from_json(json.loads(text)).columns.keys() == reference.columns.keys()
    assert prediction_values("classification", outputs[:2], labels).tolist() == [str(labels[i])
                                                                                 for i in iris.y["val"][:2]]
    assert build_reference(iris.preprocessor.desc, "classification", labels, iris.frames["train"],
                           iris.frames["val"], outputs, {}, MonitorConfig(ood={"enabled": False})).ood is None


def test_training_saves_a_reference(tmp_path):
    from modelfoundry.api.training import run

    result = run(tiny_config(training={"epochs": 1}), run_dir=tmp_path / "with")
    reference = load_reference(result.run_dir)
    assert reference is not None and reference.task == "classification" and "accuracy" in reference.metrics
    assert reference.prediction is not None and reference.ood is not None
    served = {name: profile.quantiles for name, profile in reference.columns.items()}
    served[PREDICTION] = reference.prediction.sample()
    assert not compare(reference, served, DriftConfig(), 100).drifted


def test_a_failure_to_build_a_reference_never_fails_the_run(tmp_path, monkeypatch, caplog):
    from modelfoundry.api.training import run
    from modelfoundry.errors import DataError

    def broken(*args, **kwargs):
        raise DataError("this data cannot be profiled")

    monkeypatch.setattr("modelfoundry.monitor.profile.build_reference", broken)
    with caplog.at_level(logging.WARNING):
        result = run(tiny_config(training={"epochs": 1}), run_dir=tmp_path / "without")
    assert load_reference(result.run_dir) is None and result.metrics
    assert "cannot be profiled" in caplog.text


def test_a_regression_run_profiles_its_predictions_in_the_target_units(tmp_path):
    from modelfoundry.api.training import run

    config = tiny_config(data={"source": "sklearn:diabetes", "target": "target"}, training={"epochs": 1})
    reference = load_reference(run(config, run_dir=tmp_path / "diabetes").run_dir)
    prediction = reference.prediction
    assert reference.task == "regression" and reference.labels is None and prediction.kind == "numeric"
    assert prediction.n == len(prediction.quantiles) > 0 and "rmse" in reference.metrics
    assert 20 < prediction.mean < 350  # diabetes progression units (25 to 346), not standardised values near 0
    assert {c.test for c in compare(reference, {PREDICTION: prediction.quantiles + 100.0}, DriftConfig(), 60).columns
            if c.drifted} == {"ks"}
