"""Which columns the monitor watches, and their values in a batch of checked rows.

The monitored columns are the model's raw input columns, read from `CheckedRows` exactly as the server
checks them (so the reference profile, built through `InputSchema.from_frame`, and served batches go through
the same code):

- numeric columns: the raw values (NaN where missing);
- pixel columns of an image held one pixel per column (digits): one column per pixel name, the pixel value
  rebuilt from the scaled model input (`x * divisor + offset`, a monotone transform: tests are unaffected);
  an image held as arrays in one column gets no pixel columns (only its out-of-distribution score);
- categorical columns: the category as text, "<missing>" for a missing value, "<unseen>" for a value the model
  never saw in training (or one its encoder folded away);
- text columns (joined into one token sequence per row, their names joined with "+"): "<col>:length", the
  tokens per row (numeric), and "<col>:tokens", every token id as text (categorical; not row-aligned:
  a row gives as many values as it has tokens);
- time series models: no columns (a history per request has no fixed columns to compare).

The model's predictions are `PREDICTION`: the class label as text, or the value in the target's units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from modelfoundry.artifacts.records import decide_classes
from modelfoundry.data.input_schema import MISSING, UNSEEN, CheckedRows, InputSchema

if TYPE_CHECKING:
    import pandas as pd

PREDICTION = "__prediction__"
MISSING_TEXT, UNSEEN_TEXT = "<missing>", "<unseen>"


@dataclass(frozen=True)
class MonitoredColumn:
    """One monitored column: its name and statistical kind ("numeric" or "categorical")."""

    name: str  # a raw input column, "<text column>:length", "<text column>:tokens", or PREDICTION
    kind: str


def monitored_columns(schema: InputSchema) -> list[MonitoredColumn]:
    """The input columns the monitor compares with the reference (the prediction is not among them)."""
    if schema.series:
        return []
    if schema.image:
        return [MonitoredColumn(c, "numeric") for c in _pixel_columns(schema)]
    columns = [MonitoredColumn(c, "numeric") for c in schema.num_columns]
    columns += [MonitoredColumn(c, "categorical") for c in schema.cat_columns]
    if schema.text_columns:
        text = _text_name(schema)
        columns += [MonitoredColumn(f"{text}:length", "numeric"), MonitoredColumn(f"{text}:tokens", "categorical")]
    return columns


def column_values(schema: InputSchema, rows: CheckedRows) -> dict[str, np.ndarray]:
    """name -> the 1-D values of each monitored column in `rows`.

    Numeric columns are float64 with NaN where missing; categorical ones are str arrays (object) with
    "<missing>" / "<unseen>". All are row-aligned except "<col>:tokens" (one value per token)."""
    if schema.series:
        return {}
    if schema.image:
        pixels = _pixels(schema, rows)
        if pixels is None:
            return {}
        return {c: pixels[:, j] for j, c in enumerate(_pixel_columns(schema))}
    values: dict[str, np.ndarray] = {c: rows.numeric[:, j] for j, c in enumerate(schema.num_columns)}
    for j, (column, feature) in enumerate(zip(schema.cat_columns, schema.categorical)):
        values[column] = _category_texts(rows.codes[:, j], feature["categories"])
    if schema.text_columns and "attention_mask" in rows.inputs:
        text = _text_name(schema)
        mask = np.asarray(rows.inputs["attention_mask"]).reshape(len(rows), -1).astype(bool)
        values[f"{text}:length"] = mask.sum(axis=1).astype(np.float64)
        tokens = np.asarray(rows.inputs["tokens"]).reshape(len(rows), -1)[mask]
        values[f"{text}:tokens"] = tokens.astype(str).astype(object)
    return values


def prediction_values(task: str, outputs: np.ndarray, labels: list[Any] | None,
                      threshold: dict[str, Any] | None = None) -> np.ndarray:
    """The served predictions as a monitored column: the class label as text (argmax of (N, K) probabilities in
    the order of `labels`, or the decision of a binary model's tuned `threshold`, model.json's), or the (N,)
    values in the target's units as float64."""
    outputs = np.asarray(outputs)
    if task == "classification":
        names = np.asarray([str(label) for label in (labels or range(outputs.shape[1]))], dtype=object)
        if outputs.ndim != 2 or not len(outputs):
            return np.empty(0, dtype=object)
        return names[decide_classes(outputs, threshold)]
    return outputs.reshape(len(outputs), -1)[:, 0].astype(np.float64) if len(outputs) else np.empty(0)


def raw_frame(schema: InputSchema, rows: CheckedRows) -> pd.DataFrame:
    """The raw input columns of `rows` as a DataFrame again: numeric values, categories (None where missing),
    pixels unscaled, text columns only when the rows kept them (they do not: empty). Time series: empty."""
    import pandas as pd

    n = len(rows)
    if schema.series:
        return pd.DataFrame(index=range(n))
    if schema.image:
        pixels = _pixels(schema, rows)
        if pixels is None:  # arrays in one column: not rebuilt
            return pd.DataFrame(index=range(n))
        return pd.DataFrame(pixels, columns=_pixel_columns(schema))
    data: dict[str, Any] = {c: rows.numeric[:, j] for j, c in enumerate(schema.num_columns)}
    data.update({c: rows.texts[:, j] for j, c in enumerate(schema.cat_columns)})
    return pd.DataFrame(data, index=range(n))


def _pixel_columns(schema: InputSchema) -> list[str]:
    columns = schema.desc["image"]["columns"]
    return list(columns) if len(columns) > 1 else []


def _pixels(schema: InputSchema, rows: CheckedRows) -> np.ndarray | None:
    """(N, pixels) raw pixel values of a one-pixel-per-column image, None for an image held as arrays."""
    if not _pixel_columns(schema):
        return None
    image = schema.desc["image"]
    scaled = np.asarray(rows.inputs[schema.input_name], dtype=np.float64).reshape(len(rows), -1)
    return scaled * image["divisor"] + image["offset"]


def _category_texts(codes: np.ndarray, categories: list[str]) -> np.ndarray:
    names = np.asarray(list(categories) + [UNSEEN_TEXT, MISSING_TEXT], dtype=object)
    index = np.where(codes == UNSEEN, len(categories), np.where(codes == MISSING, len(categories) + 1, codes))
    return names[index]


def _text_name(schema: InputSchema) -> str:
    return "+".join(schema.text_columns)
