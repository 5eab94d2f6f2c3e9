"""Typed records of a run directory: model/model.json, data.json and model/onnx/export.json.

Each names the fields the code reads; keys it does not know are kept as they are (`extra`) and written back,
so a newer writer's additions survive a round trip. A missing or mistyped field is one RunDirError naming
the file and the field. model.json carries `format_version` (2); files of the first format (`"format": 1`,
everything before issue 10) read the same, as their fields are the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from modelfoundry.artifacts.inputs import InputSpec
from modelfoundry.errors import RunDirError, first_line
from modelfoundry.storage import read_json

MODEL_FORMAT_VERSION = 3  # 2: `format_version` (was `format`: 1); 3: `inputs`, the named typed inputs
READABLE_MODEL_FORMATS = (1, 2, 3)
HINT = "Use a run directory made by `foundry run` (or restore the file from the registry)."

R = TypeVar("R", bound="_Record")


def read_object(path: Path) -> dict[str, Any]:
    """The JSON object of a run-directory file; a corrupt or truncated file is a RunDirError naming it."""
    try:
        record = read_json(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RunDirError(f"'{path}' is corrupt ({first_line(exc)}).",
                          "Restore it from a backup or the registry, or train the run again.") from None
    if not isinstance(record, dict):
        raise RunDirError(f"'{path}' does not hold a JSON object.", "Use a run directory made by `foundry run`.")
    return record


class _Record:
    """from_json/to_json for a dataclass whose fields are (name, expected JSON type or types)."""

    TYPES: dict[str, tuple[type, ...]] = {}  # field -> accepted JSON types (None allowed where listed)
    REQUIRED: tuple[str, ...] = ()

    @classmethod
    def read(cls: type[R], path: Path) -> R:
        return cls.from_json(read_object(path), path)

    @classmethod
    def from_json(cls: type[R], data: dict[str, Any], path: Path | str = "<record>") -> R:
        known = {f.name for f in fields(cls)} - {"extra"}  # type: ignore[arg-type]
        missing = [name for name in cls.REQUIRED if data.get(name) is None]
        if missing:
            listed = ", ".join(f"'{name}'" for name in missing)
            raise RunDirError(f"'{path}' is malformed: field{'s' * (len(missing) > 1)} {listed} "
                              f"{'are' if len(missing) > 1 else 'is'} missing.", HINT)
        for name, kinds in cls.TYPES.items():
            value = data.get(name)
            if value is not None and (not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds):
                expected = " or ".join(k.__name__ for k in kinds)
                raise RunDirError(f"'{path}' is malformed: field '{name}' should be {expected}, got "
                                  f"{type(value).__name__} {value!r:.60}.", HINT)
        values = {k: v for k, v in data.items() if k in known}
        record = cls(**values, extra={k: v for k, v in data.items() if k not in known})  # type: ignore[call-arg]
        record._check(path)
        return record

    def _check(self, path: Path | str) -> None:
        """Checks beyond the JSON types (a record's own invariants)."""

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}  # type: ignore[arg-type]
        return {**out, **getattr(self, "extra")}


@dataclass
class ModelRecord(_Record):
    """model/model.json: what the saved model is, enough to rebuild it and decode its outputs."""

    name: str
    task: str  # classification | regression
    n_outputs: int
    inputs: list[dict[str, Any]] | None = None  # the named typed inputs (data/inputs.py); absent before format 3
    input_shape: list[int] | None = None  # the one input's row shape, written for single-input models (and
    #                                       the only description before format 3: [F] tables, [C, H, W] images)
    target: str | None = None
    columns: list[str] = field(default_factory=list)
    classes: list[Any] | None = None  # in output order; None for regression
    best_epoch: int | None = None
    config_hash: str | None = None
    runtime: str | None = None  # "onnx": a compressed graph in model/onnx/ instead of weights.pt
    compression: dict[str, Any] | None = None  # the recipe of a compressed variant
    parent_run: str | None = None  # the run a compressed variant came from
    threshold: dict[str, Any] | None = None  # a binary classifier's tuned decision threshold (ThresholdRecord)
    format_version: int = MODEL_FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    TYPES = {"name": (str,), "task": (str,), "inputs": (list,), "input_shape": (list,), "n_outputs": (int,),
             "target": (str,),
             "columns": (list,), "classes": (list,), "best_epoch": (int,), "config_hash": (str,),
             "runtime": (str,), "compression": (dict,), "parent_run": (str,), "threshold": (dict,),
             "format_version": (int,)}
    REQUIRED = ("name", "task", "n_outputs")

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path | str = "<record>") -> ModelRecord:
        version = data.get("format_version", data.get("format", 1))
        if version not in READABLE_MODEL_FORMATS:
            raise RunDirError(f"'{path}' has model format {version!r}; this version of modelfoundry reads "
                              f"{', '.join(map(str, READABLE_MODEL_FORMATS))}.",
                              "Upgrade modelfoundry (`pip install -U modelfoundry`), or train the run again.")
        data = {k: v for k, v in data.items() if k not in ("format", "format_version")}
        return super().from_json({**data, "format_version": MODEL_FORMAT_VERSION}, path)

    def _check(self, path: Path | str) -> None:
        if self.inputs is None and self.input_shape is None:
            raise RunDirError(f"'{path}' is malformed: fields 'inputs' and 'input_shape' are both missing.", HINT)
        if self.input_shape is not None and not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                                    for d in self.input_shape):
            raise RunDirError(f"'{path}' is malformed: field 'input_shape' should be positive whole numbers, "
                              f"got {self.input_shape!r:.60}.", HINT)
        if self.inputs is not None:
            InputSpec.from_json(self.inputs, f"'{path}'")  # a malformed spec: named now, with the file
        if self.threshold is not None:
            ThresholdRecord.from_json(self.threshold, f"{path} (field 'threshold')")

    @property
    def decision(self) -> ThresholdRecord | None:
        """The tuned decision threshold of a binary classifier, None when it predicts its most probable class."""
        return ThresholdRecord.from_json(self.threshold, "model.json") if self.threshold is not None else None

    @property
    def input_spec(self) -> InputSpec:
        """The model's named inputs; a record from before format 3 has one, derived from `input_shape`."""
        if self.inputs is not None:
            return InputSpec.from_json(self.inputs, "model.json")
        return InputSpec.for_shape(self.input_shape or [])

    def spec(self) -> dict[str, Any]:
        """The record as the dict the model code reads (no format key; None fields left out as before)."""
        out = {k: v for k, v in self.to_json().items() if k != "format_version"}
        return {k: v for k, v in out.items() if v is not None or k in ("target", "classes", "best_epoch",
                                                                       "config_hash")}


@dataclass
class ThresholdRecord(_Record):
    """model.json's `threshold` (also export.json's): a binary classifier calls a row the positive class when
    P(positive) >= value, tuned on the validation split for `metric` (evaluate/threshold.py)."""

    value: float
    positive_index: int  # the positive class's index in `classes` (the output order)
    positive: Any = None  # its label
    metric: str | None = None
    validation: float | None = None  # the metric on the validation split at `value`
    extra: dict[str, Any] = field(default_factory=dict)

    TYPES = {"value": (float, int), "positive_index": (int,), "metric": (str,), "validation": (float, int)}
    REQUIRED = ("value", "positive_index")

    def _check(self, path: Path | str) -> None:
        if not 0 <= self.value <= 1 or self.positive_index not in (0, 1):
            raise RunDirError(f"'{path}' is malformed: a threshold needs 0 <= value <= 1 and positive_index 0 or 1, "
                              f"got {self.value!r} and {self.positive_index!r}.", HINT)

    def decide(self, proba: Any) -> Any:
        """Class indices (N,) of (N, 2) probabilities: the positive class where its probability reaches `value`."""
        import numpy as np

        proba = np.asarray(proba)
        if proba.ndim != 2 or proba.shape[1] != 2:
            raise RunDirError(f"A decision threshold applies to two class probabilities, got outputs of shape "
                              f"{proba.shape}.", HINT)
        hit = proba[:, self.positive_index] >= self.value
        return np.where(hit, self.positive_index, 1 - self.positive_index).astype(np.int64)


def decide_classes(proba: Any, threshold: dict[str, Any] | None) -> Any:
    """Predicted class indices (N,) of (N, K) class probabilities: the most probable class, or with a tuned
    threshold (model.json / export.json `threshold`) the binary decision it makes."""
    import numpy as np

    if threshold is None:
        return np.asarray(proba).argmax(1)
    return ThresholdRecord.from_json(threshold, "the model's threshold").decide(proba)


@dataclass
class DataRecord(_Record):
    """data.json: where the data came from (fingerprint), how it was cleaned and split."""

    fingerprint: dict[str, Any]
    cleaning: dict[str, Any] | None = None
    features: list[Any] | None = None
    split: dict[str, Any] | None = None
    input_shape: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    TYPES = {"fingerprint": (dict,), "cleaning": (dict,), "features": (list,), "split": (dict,),
             "input_shape": (list,)}
    REQUIRED = ("fingerprint",)

    def _check(self, path: Path | str) -> None:
        if not isinstance(self.fingerprint.get("sha256"), str):
            raise RunDirError(f"'{path}' is malformed: field 'fingerprint.sha256' is missing.", HINT)

    @property
    def sha256(self) -> str:
        return self.fingerprint["sha256"]


@dataclass
class ExportRecord(_Record):
    """model/onnx/export.json: what was exported, how, and the parity reached (written last)."""

    files: list[str]
    input: dict[str, Any]
    output: dict[str, Any]
    exporter: str | None = None
    opset: int | None = None
    parity: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    TYPES = {"files": (list,), "input": (dict,), "output": (dict,), "exporter": (str,), "opset": (int,),
             "parity": (dict,)}
    REQUIRED = ("files", "input", "output")

    def _check(self, path: Path | str) -> None:
        for name in ("input", "output"):
            if not isinstance(getattr(self, name).get("name"), str):
                raise RunDirError(f"'{path}' is malformed: field '{name}.name' is missing.", HINT)
