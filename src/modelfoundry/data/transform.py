"""Fitted preprocessing, learnt on the training split only and saved with the model.

`Preprocessor` turns raw columns into the model's named inputs (data/inputs.py); `TargetEncoder` turns targets into class
indices (or standardised values) and back. Both follow the scikit-learn estimator contract.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from modelfoundry.data.clean import FeatureSpec, OutlierClipper, raise_infinite, to_numeric
from modelfoundry.data.text import TextEncoder
from modelfoundry.artifacts.inputs import InputField, Inputs, InputSpec
from modelfoundry.errors import DataError

if TYPE_CHECKING:
    import pandas as pd


class Preprocessor:
    """Impute, clip outliers, scale and encode tabular columns and tokenize text columns, or assemble and scale
    an image.

    `text` holds the TextEncoder settings for text columns (`max_length`, `tokenizer`, ..., and `pretrained`:
    a pretrained model's tokenizer JSON); None means the defaults. `text_encoder` is an already fitted
    TextEncoder to use instead of fitting one (a cached one).
    """

    def __init__(self, specs: list[FeatureSpec], outlier_method: str = "none", outlier_factor: float = 3.0,
                 text: dict[str, Any] | None = None, text_encoder: TextEncoder | None = None):
        self.specs = specs
        self.outlier_method = outlier_method
        self.outlier_factor = outlier_factor
        self.text = text
        self.text_encoder = text_encoder

    @property
    def columns(self) -> list[str]:
        """The raw input columns the preprocessor reads, in order."""
        return [c for spec in self.specs for c in spec.columns]

    @property
    def tabular_specs(self) -> list[FeatureSpec]:
        return [s for s in self.specs if s.kind in ("numeric", "categorical")]

    def fit(self, frame: pd.DataFrame) -> Preprocessor:
        self.text_ = None
        fields: list[InputField] = []
        image = self._image_spec()
        if image is not None:
            pixels = self._pixels(frame, image, "the training data")
            if image.scale == "minmax":
                self.offset_, self.divisor_ = float(pixels.min()), float(np.ptp(pixels)) or 1.0
            elif image.scale == "standard":
                self.offset_, self.divisor_ = float(pixels.mean()), float(pixels.std()) or 1.0
            else:
                self.offset_, self.divisor_ = 0.0, 1.0
            fields.append(InputField("image", "float32", tuple(image.shape)))
            if len(self.specs) == 1:  # an image alone
                self.input_shape_ = tuple(image.shape)
                self.feature_names_ = [image.name]
                self.input_spec_ = InputSpec(fields)
                return self
        texts = [s.name for s in self.specs if s.kind == "text"]
        if texts:
            self.text_ = self.text_encoder or TextEncoder(texts, **(self.text or {})).fit(frame)
        if self.tabular_specs:
            fields += self._fit_tabular(frame)
        else:
            self.feature_names_, self.ranges_ = [], {}
        self.input_spec_ = InputSpec(fields + (self.text_.input_fields() if self.text_ else []))
        self.input_shape_ = self.input_spec_[0].shape  # the first input's (the only one of tables and images)
        return self

    def _fit_tabular(self, frame: pd.DataFrame) -> list[InputField]:
        from sklearn.compose import ColumnTransformer

        # one scikit-learn pipeline per treatment, over all the columns that share it: a wide table of 2,000
        # numeric columns is one imputer + one scaler, not 2,000 pipelines
        self.groups_ = self._groups()
        self.step_names_ = [f"group{i}" for i in range(len(self.groups_))]
        self.column_transformer_ = ColumnTransformer(
            [(name, self._pipeline(specs[0]), [s.columns[0] for s in specs])
             for name, specs in zip(self.step_names_, self.groups_)], sparse_threshold=0.0,
            verbose_feature_names_out=False)
        table = self._tabular(frame, "the training data")
        self.column_transformer_.fit(table)
        self.ranges_ = _ranges(table, [spec for spec in self.specs if spec.kind == "numeric"])
        grouped_names = [str(n) for n in self.column_transformer_.get_feature_names_out()]
        self.order_ = self._spec_order(len(grouped_names))
        self.feature_names_ = [grouped_names[i] for i in self.order_]
        return [InputField("numeric", "float32", (len(self.feature_names_),))]

    def fitted_step(self, spec: FeatureSpec) -> tuple[Any, int]:
        """(the fitted pipeline that treats `spec`'s column, the column's position among that pipeline's columns)."""
        if getattr(self, "_steps_by_name", None) is None:  # built once: a wide table asks 2,000 times
            fitted = self.column_transformer_.named_transformers_
            self._steps_by_name = {member.name: (fitted[name], j) for name, specs in zip(self.step_names_, self.groups_)
                                   for j, member in enumerate(specs)}
        return self._steps_by_name[spec.name]

    def transform(self, frame: pd.DataFrame, origin: str = "the input", text: bool = True) -> Inputs:
        """Raw rows -> the model inputs: {"image": (N, C, H, W)} float32, or {"numeric": (N, F)} float32 for
        tabular columns and/or {"tokens", "attention_mask": (N, T)} int64 for text columns (left out with
        `text=False`, when the caller has them already)."""
        if not hasattr(self, "input_shape_"):
            raise RuntimeError("This Preprocessor is not fitted yet; call fit() first.")
        self._check_columns(frame, origin)
        out: Inputs = {}
        image = self._image_spec()
        if image is not None:
            pixels = (self._pixels(frame, image, origin) - self.offset_) / self.divisor_
            out["image"] = pixels.reshape(len(frame), *image.shape).astype(np.float32)
        if self.tabular_specs:
            grouped = self.column_transformer_.transform(self._tabular(frame, origin))
            out["numeric"] = np.ascontiguousarray(grouped[:, self.order_], dtype=np.float32)  # in the columns' order
        if self.text_ is not None and text:
            out.update(self.text_.transform(frame, origin))
        return out

    # ---------------------------------------------------------------------------------------- internals
    def _image_spec(self) -> FeatureSpec | None:
        return next((s for s in self.specs if s.kind == "image"), None)

    def _groups(self) -> list[list[FeatureSpec]]:
        """The tabular specs grouped by identical treatment, in order of first appearance."""
        groups: dict[tuple, list[FeatureSpec]] = {}
        for spec in self.tabular_specs:
            key = (spec.kind, spec.missing, repr(spec.fill_value), spec.scale, spec.encode)
            groups.setdefault(key, []).append(spec)
        return list(groups.values())

    def _spec_order(self, width: int) -> np.ndarray:
        """Positions in the grouped output of each spec's outputs, in spec order (the features' order)."""
        start, spans = 0, {}
        for name, specs in zip(self.step_names_, self.groups_):
            step = self.column_transformer_.named_transformers_[name]
            for j, spec in enumerate(specs):
                n = _output_width(spec, step, j)
                spans[spec.name] = range(start, start + n)
                start += n
        if start != width:
            raise RuntimeError(f"The fitted preprocessing gives {width} features but its columns describe {start}.")
        return np.array([k for spec in self.tabular_specs for k in spans[spec.name]], dtype=np.int64)

    def _pipeline(self, spec: FeatureSpec) -> Any:
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, OrdinalEncoder, StandardScaler

        strategy = "median" if spec.missing == "drop" else spec.missing  # 'drop' rows never reach here
        # keep_empty_features: a column with no value in the training split stays (filled with 0) instead of
        # vanishing and shifting every later feature
        steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy=strategy, fill_value=spec.fill_value,
                                                                 keep_empty_features=True))]
        if spec.kind == "numeric":
            if self.outlier_method != "none":
                steps.append(("clip", OutlierClipper(self.outlier_method, self.outlier_factor)))
            scaler = {"standard": StandardScaler(), "minmax": MinMaxScaler(), "none": "passthrough"}[spec.scale]
            steps.append(("scale", scaler))
        elif spec.encode == "onehot":
            steps.append(("encode", OneHotEncoder(handle_unknown="ignore", sparse_output=False)))
        else:
            steps.append(("encode", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)))
        return Pipeline(steps)

    def _tabular(self, frame: pd.DataFrame, origin: str) -> pd.DataFrame:
        import pandas as pd

        out = {}
        numbers = [s.columns[0] for s in self.tabular_specs if s.kind == "numeric" and s.missing != "drop"]
        block = frame[numbers] if numbers else None
        if block is not None and all(pd.api.types.is_float_dtype(t) for t in block.dtypes):
            # a wide float table in one array operation (the per-column path costs ~0.2 ms a column)
            infinite = np.isinf(block.to_numpy())
            if infinite.any():
                j = int(np.flatnonzero(infinite.any(axis=0))[0])
                raise_infinite(numbers[j], block.index[infinite[:, j]], origin)
            out = dict(block.items())
        for spec in self.tabular_specs:
            column = spec.columns[0]
            if column in out:
                continue
            series = frame[column]
            if spec.missing == "drop" and series.isna().any():
                rows = ", ".join(str(i) for i in series.index[series.isna()][:5])
                raise DataError(f"Column '{column}' of {origin} has missing values (rows {rows}), and the model "
                                "was trained with missing: drop for it, so it cannot fill them.",
                                "Fill those values before predicting, or retrain with missing: median.")
            if spec.kind == "numeric":
                out[column] = to_numeric(series, column, origin)
            else:  # strings with NaN for missing, so encoders see one consistent type
                text = series.astype(str).astype(object)
                text[series.isna()] = np.nan
                out[column] = text
        return pd.DataFrame(out, index=frame.index)

    def _pixels(self, frame: pd.DataFrame, spec: FeatureSpec, origin: str) -> np.ndarray:
        return assemble_pixels(frame, spec.columns, spec.shape, spec.name, origin)

    def _check_columns(self, frame: pd.DataFrame, origin: str) -> None:
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            shown = ", ".join(f"'{c}'" for c in missing[:8]) + (f" and {len(missing) - 8} more"
                                                               if len(missing) > 8 else "")
            raise DataError(f"{origin} lacks column(s) the model was trained on: {shown}.",
                            "Send the same columns as the training data (extra columns are ignored).")


def _output_width(spec: FeatureSpec, pipeline: Any, j: int) -> int:
    if spec.kind == "categorical" and spec.encode == "onehot":
        return len(pipeline.named_steps["encode"].categories_[j])
    return 1


def _ranges(table: pd.DataFrame, specs: list[FeatureSpec]) -> dict[str, list[float] | None]:
    """{feature: [min, max]} of numeric training columns (missing values ignored; None when a column has no
    value), in one pass over the table."""
    if not specs:
        return {}
    values = table[[s.columns[0] for s in specs]].to_numpy(dtype=np.float64)
    present = ~np.isnan(values).all(axis=0)
    with np.errstate(invalid="ignore"):
        low, high = np.nanmin(np.where(present, values, 0.0), axis=0), np.nanmax(np.where(present, values, 0.0), axis=0)
    return {s.name: [float(low[j]), float(high[j])] if present[j] else None for j, s in enumerate(specs)}


def assemble_pixels(frame: pd.DataFrame, columns: list[str], shape: Any, name: str, origin: str) -> np.ndarray:
    """(N, C*H*W) float64 pixels: from one column whose cells are arrays, else one pixel per column."""
    n_values = int(np.prod(shape))
    if len(columns) == 1 and len(frame) and isinstance(frame[columns[0]].iloc[0], (list, tuple, np.ndarray)):
        cells = frame[columns[0]]
        sizes = {np.asarray(v).size for v in cells}
        if sizes != {n_values}:
            raise DataError(f"Image column '{columns[0]}' of {origin} holds arrays of sizes {sorted(sizes)[:5]}; "
                            f"the model expects {list(shape)} ({n_values} values).",
                            "Resize the images, or set data.features.<column>.shape.")
        try:
            pixels = np.stack([np.asarray(v, dtype=np.float64).reshape(-1) for v in cells])
        except (TypeError, ValueError):
            raise DataError(f"Image column '{columns[0]}' of {origin} holds values that are not numbers.",
                            "Send each image as a nested list of numbers.") from None
        if np.isinf(pixels).any():
            raise DataError(f"Image column '{columns[0]}' of {origin} has infinite pixel values.",
                            "Pixel values must be finite numbers.")
    else:
        pixels = np.column_stack([to_numeric(frame[c], c, origin).to_numpy() for c in columns])
    if np.isnan(pixels).any():
        raise DataError(f"Image feature '{name}' of {origin} has missing pixel values.",
                        "Fill or drop those rows before training or predicting.")
    return pixels


class TargetEncoder:
    """Classification: labels <-> class indices. Regression: values <-> standardised values."""

    def __init__(self, task: str):
        self.task = task

    @classmethod
    def from_description(cls, desc: dict[str, Any]) -> TargetEncoder:
        """The fitted encoder a portable description's `target` entry holds (see data/portable.py)."""
        encoder = cls(desc["task"])
        if encoder.task == "classification":
            encoder.classes_ = list(desc["classes"])
            encoder.index_ = {label: i for i, label in enumerate(encoder.classes_)}
        else:
            encoder.mean_, encoder.std_ = float(desc["mean"]), float(desc["std"])
        return encoder

    def fit(self, y: pd.Series) -> TargetEncoder:
        if self.task == "classification":
            self.classes_ = sorted((_plain(v) for v in y.dropna().unique().tolist()), key=lambda v: (str(type(v)), v))
            self.index_ = {label: i for i, label in enumerate(self.classes_)}
        else:
            values = to_numeric(y, str(y.name), "the target").to_numpy()
            self.mean_, self.std_ = float(values.mean()), float(values.std()) or 1.0
        return self

    def encode(self, y: pd.Series, origin: str = "the data") -> np.ndarray:
        if self.task == "regression":
            values = to_numeric(y, str(y.name), origin).to_numpy()
            return ((values - self.mean_) / self.std_).astype(np.float32)
        codes = y.map(self.index_)
        if codes.isna().any():  # the same labels written another way: 0 read as '0' or 0.0 from another file
            by_text = {}
            for i, label in enumerate(self.classes_):
                by_text.setdefault(label_text(label), []).append(i)
            unique = {text: found[0] for text, found in by_text.items() if len(found) == 1}
            codes = codes.where(codes.notna(), y.map(lambda v: unique.get(label_text(v))))
        if codes.isna().any():
            unseen = sorted({str(_plain(v)) for v in y[codes.isna()]})[:5]
            raise DataError(f"Target column '{y.name}' of {origin} has label(s) {unseen} that the model never saw;"
                            f" it knows {[str(c) for c in self.classes_]}.",
                            "Evaluate on data with the training labels, or retrain with these classes.")
        return codes.to_numpy(dtype=np.int64)

    def decode(self, encoded: np.ndarray) -> np.ndarray:
        """Class indices -> labels, or standardised values -> values in the target's units."""
        if self.task == "regression":
            return np.asarray(encoded, dtype=np.float64) * self.std_ + self.mean_
        return np.asarray(self.classes_, dtype=object)[np.asarray(encoded, dtype=np.int64)]


def label_text(value: Any) -> str:
    """A class label as canonical text: 0, 0.0, '0' and np.int64(0) all read '0'; '1.50' and 1.5 read '1.5'."""
    value = _plain(value)
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return value
        value = number
    if isinstance(value, (int, float)) and np.isfinite(value):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return str(value)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
