"""A model's raw inputs as arrays: each request (or file) checked on its own, transformed, and flagged.

`InputSchema` is compiled once from a portable preprocessing description (see portable.py). It turns the
rows of one request - JSON records, OIP column tensors or a DataFrame - into `CheckedRows`: the numeric
columns as one (N, Fn) float64 array (NaN where missing), the categorical columns as category codes, and
the model input X, exactly what `apply_portable` computes. Every problem with one request's values (text
or a list in a numeric column, an integer too large for a float, NaN or an infinite value, a value beyond
float32 once scaled, an unseen category under `on_unseen="reject"`) is a DataError naming the column, so
a bad request fails alone, before it can share a batch with others.

`warnings` then flags, for a whole batch at once, every value the model did not see in training:

    {"column": c, "kind": "unseen_category", "value": "Atlantis"}     # encoded as no known category
    {"column": c, "kind": "imputed", "value": 43.9}                    # missing; the fill the model used
    {"column": c, "kind": "out_of_range", "value": 912.0, "range": [lo, hi]}   # outside the training split

Images of one pixel per column are read like numeric columns; images held as arrays in one column go through
`apply_portable` on a DataFrame of the request. Images get no warnings.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from modelfoundry.artifacts.inputs import Inputs, concat, take
from modelfoundry.data.portable import input_spec, text_encoder
from modelfoundry.data.text import valid_text
from modelfoundry.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

UNSEEN, MISSING = -1, -2  # category codes besides 0..K-1
FLOAT32_MAX = float(np.finfo(np.float32).max)
WARNING_KINDS = ("unseen_category", "imputed", "out_of_range")


@dataclass
class CheckedRows:
    """One request's rows, checked: raw numeric values, category codes and texts, and the model inputs."""

    numeric: np.ndarray  # (N, Fn) float64, NaN where missing
    codes: np.ndarray  # (N, Fc) int64: category index, UNSEEN or MISSING
    texts: np.ndarray  # (N, Fc) object: the categorical values as text (None where missing)
    inputs: Inputs  # what the model takes: {"numeric": (N, F)} or {"image": (N, C, H, W)}, float32

    def __len__(self) -> int:
        return len(self.numeric)

    def __getitem__(self, rows: Any) -> CheckedRows:
        return CheckedRows(self.numeric[rows], self.codes[rows], self.texts[rows], take(self.inputs, rows))

    @staticmethod
    def join(parts: Sequence[CheckedRows]) -> CheckedRows:
        if len(parts) == 1:
            return parts[0]
        return CheckedRows(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("numeric", "codes", "texts")),
                           concat([p.inputs for p in parts]))


class InputSchema:
    """The raw columns a model reads and how each is checked, compiled from its portable description."""

    def __init__(self, desc: dict[str, Any], on_unseen: str = "warn"):
        self.desc = desc
        self.on_unseen = on_unseen
        self.columns: list[str] = list(desc["columns"])
        self.series = desc["kind"] == "time_series"  # each instance: {column: [the last values, oldest first]}
        if self.series:
            self.kinds = {c: "numeric" for c in self.columns[1:]}
            self.image = self.frame_only = False
            self.input_spec = input_spec(desc)
            return
        self.image = desc["kind"] == "image"
        features = [] if self.image else desc["features"]
        self.numeric = [f for f in features if f["kind"] == "numeric" and f["width"] == 1]
        self.categorical = [f for f in features if f["kind"] == "categorical"]
        self.kinds = {f["column"]: f["kind"] for f in features} if not self.image else \
            {c: "numeric" for c in self.columns}
        self.text_columns: list[str] = list(desc["text"]["columns"]) if "text" in desc else []
        self.text = text_encoder(desc) if self.text_columns else None  # the tokenizer, built once
        if self.text is not None:
            self.text.tokenizer_  # noqa: B018 - built now: a damaged one fails when the model loads, not per request
        self.kinds.update({c: "text" for c in self.text_columns})
        self.tabular = not self.image and bool(features)  # a "numeric" input (text-only data has none)
        self._compile_numeric()
        self._compile_categorical()
        if self.image and len(desc["image"]["columns"]) > 1:  # one pixel per column: read like numeric columns
            self.num_columns = list(desc["image"]["columns"])
            self.num_get = _getter(self.num_columns)
        self.frame_only = self.image and len(desc["image"]["columns"]) == 1  # arrays in one column: a DataFrame
        self.frame_only = self.frame_only or "image" in desc and not self.image  # an image beside other columns
        self.others = set(self.columns) != set(self.num_columns)  # columns that itemgetter does not check
        self.width = int(np.prod(desc["input_shape"]))
        self.input_spec = input_spec(desc)
        self.input_name = self.input_spec[0].name  # the one named input a tabular or image description gives

    # ------------------------------------------------------------------------------------------ compile
    def _compile_numeric(self) -> None:
        num = self.numeric
        self.num_columns = [f["column"] for f in num]
        self.num_get = _getter(self.num_columns)
        self.fill = np.array([f["fill"] for f in num], dtype=np.float64)
        self.lower = np.array([f["clip"][0] if f["clip"] else -np.inf for f in num], dtype=np.float64)
        self.upper = np.array([f["clip"][1] if f["clip"] else np.inf for f in num], dtype=np.float64)
        # every scaling as (x - sub) / div * mul + add: the same float64 operations as apply_portable
        scale = [f["scale"] for f in num]
        self.sub = np.array([s["mean"] if s["method"] == "standard" else 0.0 for s in scale])
        self.div = np.array([s["scale"] if s["method"] == "standard" else 1.0 for s in scale])
        self.mul = np.array([s["scale"] if s["method"] == "minmax" else 1.0 for s in scale])
        self.add = np.array([s["min"] if s["method"] == "minmax" else 0.0 for s in scale])
        ranges = [f.get("range") or [np.nan, np.nan] for f in num]
        self.range_min = np.array([r[0] for r in ranges], dtype=np.float64)
        self.range_max = np.array([r[1] for r in ranges], dtype=np.float64)
        self.num_drop = np.array([f["missing"] == "drop" for f in num], dtype=bool)
        positions, offset = {}, 0
        for f in ([] if self.image else self.desc["features"]):
            positions[f["name"]] = offset
            offset += f["width"]
        self.num_pos = np.array([positions[f["name"]] for f in num], dtype=np.int64)
        self._positions = positions

    def _compile_categorical(self) -> None:
        cat = self.categorical
        self.cat_columns = [f["column"] for f in cat]
        self.lookups = [{**{c: i for i, c in enumerate(f["categories"])}, None: MISSING} for f in cat]
        self.fill_codes = np.array([lk.get(f["fill"], UNSEEN) if f["fill"] is not None else UNSEEN
                                    for f, lk in zip(cat, self.lookups)], dtype=np.int64)
        self.cat_drop = np.array([f["missing"] == "drop" for f in cat], dtype=bool)
        self.onehot = np.array([f["encode"] == "onehot" for f in cat], dtype=bool)
        self.cat_pos = np.array([self._positions[f["name"]] for f in cat], dtype=np.int64)

    # ---------------------------------------------------------------------------------------- requests
    def from_records(self, records: list[dict[str, Any]], origin: str = "the request") -> CheckedRows:
        """JSON records ({column: value}) -> CheckedRows; a column absent from every record is an error,
        absent from some records it is missing there; other keys are ignored."""
        if self.series:
            return self._series(records, origin)
        if self.frame_only:
            import pandas as pd

            return self.from_frame(pd.DataFrame.from_records(records), origin)
        try:
            table = [self.num_get(r) for r in records]
        except KeyError:
            table = None
        if table is None or self.others:  # some numeric column absent from a record, or other columns to check
            self._require(lambda c: any(c in r for r in records), origin)
        if table is None:
            table = [tuple(r.get(c) for c in self.num_columns) for r in records]
        numeric = self._numeric(table, len(records), origin)
        if self.image:
            return self._image(numeric, origin)
        texts = [[r.get(c) for r in records] for c in self.cat_columns]
        free_text = [[r.get(c) for r in records] for c in self.text_columns]
        return self._finish(numeric, texts, len(records), origin, free_text)

    def from_columns(self, columns: dict[str, list[Any]], n: int, origin: str = "the request") -> CheckedRows:
        """One list of n values per column (OIP v2 inputs) -> CheckedRows."""
        if self.series:
            raise DataError(f"{origin}: a time series model takes each instance's history as lists of numbers, "
                            "which OIP v2 columns of one value per row cannot hold.",
                            'POST /predict {"records": [{"<target>": [v1, ..., vn], ...}]} instead.')
        if self.frame_only:
            import pandas as pd

            return self.from_frame(pd.DataFrame(columns), origin)
        self._require(lambda c: c in columns, origin)
        table = list(zip(*(columns[c] for c in self.num_columns))) if self.num_columns else [()] * n
        numeric = self._numeric(table, n, origin)
        if self.image:
            return self._image(numeric, origin)
        return self._finish(numeric, [columns[c] for c in self.cat_columns], n, origin,
                            [columns[c] for c in self.text_columns])

    def from_frame(self, frame: pd.DataFrame, origin: str = "the input") -> CheckedRows:
        """A DataFrame (a data file) -> CheckedRows; X is `apply_portable`'s, errors are the files' errors."""
        from modelfoundry.data.clean import to_numeric

        from modelfoundry.data.portable import apply_portable

        inputs = apply_portable(self.desc, frame, origin)  # checks columns, text, infinite and too-large values
        n = len(frame)
        if self.image:
            return CheckedRows(np.empty((n, 0)), np.empty((n, 0), np.int64), np.empty((n, 0), object), inputs)
        numeric = np.empty((n, len(self.num_columns)))
        for j, column in enumerate(self.num_columns):
            numeric[:, j] = to_numeric(frame[column], column, origin).to_numpy(dtype=np.float64)
        codes = np.empty((n, len(self.cat_columns)), dtype=np.int64)
        texts = np.empty((n, len(self.cat_columns)), dtype=object)
        for j, column in enumerate(self.cat_columns):
            missing = frame[column].isna().to_numpy()
            values = frame[column].astype(str).to_numpy(dtype=object, copy=True)
            values[missing] = None
            texts[:, j] = values
            codes[:, j] = [self.lookups[j].get(v, UNSEEN) for v in values]
        return CheckedRows(numeric, codes, texts, inputs)

    # -------------------------------------------------------------------------------------- internals
    def _series(self, records: list[dict[str, Any]], origin: str) -> CheckedRows:
        """Time series instances -> their windows (data/timeseries.py `request_inputs`); no per-value warnings."""
        from modelfoundry.data.timeseries import request_inputs

        windows = [request_inputs(self.desc, r, f"{origin} (record {i})" if len(records) > 1 else origin)
                   for i, r in enumerate(records)]
        n = len(records)
        return CheckedRows(np.empty((n, 0)), np.empty((n, 0), np.int64), np.empty((n, 0), object),
                           {"series": np.stack(windows)})

    def _require(self, present: Callable[[str], bool], origin: str) -> None:
        missing = [c for c in self.columns if not present(c)]
        if missing:
            shown = ", ".join(f"'{c}'" for c in missing[:8]) + (f" and {len(missing) - 8} more"
                                                               if len(missing) > 8 else "")
            raise DataError(f"{origin} lacks column(s) the model was trained on: {shown}.",
                            "Send the same columns as the training data (extra columns are ignored).")

    def _numeric(self, table: list[tuple], n: int, origin: str) -> np.ndarray:
        """Rows of numeric values -> (N, Fn) float64 with NaN for missing (null); anything else is an error."""
        shape = (n, len(self.num_columns))
        try:
            x = np.array(table, dtype=np.float64).reshape(shape) if n else np.empty(shape)
            if x.shape != shape:
                raise ValueError("nested values")
        except (TypeError, ValueError, OverflowError):
            _raise_bad_numeric(table, self.num_columns, origin)
        bad = ~np.isfinite(x)
        if bad.any():  # null -> missing; NaN/Infinity literals, "nan"/"inf" text and 1e400 are errors
            for i, j in zip(*np.nonzero(bad)):
                if table[i][j] is not None:
                    raise DataError(_not_finite(self.num_columns[j], table[i][j], int(i), origin),
                                    "Send finite numbers; send null for a missing value.")
        return x

    def _image(self, pixels: np.ndarray, origin: str) -> CheckedRows:
        """(N, C*H*W) pixels -> CheckedRows, as apply_portable scales and shapes them."""
        image, n = self.desc["image"], len(pixels)
        missing = np.isnan(pixels)
        if missing.any():
            i, j = (int(k[0]) for k in np.nonzero(missing))
            raise DataError(f"Image feature '{image['name']}' of {origin} has missing pixel values (column "
                            f"'{self.num_columns[j]}', row {i}).", "Send every pixel of every image.")
        X = ((pixels - image["offset"]) / image["divisor"]).reshape(n, *self.desc["input_shape"]).astype(np.float32)
        if not np.isfinite(X).all():
            raise DataError(f"Image feature '{image['name']}' of {origin} has pixel values too large for the model "
                            "(beyond float32 after scaling).", "Send pixel values in the range the model was "
                            "trained on.")
        return CheckedRows(np.empty((n, 0)), np.empty((n, 0), np.int64), np.empty((n, 0), object), {self.input_name: X})

    def _finish(self, numeric: np.ndarray, cat_values: list[Sequence[Any]], n: int, origin: str,
                text_values: list[Sequence[Any]] = ()) -> CheckedRows:
        codes = np.empty((n, len(self.cat_columns)), dtype=np.int64)
        texts = np.empty((n, len(self.cat_columns)), dtype=object)
        for j, (column, values) in enumerate(zip(self.cat_columns, cat_values)):
            texts[:, j] = [v if v is None or type(v) is str else _category_text(v, column, i, origin)
                           for i, v in enumerate(values)]
            codes[:, j] = [self.lookups[j].get(t, UNSEEN) for t in texts[:, j]]
        self._check_missing(numeric, codes, origin)
        if self.on_unseen == "reject" and (codes == UNSEEN).any():
            i, j = (int(k[0]) for k in np.nonzero(codes == UNSEEN))
            feature = self.categorical[j]
            raise DataError(f"Column '{feature['column']}' of {origin} has the value {_describe(texts[i, j])} "
                            f"(row {i}), a category the model never saw in training; this server rejects unseen "
                            "categories.",
                            "Send one of: " + ", ".join(map(str, feature["categories"][:20]))
                            + (" ..." if len(feature["categories"]) > 20 else "") + ".")
        inputs = {"numeric": self._transform(numeric, codes, origin)} if self.tabular else {}
        if self.text_columns:
            inputs.update(self._tokens(text_values, n, origin))
        return CheckedRows(numeric, codes, texts, inputs)

    def _tokens(self, text_values: list[Sequence[Any]], n: int, origin: str) -> dict[str, np.ndarray]:
        """The text columns' values (a string or null each) -> tokens and attention_mask."""
        columns = []
        for column, values in zip(self.text_columns, text_values):
            texts = []
            for i, value in enumerate(values):
                if value is not None and type(value) is not str:
                    raise DataError(f"Column '{column}' of {origin} holds {_describe(value)} (row {i}); it is a text "
                                    "column.", "Send a string (or null for no text).")
                texts.append(valid_text(value) if value else "")
            columns.append(texts)
        return self.text.encode(self.text.join(columns) if columns else [""] * n)

    def _check_missing(self, numeric: np.ndarray, codes: np.ndarray, origin: str) -> None:
        missing = np.concatenate([np.isnan(numeric) & self.num_drop, (codes == MISSING) & self.cat_drop], axis=1)
        if missing.any():
            j = int(np.flatnonzero(missing.any(axis=0))[0])
            column = (self.num_columns + self.cat_columns)[j]
            rows = ", ".join(str(i) for i in np.flatnonzero(missing[:, j])[:5])
            raise DataError(f"Column '{column}' of {origin} has missing values (rows {rows}), and the model "
                            "was trained with missing: drop for it, so it cannot fill them.",
                            "Fill those values before predicting, or retrain with missing: median.")

    def _transform(self, numeric: np.ndarray, codes: np.ndarray, origin: str) -> np.ndarray:
        """Fill, clip, scale and encode: the float32 model input (N, F), as apply_portable computes it."""
        n = len(numeric)
        x = np.where(np.isnan(numeric), self.fill, numeric)
        x = (np.clip(x, self.lower, self.upper) - self.sub) / self.div * self.mul + self.add
        too_large = np.abs(x) > FLOAT32_MAX
        if too_large.any():
            j = int(np.flatnonzero(too_large.any(axis=0))[0])
            feature = self.numeric[j]
            rows = ", ".join(str(i) for i in np.flatnonzero(too_large[:, j])[:5])
            span = f" ({feature['range'][0]:g} to {feature['range'][1]:g})" if feature.get("range") else ""
            raise DataError(f"Column '{feature['column']}' of {origin} has {int(too_large[:, j].sum())} value(s) "
                            f"too large for the model (beyond float32 once scaled; rows {rows}).",
                            f"Send values in the range the model was trained on{span}.")
        out = np.zeros((n, self.width), dtype=np.float32)
        out[:, self.num_pos] = x
        if self.categorical:
            codes = np.where(codes == MISSING, self.fill_codes, codes)
            ordinal = ~self.onehot
            out[:, self.cat_pos[ordinal]] = codes[:, ordinal]
            hot = codes[:, self.onehot]
            rows, cols = np.nonzero(hot >= 0)
            out[rows, self.cat_pos[self.onehot][cols] + hot[rows, cols]] = 1.0
        return out

    # --------------------------------------------------------------------------------------- warnings
    def warnings(self, rows: CheckedRows) -> tuple[list[list[dict[str, Any]]] | None, dict[tuple[str, str], int]]:
        """Per-row warnings for a whole batch (None when there are none) and counts per (column, kind).

        Vectorised: three masks over the batch; Python only touches the flagged values."""
        if self.image or self.series or not len(rows):
            return None, {}
        x, codes = rows.numeric, rows.codes
        with np.errstate(invalid="ignore"):
            outside = (x < self.range_min) | (x > self.range_max)
        masks = [("unseen_category", codes == UNSEEN, self.cat_columns),
                 ("imputed", np.concatenate([np.isnan(x), codes == MISSING], axis=1),
                  self.num_columns + self.cat_columns),
                 ("out_of_range", outside, self.num_columns)]
        if not any(mask.any() for _, mask, _ in masks):
            return None, {}
        per_row: list[list[dict[str, Any]]] = [[] for _ in range(len(rows))]
        counts: dict[tuple[str, str], int] = {}
        for kind, mask, columns in masks:
            for i, j in zip(*np.nonzero(mask)):
                per_row[i].append(self._warning(kind, columns[j], int(j), rows, int(i)))
            for j in np.flatnonzero(mask.any(axis=0)):
                counts[(columns[j], kind)] = int(mask[:, j].sum())
        return per_row, counts

    def _warning(self, kind: str, column: str, j: int, rows: CheckedRows, i: int) -> dict[str, Any]:
        if kind == "unseen_category":
            text = rows.texts[i, j]  # echoed back: a long value is cut
            return {"column": column, "kind": kind, "value": text if len(text) <= 100 else text[:97] + "..."}
        if kind == "out_of_range":
            return {"column": column, "kind": kind, "value": float(rows.numeric[i, j]),
                    "range": [float(self.range_min[j]), float(self.range_max[j])]}
        if j < len(self.num_columns):
            return {"column": column, "kind": kind, "value": float(self.fill[j])}
        return {"column": column, "kind": kind, "value": self.categorical[j - len(self.num_columns)]["fill"]}


def _getter(columns: list[str]) -> Callable[[dict[str, Any]], tuple]:
    """record -> tuple of its values for `columns` (KeyError when one is absent)."""
    if len(columns) == 1:
        column = columns[0]
        return lambda record: (record[column],)
    if not columns:
        return lambda record: ()
    return operator.itemgetter(*columns)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _raise_bad_numeric(table: list[tuple], columns: list[str], origin: str) -> None:
    """The first value numpy could not read as a float, as a DataError naming its column and row."""
    for i, row in enumerate(table):
        for column, value in zip(columns, row):
            if value is None or isinstance(value, (bool, float)):
                continue
            if isinstance(value, int):
                try:
                    float(value)
                    continue
                except OverflowError:
                    raise DataError(f"Column '{column}' of {origin} has an integer too large for a number "
                                    f"({len(str(abs(value)))} digits; row {i}).",
                                    "Send values in the range the model was trained on.") from None
            if isinstance(value, str):
                try:
                    float(value)
                    continue
                except ValueError:
                    raise DataError(f"Column '{column}' of {origin} should be numeric but holds text (row {i}: "
                                    f"{_describe(value)}).", "Send numbers (or null for a missing value) in "
                                    "numeric columns.") from None
            raise DataError(f"Column '{column}' of {origin} should be a number but holds a "
                            f"{type(value).__name__} (row {i}: {_describe(value)}).",
                            "Send one number (or null) per column and row.")
    raise DataError(f"The numeric columns of {origin} could not be read as numbers.",
                    "Send one number (or null) per column and row.")


def _not_finite(column: str, value: Any, row: int, origin: str) -> str:
    if isinstance(value, float) and value != value:
        return f"Column '{column}' of {origin} has NaN (row {row}); numeric values must be finite."
    if isinstance(value, str) and math.isnan(float(value)):  # "nan" is text, as in files; "inf" is infinite
        return f"Column '{column}' of {origin} should be numeric but holds text (row {row}: {_describe(value)})."
    return f"Column '{column}' of {origin} has an infinite value (row {row}); numeric values must be finite."


def _category_text(value: Any, column: str, row: int, origin: str) -> str:
    """A categorical value as text, as pandas' astype(str) writes it (3 -> '3', 3.0 -> '3.0', True -> 'True')."""
    if isinstance(value, (bool, int)):
        return str(value)
    if isinstance(value, float):
        if np.isfinite(value):
            return str(value)
        raise DataError(f"Column '{column}' of {origin} has {value!r} (row {row}), which is not a category.",
                        "Send a category as text; send null for a missing value.")
    raise DataError(f"Column '{column}' of {origin} should hold one category but holds a {type(value).__name__} "
                    f"(row {row}: {_describe(value)}).", "Send a category as text; send null for a missing value.")
