"""The reference profile: what the training data looked like, saved beside the model (model/reference.json).

Built once at training from the raw train and validation splits, read through `InputSchema.from_frame` and
`column_values` (so the reference and served batches go through the same code). Per monitored column:

- numeric: the non-missing values' quantile sketch (the sorted values themselves up to 1,000 of them, else
  1,000 evenly spaced quantiles, each an observed value), PSI bins (edges at the reference's deciles, plus
  a bin below its minimum and one above its maximum, with the reference's counts), mean, standard deviation
  and the share missing;
- categorical: each category's count ("<missing>" and "<unseen>" included; for "<col>:tokens" the 500 most
  frequent tokens and "<other>").

Plus the prediction distribution on the validation split (class counts, or the regression values' sketch),
the validation metrics, and the out-of-distribution scorer (ood.py) fitted on the training rows and
calibrated on the validation rows. JSON only, compact (digits: about 60 KB).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelfoundry.monitor.columns import (
    PREDICTION,
    column_values,
    monitored_columns,
    prediction_values,
)
from modelfoundry.monitor.ood import MahalanobisScorer, ood_space

if TYPE_CHECKING:
    import pandas as pd

    from modelfoundry.config.monitor import MonitorConfig

FORMAT = 1
SKETCH = 1000  # quantile levels kept per numeric column
DECILES = np.linspace(0.1, 0.9, 9)
TOP_TOKENS = 500  # token ids profiled one by one; the rest count as OTHER
OTHER = "<other>"


@dataclass
class ColumnProfile:
    """One column of the reference (see the module docstring)."""

    name: str
    kind: str  # "numeric" or "categorical"
    n: int  # values profiled, missing ones included
    missing: float  # the share of them missing
    quantiles: np.ndarray | None = None  # numeric: sorted sketch of the non-missing values (<= SKETCH)
    edges: np.ndarray | None = None  # numeric: PSI bin edges, -inf and +inf at the ends; bin i is (e_i, e_i+1]
    counts: np.ndarray | None = None  # numeric: reference count per PSI bin; categorical: per category
    mean: float = 0.0
    std: float = 0.0
    categories: list[str] = field(default_factory=list)  # categorical

    def sample(self) -> np.ndarray:
        """A pseudo-sample for plots: the numeric sketch, or each category repeated by its count (at most 1,000
        values in all, in proportion)."""
        if self.kind == "numeric":
            return self.quantiles if self.quantiles is not None else np.empty(0)
        total = max(int(self.counts.sum()), 1)
        repeats = np.round(self.counts * min(1.0, SKETCH / total)).astype(int)
        return np.repeat(np.asarray(self.categories, dtype=object), repeats)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "kind": self.kind, "n": self.n, "missing": self.missing}
        if self.kind == "numeric":
            values, repeats = _run_lengths(self.quantiles)
            data.update(quantiles={"values": values, "repeats": repeats}, edges=self.edges[1:-1].tolist(),
                        counts=self.counts.tolist(), mean=self.mean, std=self.std)
        else:
            data.update(categories=list(self.categories), counts=self.counts.tolist())
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ColumnProfile:
        profile = cls(str(data["name"]), str(data["kind"]), int(data["n"]), float(data["missing"]))
        profile.counts = np.asarray(data["counts"], dtype=np.int64)
        if profile.kind == "numeric":
            sketch = data["quantiles"]
            profile.quantiles = np.repeat(np.asarray(sketch["values"], dtype=np.float64),
                                          np.asarray(sketch["repeats"], dtype=np.int64))
            profile.edges = np.concatenate([[-np.inf], np.asarray(data["edges"], dtype=np.float64), [np.inf]])
            profile.mean, profile.std = float(data["mean"]), float(data["std"])
        else:
            profile.categories = [str(c) for c in data["categories"]]
        return profile


@dataclass
class Reference:
    """Everything the monitor compares served data with (see the module docstring)."""

    task: str
    labels: list[Any] | None
    rows: int  # rows profiled (train + validation)
    columns: dict[str, ColumnProfile]  # the input columns, by MonitoredColumn.name
    prediction: ColumnProfile | None  # predictions on the validation split (PREDICTION)
    metrics: dict[str, float]  # validation metrics of the saved model
    ood: MahalanobisScorer | None
    embedding: Any = None  # a text model's EmbeddingProfile (embedding.py), else None

    def profile(self, name: str) -> ColumnProfile | None:
        """The reference of a monitored column, the prediction or the embedding score (None: not profiled)."""
        from modelfoundry.monitor.columns import PREDICTION
        from modelfoundry.monitor.embedding import EMBEDDING

        if name == PREDICTION:
            return self.prediction
        if name == EMBEDDING:
            return self.embedding.scores if self.embedding is not None else None
        return self.columns.get(name)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "task": self.task, "labels": self.labels, "rows": self.rows,
                "columns": [c.to_json() for c in self.columns.values()],
                "prediction": self.prediction.to_json() if self.prediction is not None else None,
                "metrics": self.metrics, "ood": self.ood.to_json() if self.ood is not None else None,
                "embedding": self.embedding.to_json() if self.embedding is not None else None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Reference:
        from modelfoundry.monitor.embedding import EmbeddingProfile

        columns = [ColumnProfile.from_json(c) for c in data["columns"]]
        return cls(str(data["task"]), data.get("labels"), int(data["rows"]), {c.name: c for c in columns},
                   ColumnProfile.from_json(data["prediction"]) if data.get("prediction") else None,
                   {str(k): float(v) for k, v in (data.get("metrics") or {}).items()},
                   MahalanobisScorer.from_json(data["ood"]) if data.get("ood") else None,
                   EmbeddingProfile.from_json(data["embedding"]) if data.get("embedding") else None)


def build_reference(desc: dict[str, Any], task: str, labels: list[Any] | None, train: pd.DataFrame,
                    val: pd.DataFrame, val_outputs: np.ndarray, metrics: dict[str, float],
                    config: MonitorConfig, threshold: dict[str, Any] | None = None) -> Reference:
    """The reference profile of a model trained on `train` and validated on `val` (raw frames, as
    `PreparedData.frames` holds them).

    Args:
        desc: the model's portable preprocessing description.
        task: "classification" or "regression".
        labels: the class labels in output order (None for regression).
        train, val: the raw training and validation rows (target column allowed).
        val_outputs: the model's outputs on `val` as the server gives them: (N, K) class probabilities in the
            order of `labels`, or (N,) values in the target's units.
        metrics: the validation metrics.
        config: the `monitor:` section (its `ood` part decides whether a scorer is fitted).
    """
    from modelfoundry.data.input_schema import CheckedRows, InputSchema

    schema = InputSchema(desc)
    train_rows = schema.from_frame(train, "the training split")
    val_rows = schema.from_frame(val, "the validation split") if len(val) else None
    both = CheckedRows.join([train_rows, val_rows]) if val_rows is not None else train_rows
    values = column_values(schema, both)
    columns = {c.name: profile_column(c.name, c.kind, values[c.name]) for c in monitored_columns(schema)
               if c.name in values}
    prediction = None
    if val_outputs is not None and len(val_outputs):
        kind = "categorical" if task == "classification" else "numeric"
        categories = [str(label) for label in labels] if labels is not None else None
        predicted = prediction_values(task, val_outputs, labels, threshold)  # as the server decides (model.json)
        prediction = profile_column(PREDICTION, kind, predicted, categories)
    ood = None
    train_space = ood_space(train_rows.inputs) if config.ood.enabled else None
    if train_space is not None:
        val_space = ood_space(val_rows.inputs) if val_rows is not None else None
        ood = MahalanobisScorer().fit(train_space).calibrate(
            val_space if val_space is not None else train_space, config.ood.false_alarm_rate)
    clean_metrics = {str(k): _round(float(v)) for k, v in metrics.items()
                     if isinstance(v, (int, float)) and np.isfinite(v)}
    return Reference(task, list(labels) if labels is not None else None, len(both), columns, prediction,
                     clean_metrics, ood)


def profile_column(name: str, kind: str, values: np.ndarray, categories: list[str] | None = None) -> ColumnProfile:
    """The profile of one column's reference values (`categories`: categorical ones to list even if absent)."""
    if kind == "numeric":
        return _numeric_profile(name, np.asarray(values, dtype=np.float64))
    values = np.asarray(values, dtype=object)
    found, counts = np.unique(values.astype(str), return_counts=True) if len(values) else ([], [])
    table = dict.fromkeys(categories or [], 0)
    table.update(zip((str(c) for c in found), (int(c) for c in counts)))
    if name.endswith(":tokens") and len(table) > TOP_TOKENS:
        ranked = sorted(table.items(), key=lambda item: -item[1])
        table = dict(ranked[:TOP_TOKENS])
        table[OTHER] = sum(count for _, count in ranked[TOP_TOKENS:])
    missing = table.get("<missing>", 0) / max(len(values), 1)
    return ColumnProfile(name, "categorical", len(values), missing, categories=list(table),
                         counts=np.asarray(list(table.values()), dtype=np.int64))


def bin_counts(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Counts of finite `values` per bin (e_i, e_i+1] of `edges` (which start at -inf and end at +inf)."""
    values = values[np.isfinite(values)]
    index = np.searchsorted(edges[1:-1], values, side="left")  # the number of interior edges below the value
    return np.bincount(index, minlength=len(edges) - 1).astype(np.int64)


def save_reference(run_dir: Path, reference: Reference) -> None:
    """Write `reference` to the run directory's model/reference.json (atomically, compact JSON)."""
    from modelfoundry.artifacts.rundir import RunDir
    from modelfoundry.storage import write_text

    write_text(RunDir(Path(run_dir)).reference, json.dumps(reference.to_json(), separators=(",", ":")))


def load_reference(run_dir: Path) -> Reference | None:
    """The run directory's reference profile; None when it has none (runs trained before monitoring)."""
    from modelfoundry.artifacts.rundir import RunDir
    from modelfoundry.errors import RunDirError

    path = RunDir(Path(run_dir)).reference
    if not path.exists():
        return None
    try:
        return Reference.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as exc:
        raise RunDirError(f"The reference profile {path} cannot be read ({exc}).",
                          "Retrain the model to write a new one, or delete the file to serve without monitoring "
                          "its data.") from None


def _numeric_profile(name: str, values: np.ndarray) -> ColumnProfile:
    finite = np.sort(values[np.isfinite(values)])
    n, m = len(values), len(finite)
    if m > SKETCH:
        sketch = _sorted_quantiles(finite, (np.arange(SKETCH) + 0.5) / SKETCH)
    else:
        sketch = finite
    if m:
        inner = _sorted_quantiles(finite, DECILES)
        edges = np.unique(np.concatenate([[np.nextafter(finite[0], -np.inf)], inner, [finite[-1]]]))
    else:
        edges = np.empty(0)
    edges = np.concatenate([[-np.inf], edges, [np.inf]])
    profile = ColumnProfile(name, "numeric", n, (n - m) / n if n else 0.0, quantiles=sketch, edges=edges,
                            mean=float(finite.mean()) if m else 0.0, std=float(finite.std()) if m else 0.0)
    profile.counts = bin_counts(edges, finite)
    return profile


def _sorted_quantiles(ordered: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """np.quantile(method="inverted_cdf") of an already sorted array (each an observed value), without its
    partition (64 pixel columns x 1,000 levels: 0.15 s saved)."""
    index = np.clip(np.ceil(levels * len(ordered)).astype(np.int64) - 1, 0, len(ordered) - 1)
    return ordered[index]


def _run_lengths(values: np.ndarray) -> tuple[list[float], list[int]]:
    """A sorted array as its distinct values and how often each repeats (pixel columns: ~17 pairs, not 1,000)."""
    if not len(values):
        return [], []
    starts = np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]]))
    repeats = np.diff(np.concatenate([starts, [len(values)]]))
    return values[starts].tolist(), repeats.tolist()


def _round(value: float, digits: int = 7) -> float:
    return float(f"{value:.{digits}g}")
