"""The anomaly task's data (`data.task: anomaly`): labels read as normal or anomaly, and the splits an
autoencoder trains on - the normal rows of the training split (the preprocessing is fitted on them), the normal
rows of the validation split (early stopping and the threshold), and every row of the test split (evaluation).

Without a label column (`data.target: null`, or the default `target` absent from the data) every row is taken
as normal: a constant label column, NO_LABEL, stands in for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from modelfoundry.data.transform import label_text
from modelfoundry.errors import ConfigError, DataError

if TYPE_CHECKING:
    import pandas as pd

    from modelfoundry.config import DataConfig
    from modelfoundry.data.prepare import CleanData, PreparedData

NO_LABEL = "__no_label__"  # the label column of unlabelled data: every row "normal"
DEFAULT_TARGET = "target"


class AnomalyTarget:
    """Labels -> 1.0 for an anomaly, 0.0 for a normal row; the model's outputs (scores) pass through unchanged.

    `normal`: the label values meaning normal (None: the most frequent label when fitted); `threshold_` is set
    once the model is calibrated (rows scoring above it are anomalies). `mean_`/`std_` are 0 and 1 so code that
    undoes a regression's standardisation (ONNX, the server) leaves scores as they are.
    """

    task = "anomaly"
    mean_, std_ = 0.0, 1.0

    def __init__(self, normal: list[Any] | None = None, false_alarm_rate: float = 0.01, labelled: bool = True,
                 column: str | None = None):
        self.normal, self.false_alarm_rate, self.labelled, self.column = normal, false_alarm_rate, labelled, column

    def fit(self, y: pd.Series) -> AnomalyTarget:
        """Decide the normal label(s) from `y` (the most frequent one unless given), checked to occur in `y`."""
        texts = y.dropna().map(label_text)
        if self.normal is None:
            if texts.empty:
                raise DataError(f"The label column '{y.name}' has no values.", "Check data.target.")
            self.normal_ = [str(texts.value_counts().index[0])]
        else:
            self.normal_ = sorted({label_text(v) for v in self.normal})
            if not texts.isin(self.normal_).any():
                seen = sorted(texts.unique().tolist())[:10]
                raise DataError(f"data.anomaly.normal {self.normal_} matches no value of the label column "
                                f"'{y.name}' (it holds {seen}).", "Set data.anomaly.normal to the label(s) of normal "
                                "rows, or leave it out to take the most frequent one.")
        self.column_ = self.column if self.column is not None else str(y.name)
        self.threshold_: float | None = getattr(self, "threshold_", None)
        return self

    def is_anomaly(self, y: pd.Series) -> np.ndarray:
        """(N,) bool: True where the label is not a normal one (a missing label counts as normal)."""
        return (y.notna() & ~y.map(label_text).isin(self.normal_)).to_numpy()

    def encode(self, y: pd.Series, origin: str = "the data") -> np.ndarray:
        return self.is_anomaly(y).astype(np.float32)

    def decode(self, encoded: np.ndarray) -> np.ndarray:
        """Scores as they are (float64): the model's output is the score itself."""
        return np.asarray(encoded, dtype=np.float64)

    def flag(self, scores: np.ndarray) -> np.ndarray:
        """(N,) bool: the rows whose score is above the threshold."""
        if self.threshold_ is None:
            raise RuntimeError("This AnomalyTarget has no threshold yet; calibrate the model first.")
        return np.asarray(scores, dtype=np.float64) > self.threshold_

    def describe(self, column: str | None = None) -> dict[str, Any]:
        """The JSON form kept in preprocess.json's `target` (the ONNX sidecar and the server read it)."""
        return {"task": "anomaly", "column": column if column is not None else self.column_,
                "labelled": self.labelled, "normal": list(self.normal_), "threshold": self.threshold_,
                "false_alarm_rate": self.false_alarm_rate, "mean": 0.0, "std": 1.0}

    @classmethod
    def from_description(cls, desc: dict[str, Any]) -> AnomalyTarget:
        target = cls(list(desc["normal"]), float(desc["false_alarm_rate"]), bool(desc["labelled"]), desc["column"])
        target.normal_, target.column_ = [str(v) for v in desc["normal"]], desc["column"]
        target.threshold_ = None if desc["threshold"] is None else float(desc["threshold"])
        return target


def describe_target(encoder: Any, column: str | None = None) -> dict[str, Any]:
    """preprocess.json's `target` entry for any task's target encoder."""
    if isinstance(encoder, AnomalyTarget):
        return encoder.describe(column)
    from modelfoundry.data.portable import describe_target as describe_label

    return describe_label(encoder, column)


def target_from_description(desc: dict[str, Any]) -> Any:
    """The fitted target encoder a preprocess.json `target` entry holds (AnomalyTarget for task anomaly)."""
    if desc.get("task") == "anomaly":
        return AnomalyTarget.from_description(desc)
    from modelfoundry.data.transform import TargetEncoder

    return TargetEncoder.from_description(desc)


def with_labels(raw: pd.DataFrame, cfg: DataConfig) -> tuple[pd.DataFrame, DataConfig, bool]:
    """The rows and data config to read labels from: as they are when the label column exists, else with the
    constant NO_LABEL column (every row normal); and whether the data is labelled. A label column named
    explicitly but absent is left for the data stage to report."""
    if cfg.target is not None and (cfg.target in raw.columns or cfg.target != DEFAULT_TARGET):
        return raw, cfg, True
    return raw.assign(**{NO_LABEL: "normal"}), cfg.model_copy(update={"target": NO_LABEL}), False


def anomaly_splits(cfg: DataConfig, seed: int) -> tuple[CleanData, dict[str, pd.DataFrame], DataConfig,
                                                        AnomalyTarget, dict[str, Any]]:
    """The cleaned data, its parts (normal train rows, normal val rows, all test rows), the data config with the
    label column actually read, the fitted AnomalyTarget and what info['anomaly'] records. `seed`: the split seed."""
    from modelfoundry.data.prepare import load_clean
    from modelfoundry.data.sources import load_source
    from modelfoundry.data.split import split_indices

    raw, read, labelled = with_labels(load_source(cfg.source), cfg)
    if not labelled and cfg.anomaly.normal is not None:  # labels named, but none to read them from
        raise DataError(f"data.anomaly.normal is {cfg.anomaly.normal}, but {cfg.source} has no label column "
                        f"'{DEFAULT_TARGET}' (data.target); its columns: {', '.join(map(str, raw.columns[:12]))}"
                        f"{', ...' if len(raw.columns) > 12 else ''}.", "Set data.target to the label column, or "
                        "remove data.anomaly.normal to take every row as normal.")
    clean = load_clean(read, seed, raw=raw)
    target = AnomalyTarget(cfg.anomaly.normal if labelled else None, cfg.anomaly.false_alarm_rate, labelled)
    target.fit(clean.frame[read.target])
    anomalous = target.is_anomaly(clean.frame[read.target])
    stratify = labelled and cfg.split.stratify and bool(anomalous.any())
    positions = split_indices(anomalous.astype(str), cfg.split.val, cfg.split.test, stratify, seed)
    parts = {"train": clean.frame.iloc[positions["train"][~anomalous[positions["train"]]]],
             "val": clean.frame.iloc[positions["val"][~anomalous[positions["val"]]]],
             "test": clean.frame.iloc[positions["test"]]}
    info = {"labelled": labelled, "normal": target.normal_, "false_alarm_rate": cfg.anomaly.false_alarm_rate,
            "left_out": {s: int(anomalous[positions[s]].sum()) for s in ("train", "val")},
            "test_anomalies": int(anomalous[positions["test"]].sum())}
    if len(parts["train"]) < 2:
        raise DataError(f"The training split of {cfg.source} has {len(parts['train'])} normal row(s); an autoencoder "
                        "learns from normal rows.", "Check data.anomaly.normal, or use more data.")
    return clean, parts, read, target, info


def prepare_anomaly(cfg: DataConfig, seed: int) -> PreparedData:
    """The data stage of `data.task: anomaly` (see the module docstring); `seed` is the split seed. y holds 1.0
    for anomalies (none in train and val) and 0.0 for normal rows; the autoencoder's loss ignores it."""
    from modelfoundry.data.prepare import prepare_parts

    clean, parts, read, target, info = anomaly_splits(cfg, seed)
    if any(s.kind == "text" for s in clean.specs):
        texts = [s.name for s in clean.specs if s.kind == "text"]
        raise ConfigError(f"data.task: anomaly reconstructs numeric, categorical and image columns, but {cfg.source} "
                        f"has text column(s) {texts}.", "Leave them out with data.features: {COLUMN: {type: "
                        "ignore}}.")
    data = prepare_parts(clean, parts, read, seed, info["labelled"] and cfg.split.stratify, target=target)
    data.info["anomaly"] = info
    return data
