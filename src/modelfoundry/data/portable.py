"""A portable, pickle-free description of fitted preprocessing, and a numpy implementation of it.

`describe_preprocessor` turns a fitted `Preprocessor` (and optionally its `TargetEncoder`) into plain
JSON; `apply_portable` applies that JSON to raw rows with numpy and pandas only, giving exactly what
`Preprocessor.transform` gives. An ONNX export ships it as `preprocess.json` next to `model.onnx`, so a
server - in any language - can turn raw columns into the model's input without unpickling anything.
The server itself checks and converts each request without a DataFrame, with `InputSchema`
(data/input_schema.py), which gives exactly this module's model input and flags values outside training.

The format (version `format: 2`; format 1, without "range", is read too)::

    {
      "format": 2,
      "kind": "tabular" | "image",
      "columns": [...],            # raw input columns read, in order (extra columns are ignored)
      "feature_names": [...],      # the model's input features, in order (tabular: one per input value)
      "input_shape": [F] | [C, H, W],   # per row; the model input is (batch, *input_shape), float32
      "inputs": [{"name": "numeric" | "image", "dtype": "float32", "shape": input_shape}],
                                   # the model's named inputs (data/inputs.py); absent before issue 10, when
                                   # the one input is "image" for [C, H, W] and "numeric" otherwise
      "features": [...],           # tabular only: one entry per raw column, in output order (below);
                                   # empty when the only columns are text
      "text": {...},               # text columns, when there are any (below)
      "image": {...},              # image only (below)
      "target": {...}              # present when a target encoder was given (below)
    }

Each tabular feature entry, applied to its column; all arithmetic in float64, cast to float32 at the end:

    {"name", "column", "kind": "numeric",
     "missing": "mean|median|most_frequent|constant|drop",   # "drop": a missing value is an error
     "fill": float,                                          # replaces missing values (NaN)
     "clip": [lower, upper] | null,                          # then np.clip(x, lower, upper)
     "scale": {"method": "standard", "mean": m, "scale": s}  # then (x - m) / s
            | {"method": "minmax", "min": m, "scale": s}     #   or x * s + m
            | {"method": "none"},
     "range": [min, max] | null, # the training split's values before any treatment (not applied: it tells a
                                 # server which values lie outside what the model saw)
     "width": 1}                 # 0 (and "fill": null) for a column that had no value when fitted
    {"name", "column", "kind": "categorical", "missing", "fill": "<category>",
     "encode": "onehot" | "ordinal",
     "categories": ["<category>", ...],  # onehot: one output per category, all 0 for an unseen value;
                                         # ordinal: the index of the value, -1 when unseen
     "width": len(categories) | 1}

Numeric columns are parsed as numbers (text that is not a number is an error; empty cells are missing;
infinite values are an error, and so is a value that is too large for float32 after scaling).
Categorical values are compared as text: each value becomes `str(value)` (so 3 -> "3", 3.0 -> "3.0")
with missing cells filled first.

The image entry: `{"name", "array_column": name | null, "columns": [...], "shape": [C, H, W],
"offset": o, "divisor": d}`. Pixels come from one column whose cells hold arrays (`array_column`; the
rule is: a single column whose first cell is an array), or else from `columns` in order, one pixel each;
each row becomes `((pixels - o) / d).reshape(C, H, W)`; missing pixels are an error.

The text entry (data/text.py): `{"columns": [...], "length": T, "truncation": "right" | "left", "pad_id",
"separator", "vocab_size", "pretrained": bool, "tokenizer": "<the tokenizers library's JSON>"}`: each row's
text columns (missing cells empty) are joined with `" <separator> "`, encoded with the tokenizer, cut to T
tokens at the `truncation` end and padded on the right with `pad_id` to T; the inputs are `tokens` (the ids)
and `attention_mask` (1 for a token, 0 for padding), both int64 (N, T). With `"windows": {"count": W,
"stride": s, "pool": "mean" | "max"}` a long text is not cut but split into windows of T tokens, neighbours
sharing s tokens (the tokenizer's overflow, special tokens in each), the first W kept (with truncation left,
the last W, from the end); the inputs are then (N, W, T), unused windows all padding.

A time series (data.time_series, data/timeseries.py) has `"kind": "time_series"`, `"columns": [time, target,
*features]`, one input `series` float32 (window, 1 + len(features)) and the entry `"time_series": {"time",
"target", "features": [...], "window": W, "horizon": H, "step", "mean": [...], "std": [...] (the target's, then
each feature's, over the training period), "time_kind": "number" | "datetime", "season": s, "season_from":
"config" | "autocorrelation" | ...}`. Its raw input is a history: rows sorted by `time` (repeated or missing
times and missing values are errors), each column standardised `(x - mean) / std`, and one window of the W
steps before each origin from W to n (the last forecasts beyond the history); a server instance holds a list
of at least W numbers per column, of which the last W are read. The model gives H standardised values per
window (target entry below: `value = output * std + mean` for each of them).

The target entry: `{"task": "classification", "column", "classes": [...]}` - output k of the model is
the probability of `classes[k]` - or `{"task": "regression", "column", "mean": m, "std": s}`: the model
predicts standardised values, `value = output * s + m`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from modelfoundry.data.clean import to_numeric
from modelfoundry.artifacts.inputs import Inputs, InputSpec
from modelfoundry.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from modelfoundry.data.text import TextEncoder
    from modelfoundry.data.transform import Preprocessor, TargetEncoder

PORTABLE_FORMAT = 2
READABLE_FORMATS = (1, 2)


class PortablePreprocessor:
    """Fitted preprocessing as its portable description: what a run directory stores and every stage applies.

    It has the interface of a fitted `Preprocessor` that inference needs (`transform`, `columns`,
    `feature_names_`, `input_shape_`), computed by `apply_portable` - so training, evaluation, predict,
    export and serving all turn raw rows into model inputs with the same code, and loading it executes
    nothing. `fitted` is the scikit-learn `Preprocessor` it was described from (in memory only, after fitting).
    """

    def __init__(self, desc: dict[str, Any], fitted: Preprocessor | None = None):
        if desc.get("format") not in READABLE_FORMATS:
            raise DataError(f"The preprocessing description has format {desc.get('format')!r}; this version of "
                            f"modelfoundry reads formats {', '.join(map(str, READABLE_FORMATS))}.",
                            "Use the modelfoundry version that made the model, or retrain it.")
        self.desc = {k: v for k, v in desc.items() if k != "target"}
        self.fitted = fitted

    @property
    def columns(self) -> list[str]:
        return list(self.desc["columns"])

    @property
    def feature_names_(self) -> list[str]:
        return list(self.desc["feature_names"])

    @property
    def input_shape_(self) -> tuple[int, ...]:
        return tuple(self.desc["input_shape"])

    @property
    def input_spec_(self) -> InputSpec:
        return input_spec(self.desc)

    def transform(self, frame: pd.DataFrame, origin: str = "the input", text: bool = True) -> Inputs:
        """Raw rows -> the model's named inputs ("numeric" (N, F) or "image" (N, C, H, W) float32, and
        "tokens" + "attention_mask" (N, T) int64 for text unless `text` is False)."""
        return apply_portable(self.desc, frame, origin, text)


def input_spec(desc: dict[str, Any]) -> InputSpec:
    """The named inputs a portable description produces (derived from its shape when it predates them)."""
    if "inputs" in desc:
        return InputSpec.from_json(desc["inputs"], "the preprocessing description")
    return InputSpec.single("image" if desc.get("kind") == "image" else "numeric", desc["input_shape"])


def describe_preprocessor(pre: Preprocessor | PortablePreprocessor, target_encoder: TargetEncoder | None = None,
                          target_column: str | None = None) -> dict[str, Any]:
    """The JSON-serialisable description of a fitted `Preprocessor` (see the module docstring)."""
    if isinstance(pre, PortablePreprocessor):
        desc = dict(pre.desc)
        if target_encoder is not None:
            desc["target"] = describe_target(target_encoder, target_column)
        return desc
    if not hasattr(pre, "input_shape_"):
        raise RuntimeError("This Preprocessor is not fitted yet; call fit() first.")
    desc: dict[str, Any] = {"format": PORTABLE_FORMAT, "columns": list(pre.columns),
                            "feature_names": list(pre.feature_names_), "input_shape": list(pre.input_shape_),
                            "inputs": _input_spec(pre).to_json()}
    image = next((spec for spec in pre.specs if spec.kind == "image"), None)
    if image is not None:
        desc["image"] = {"name": image.name, "array_column": _array_column(image),
                         "columns": list(image.columns), "shape": list(image.shape),
                         "offset": float(pre.offset_), "divisor": float(pre.divisor_)}
    if image is not None and len(pre.specs) == 1:
        desc["kind"] = "image"
    else:  # a table, possibly with text and one image beside its columns
        desc["kind"] = "tabular"
        tabular = [spec for spec in pre.specs if spec.kind in ("numeric", "categorical")]
        desc["features"] = [_describe_column(spec, *pre.fitted_step(spec), pre.ranges_.get(spec.name))
                            for spec in tabular]
        if getattr(pre, "text_", None) is not None:
            desc["text"] = pre.text_.describe()
        width = sum(f["width"] for f in desc["features"])
        if width != len(pre.feature_names_):
            raise DataError(f"The fitted preprocessing gives {len(pre.feature_names_)} features but its columns "
                            f"describe {width}; a column without any value in the training split was dropped.",
                            "Set type: ignore for empty columns in data.features and retrain.")
    if target_encoder is not None:
        desc["target"] = describe_target(target_encoder, target_column)
    return desc


def _input_spec(pre: Preprocessor) -> InputSpec:
    """A fitted Preprocessor's inputs; one unpickled from modelfoundry 0.1 (by `foundry migrate`) predates them."""
    if hasattr(pre, "input_spec_"):
        return pre.input_spec_
    return InputSpec.single("image" if pre.specs[0].kind == "image" else "numeric", pre.input_shape_)


def describe_target(encoder: TargetEncoder, column: str | None = None) -> dict[str, Any]:
    """Classes (as JSON values) for classification; the standardisation mean/std for regression."""
    if encoder.task == "classification":
        return {"task": "classification", "column": column, "classes": [_json_value(c) for c in encoder.classes_]}
    return {"task": "regression", "column": column, "mean": float(encoder.mean_), "std": float(encoder.std_)}


def apply_portable(desc: dict[str, Any], frame: pd.DataFrame, origin: str = "the input", text: bool = True) -> Inputs:
    """Raw rows -> the model's named inputs, exactly as `Preprocessor.transform` computes them (the text
    inputs left out with `text=False`); a time series' history gives one window per origin instead of a row each."""
    if desc["kind"] == "time_series":
        from modelfoundry.data.timeseries import history_inputs

        return history_inputs(desc, frame, origin).inputs
    if desc["kind"] == "image":
        return {input_spec(desc)[0].name: portable_array(desc, frame, origin)}
    out: Inputs = {}
    if "image" in desc:  # an image beside the table's columns: its own input, first
        _check_columns(desc["columns"], frame, origin)
        out["image"] = image_array(desc, frame, origin)
    if desc["features"]:
        out["numeric"] = portable_array(desc, frame, origin)
    if "text" in desc and text:
        _check_columns(desc["columns"], frame, origin)
        out.update(text_encoder(desc).transform(frame, origin))
    return out


_TEXT_ENCODERS: dict[int, tuple[dict[str, Any], Any]] = {}


def text_encoder(desc: dict[str, Any]) -> TextEncoder:
    """The TextEncoder of a description's `text` entry, built once per description (building a pretrained
    tokenizer from its JSON takes tens of milliseconds)."""
    from modelfoundry.data.text import TextEncoder

    entry = desc["text"]
    cached = _TEXT_ENCODERS.get(id(entry))
    if cached is None or cached[0] is not entry:
        if len(_TEXT_ENCODERS) > 16:
            _TEXT_ENCODERS.clear()
        cached = _TEXT_ENCODERS[id(entry)] = (entry, TextEncoder.from_description(entry))  # keeps `entry` alive
    return cached[1]


def share_text_encoder(desc: dict[str, Any], encoder: TextEncoder) -> None:
    """Let `text_encoder(desc)` answer `encoder` (one built from an equal description), not build another."""
    _TEXT_ENCODERS[id(desc["text"])] = (desc["text"], encoder)


def portable_array(desc: dict[str, Any], frame: pd.DataFrame, origin: str = "the input") -> np.ndarray:
    """Raw rows -> the one float32 array of an image, or of the tabular columns (N, F)."""
    if desc.get("format") not in READABLE_FORMATS:
        raise DataError(f"The preprocessing description has format {desc.get('format')!r}; this version of "
                        f"modelfoundry reads formats {', '.join(map(str, READABLE_FORMATS))}.",
                        "Export the model again.")
    _check_columns(desc["columns"], frame, origin)
    if desc["kind"] == "image":
        return image_array(desc, frame, origin)
    block = _numeric_block(desc["features"], frame, origin)
    parts = [block[feature["column"]] if feature["column"] in block
             else _apply_column(feature, frame[feature["column"]], origin) for feature in desc["features"]]
    out = (np.hstack(parts) if parts else np.empty((len(frame), 0))).astype(np.float32)
    if not np.isfinite(out).all():
        _raise_too_large(desc["features"], parts, frame, origin)
    return out


def image_array(desc: dict[str, Any], frame: pd.DataFrame, origin: str = "the input") -> np.ndarray:
    """Raw rows -> the (N, C, H, W) float32 image input of a description's `image` entry."""
    image = desc["image"]
    pixels = (_pixels(image, frame, origin) - image["offset"]) / image["divisor"]
    out = pixels.reshape(len(frame), *image["shape"]).astype(np.float32)
    if not np.isfinite(out).all():
        raise DataError(f"Image feature '{image['name']}' of {origin} has pixel values too large for the model "
                        "(beyond float32 after scaling).", "Send pixel values in the range the model was "
                        "trained on.")
    return out


def _raise_too_large(features: list[dict[str, Any]], parts: list[np.ndarray], frame: pd.DataFrame,
                     origin: str) -> None:
    """The numeric column whose values overflow float32 once filled, clipped and scaled, as a DataError."""
    for feature, part in zip(features, parts):
        bad = ~np.isfinite(part.astype(np.float32)).all(axis=1)
        if bad.any():
            rows = ", ".join(str(i) for i in frame.index[bad][:5])
            raise DataError(f"Column '{feature['column']}' of {origin} has {int(bad.sum())} value(s) too large for "
                            f"the model (beyond float32 once scaled; rows {rows}).",
                            "Send values in the range the model was trained on"
                            + (f" ({feature['range'][0]:g} to {feature['range'][1]:g})." if feature.get("range")
                               else "."))


def _numeric_block(features: list[dict[str, Any]], frame: pd.DataFrame, origin: str) -> dict[str, np.ndarray]:
    """Fast path: every numeric column that already holds numbers, filled, clipped and scaled as one
    (N, F) array operation (the per-column path costs ~100 us a column). Columns that need text parsing
    or checks for `missing: drop` are left to `_apply_column`, which also raises the precise errors."""
    import pandas as pd

    chosen = [f for f in features if f["kind"] == "numeric" and f["width"] == 1 and f["missing"] != "drop"
              and pd.api.types.is_numeric_dtype(frame[f["column"]]) and not pd.api.types.is_bool_dtype(
                  frame[f["column"]])]
    if not chosen:
        return {}
    x = frame[[f["column"] for f in chosen]].to_numpy(dtype=np.float64, copy=True)  # (N, F)
    infinite = np.isinf(x)
    if infinite.any():
        from modelfoundry.data.clean import raise_infinite

        j = int(np.flatnonzero(infinite.any(axis=0))[0])
        raise_infinite(chosen[j]["column"], frame.index[infinite[:, j]], origin)
    fill = np.array([f["fill"] for f in chosen], dtype=np.float64)
    x = np.where(np.isnan(x), fill, x)
    lower = np.array([f["clip"][0] if f["clip"] is not None else -np.inf for f in chosen])
    upper = np.array([f["clip"][1] if f["clip"] is not None else np.inf for f in chosen])
    x = np.clip(x, lower, upper)
    for j, f in enumerate(chosen):  # per-column scaling constants, applied the same way as _apply_column
        scale = f["scale"]
        if scale["method"] == "standard":
            x[:, j] = (x[:, j] - scale["mean"]) / scale["scale"]
        elif scale["method"] == "minmax":
            x[:, j] = x[:, j] * scale["scale"] + scale["min"]
    return {f["column"]: x[:, j:j + 1] for j, f in enumerate(chosen)}


# ---------------------------------------------------------------------------------------------- describe
def _describe_column(spec: Any, pipeline: Any, j: int, value_range: list[float] | None) -> dict[str, Any]:
    """One feature entry: the parameters of column `j` of the (possibly many-column) fitted `pipeline`."""
    steps = pipeline.named_steps
    fill = steps["impute"].statistics_[j]
    entry: dict[str, Any] = {"name": spec.name, "column": spec.columns[0], "kind": spec.kind,
                             "missing": spec.missing}
    if spec.kind == "numeric":
        if math.isnan(fill):  # no value in the training split: scikit-learn's imputer drops the column
            return {**entry, "fill": None, "clip": None, "scale": {"method": "none"}, "range": None, "width": 0}
        clipper = steps.get("clip")
        entry["fill"] = float(fill)
        entry["clip"] = [float(clipper.lower_[j]), float(clipper.upper_[j])] if clipper is not None else None
        entry["scale"] = _describe_scaler(steps["scale"], j)
        entry["range"] = value_range
        entry["width"] = 1
        return entry
    encoder = steps["encode"]
    entry["fill"] = _json_value(fill)
    entry["encode"] = spec.encode
    entry["categories"] = [_json_value(c) for c in encoder.categories_[j]]
    entry["width"] = len(entry["categories"]) if spec.encode == "onehot" else 1
    return entry


def _describe_scaler(scaler: Any, j: int) -> dict[str, Any]:
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    if isinstance(scaler, StandardScaler):
        return {"method": "standard", "mean": float(scaler.mean_[j]), "scale": float(scaler.scale_[j])}
    if isinstance(scaler, MinMaxScaler):
        return {"method": "minmax", "min": float(scaler.min_[j]), "scale": float(scaler.scale_[j])}
    return {"method": "none"}  # 'passthrough'


def _array_column(spec: Any) -> str | None:
    """The column holding whole arrays, when the image came from one (an image of many pixels in one column)."""
    return spec.columns[0] if len(spec.columns) == 1 and int(np.prod(spec.shape)) > 1 else None


def _json_value(value: Any) -> Any:
    """numpy scalars -> Python scalars, so labels and categories survive json.dumps unchanged."""
    return value.item() if isinstance(value, np.generic) else value


# ------------------------------------------------------------------------------------------------- apply
def _apply_column(feature: dict[str, Any], series: pd.Series, origin: str) -> np.ndarray:
    column = feature["column"]
    missing = series.isna().to_numpy()
    if feature["missing"] == "drop" and missing.any():
        rows = ", ".join(str(i) for i in series.index[missing][:5])
        raise DataError(f"Column '{column}' of {origin} has missing values (rows {rows}), and the model "
                        "was trained with missing: drop for it, so it cannot fill them.",
                        "Fill those values before predicting, or retrain with missing: median.")
    if feature["kind"] == "numeric":
        if feature["width"] == 0:
            return np.empty((len(series), 0))
        x = to_numeric(series, column, origin).to_numpy(dtype=np.float64, copy=True)
        x[np.isnan(x)] = feature["fill"]
        if feature["clip"] is not None:
            x = np.clip(x, *feature["clip"])
        scale = feature["scale"]
        if scale["method"] == "standard":
            x = (x - scale["mean"]) / scale["scale"]
        elif scale["method"] == "minmax":
            x = x * scale["scale"] + scale["min"]
        return x.reshape(-1, 1)
    texts = series.astype(str).astype(object).to_numpy()
    index = {category: i for i, category in enumerate(feature["categories"])}
    fill = index.get(feature["fill"], -1)
    codes = np.array([fill if m else index.get(v, -1) for v, m in zip(texts, missing)], dtype=np.int64)
    if feature["encode"] == "ordinal":
        return codes.astype(np.float64).reshape(-1, 1)
    onehot = np.zeros((len(codes), len(index)))  # (N, K); unseen categories stay all zero
    known = codes >= 0
    onehot[np.flatnonzero(known), codes[known]] = 1.0
    return onehot


def _pixels(image: dict[str, Any], frame: pd.DataFrame, origin: str) -> np.ndarray:
    from modelfoundry.data.transform import assemble_pixels  # the same rule as Preprocessor, by construction

    return assemble_pixels(frame, image["columns"], image["shape"], image["name"], origin)

def _check_columns(columns: list[str], frame: pd.DataFrame, origin: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        shown = ", ".join(f"'{c}'" for c in missing[:8]) + (f" and {len(missing) - 8} more"
                                                           if len(missing) > 8 else "")
        raise DataError(f"{origin} lacks column(s) the model was trained on: {shown}.",
                        "Send the same columns as the training data (extra columns are ignored).")
