"""InputSchema: requests checked on their own, the same model input as apply_portable, vectorised warnings."""

import math

import numpy as np
import pandas as pd
import pytest

from modelfoundry.data.input_schema import InputSchema
from modelfoundry.data.portable import apply_portable
from modelfoundry.errors import DataError
from tests.unit.test_export import iris_with_categories

FEATURES = {"size": {"encode": "ordinal"}, "petal width (cm)": {"scale": "minmax"},
            "sepal width (cm)": {"missing": "constant", "fill_value": 0, "scale": "none"}}


@pytest.fixture(scope="module")
def desc(tmp_path_factory):
    from modelfoundry.config import load_config
    from modelfoundry.data.prepare import prepare_data
    from tests.conftest import tiny_config

    csv = tmp_path_factory.mktemp("schema") / "iris.csv"
    iris_with_categories(csv)
    data = {"source": str(csv), "features": FEATURES, "clean": {"outliers": {"method": "iqr"}}}
    cfg = load_config(tiny_config(data=data))
    return prepare_data(cfg.data, cfg.seed).preprocessor.desc


def records_of(frame):
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in frame.to_dict(orient="records")]


def test_records_give_exactly_the_model_input_of_apply_portable(desc):
    frame = pd.DataFrame({"sepal length (cm)": [np.nan, 5.1, 4.4, 7.0, 30.0],
                          "sepal width (cm)": [np.nan, 3.0, 99.0, 2.5, -4.0],
                          "petal length (cm)": [1.4, 4.0, 6.1, 2.2, 1.0], "petal width (cm)": [0.2, 1.3, 2.5, 9.0, 0.1],
                          "colour": ["purple", None, "red", "green", "blue"], "size": ["XL", "M", None, "S", "L"],
                          "extra": [1, 2, 3, 4, 5]})
    schema = InputSchema(desc)
    expected = apply_portable(desc, frame)["numeric"]
    np.testing.assert_array_equal(schema.from_records(records_of(frame)).inputs["numeric"], expected)
    columns = {c: records_of(frame[[c]]) for c in frame.columns}
    np.testing.assert_array_equal(
        schema.from_columns({c: [r[c] for r in v] for c, v in columns.items()}, 5).inputs["numeric"], expected)
    np.testing.assert_array_equal(schema.from_frame(frame).inputs["numeric"], expected)


def test_warnings_flag_unseen_imputed_and_out_of_range_values(desc):
    schema = InputSchema(desc)
    records = records_of(pd.DataFrame({"sepal length (cm)": [np.nan, 5.1], "sepal width (cm)": [3.0, 3.0],
                                       "petal length (cm)": [1.4, 400.0], "petal width (cm)": [0.2, 1.3],
                                       "colour": ["Atlantis", "red"], "size": ["M", "S"]}))
    per_row, counts = schema.warnings(schema.from_records(records))
    assert {(w["column"], w["kind"]) for w in per_row[0]} == {("colour", "unseen_category"),
                                                               ("sepal length (cm)", "imputed")}
    assert next(w for w in per_row[0] if w["kind"] == "unseen_category")["value"] == "Atlantis"
    [far] = per_row[1]
    assert far["kind"] == "out_of_range" and far["value"] == 400.0 and far["range"][1] < 10
    assert counts == {("colour", "unseen_category"): 1, ("sepal length (cm)", "imputed"): 1,
                      ("petal length (cm)", "out_of_range"): 1}
    clean = records_of(pd.DataFrame({"sepal length (cm)": [5.0], "sepal width (cm)": [3.0], "petal length (cm)": [1.4],
                                     "petal width (cm)": [0.2], "colour": ["red"], "size": ["M"]}))
    assert schema.warnings(schema.from_records(clean)) == (None, {})
    frame = pd.DataFrame(records).replace({None: np.nan})
    assert schema.warnings(schema.from_frame(frame))[1] == counts  # files are flagged the same way


GOOD = {"sepal length (cm)": 5.0, "sepal width (cm)": 3.0, "petal length (cm)": 1.4, "petal width (cm)": 0.2,
        "colour": "red", "size": "M"}


@pytest.mark.parametrize("column,value,fragment", [
    ("petal length (cm)", 10 ** 400, "too large"),
    ("petal length (cm)", float("nan"), "NaN"),
    ("petal length (cm)", float("inf"), "infinite"),
    ("petal length (cm)", float("-inf"), "infinite"),
    ("petal length (cm)", "inf", "infinite"),
    ("petal length (cm)", "nan", "text"),
    ("petal length (cm)", "abc", "text"),
    ("petal length (cm)", [1.0], "list"),
    ("petal length (cm)", {"a": 1}, "dict"),
    ("colour", float("inf"), "not a category"),
    ("colour", ["red"], "list"),
])
def test_a_bad_value_is_a_data_error_naming_its_column(desc, column, value, fragment):
    with pytest.raises(DataError) as err:
        InputSchema(desc).from_records([GOOD, GOOD | {column: value}])
    assert f"'{column}'" in err.value.message and fragment in err.value.message and err.value.hint


@pytest.mark.parametrize("column", ["sepal width (cm)", "petal width (cm)", "petal length (cm)"])
def test_values_beyond_float32_once_scaled_are_errors_and_clipped_ones_warnings(desc, column):
    """1e308 is clipped to the training bounds (a warning); without clipping it overflows float32 (scale: none,
    minmax and standard scaling alike): an error naming the column."""
    per_row, _ = InputSchema(desc).warnings(InputSchema(desc).from_records([GOOD | {column: 1e308}]))
    assert per_row[0] == [{"column": column, "kind": "out_of_range", "value": 1e308, "range": per_row[0][0]["range"]}]
    unclipped = {**desc, "features": [{**f, "clip": None} for f in desc["features"]]}
    with pytest.raises(DataError) as err:
        InputSchema(unclipped).from_records([GOOD | {column: 1e308}])
    assert f"'{column}'" in err.value.message and "too large" in err.value.message
    with pytest.raises(DataError, match="too large"):
        apply_portable(unclipped, pd.DataFrame([GOOD | {column: 1e308}]))  # the rule files follow too


def test_missing_columns_nulls_and_on_unseen_reject(desc):
    schema = InputSchema(desc)
    with pytest.raises(DataError, match="lacks column"):
        schema.from_records([{k: v for k, v in GOOD.items() if k != "colour"}])
    partly = schema.from_records([GOOD, {k: v for k, v in GOOD.items() if k != "sepal length (cm)"}])
    assert np.isnan(partly.numeric[1]).sum() == 1  # absent from one record: missing there
    assert len(schema.from_records([{k: None for k in GOOD}])) == 1  # null everywhere: imputed
    with pytest.raises(DataError) as err:
        InputSchema(desc, on_unseen="reject").from_records([GOOD | {"colour": "Atlantis"}])
    assert "'colour'" in err.value.message and "'Atlantis'" in err.value.message


def test_images_of_one_pixel_per_column_are_read_like_numeric_columns():
    from modelfoundry.config import load_config
    from modelfoundry.data.prepare import prepare_data
    from modelfoundry.data.sources import load_source
    from tests.conftest import tiny_config

    cfg = load_config(tiny_config(data={"source": "sklearn:digits", "features": {"pixel_*": {"type": "image"}}},
                                  model={"name": "cnn", "channels": [4]}))
    desc = prepare_data(cfg.data, cfg.seed).preprocessor.desc
    frame = load_source("sklearn:digits").drop(columns="target").head(5)
    schema = InputSchema(desc)
    checked = schema.from_records(frame.to_dict(orient="records"))
    assert list(checked.inputs) == ["image"] == schema.input_spec.names
    np.testing.assert_array_equal(checked.inputs["image"], apply_portable(desc, frame)["image"])
    assert schema.warnings(schema.from_records(frame.to_dict(orient="records"))) == (None, {})
    for value, fragment in ((10 ** 400, "too large"), (None, "missing pixel"), (float("nan"), "NaN")):
        with pytest.raises(DataError) as err:
            schema.from_records([frame.iloc[0].to_dict() | {"pixel_2_3": value}])
        assert "pixel_2_3" in err.value.message and fragment in err.value.message
