"""A served group: an ensemble whose members preprocess their inputs differently (e.g. an MLP on standard-scaled
features beside one on min-max scaled ones), so no single graph can take one set of inputs.

The server checks each request once per member (each member's own InputSchema, from its own preprocess.json)
and hands the backend every member's inputs side by side, named `m<k>.<input>`; the backend runs each member's
ONNX graph on its own inputs and combines the outputs (ensemble/combine.py) per batch. The first member's
checked values (numeric, codes, texts) are the ones request warnings and monitoring see.

    <ensemble run>/model/members/m<k>/   each member's model.json, preprocess.json and onnx/ export
    <ensemble run>/ensemble.json         the combination (method, weights or meta-model)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from modelfoundry.artifacts.inputs import Inputs
from modelfoundry.data.input_schema import CheckedRows, InputSchema
from modelfoundry.ensemble.combine import Combination

MEMBERS_DIR = "model/members"


def member_dirs(run_dir: Path) -> list[Path]:
    """The members' directories of a group, in order (m0, m1, ...)."""
    root = Path(run_dir) / MEMBERS_DIR
    return sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: int(p.name[1:]))


def is_group(run_dir: Path) -> bool:
    """Whether a run directory holds an ensemble served as a group (model.json `runtime: "group"`)."""
    record = Path(run_dir) / "model" / "model.json"
    try:
        return record.is_file() and json.loads(record.read_text(encoding="utf-8")).get("runtime") == "group"
    except (OSError, ValueError, AttributeError):
        return False


class GroupSchema:
    """Each member's InputSchema over the same request; reads like the first member's (columns: all members')."""

    def __init__(self, descs: list[dict[str, Any]], on_unseen: str = "warn"):
        self.members = [InputSchema(d, on_unseen) for d in descs]
        self.columns = list(dict.fromkeys(c for m in self.members for c in m.columns))
        self.kinds = {k: v for m in reversed(self.members) for k, v in m.kinds.items()}

    def __getattr__(self, name: str) -> Any:  # input_spec, series, image, warnings, ...: the first member's
        return getattr(self.members[0], name)

    def from_records(self, records: list[dict[str, Any]], origin: str = "the request") -> CheckedRows:
        return self._join([m.from_records(records, origin) for m in self.members])

    def from_columns(self, columns: dict[str, list[Any]], n: int, origin: str = "the request") -> CheckedRows:
        return self._join([m.from_columns(columns, n, origin) for m in self.members])

    def from_frame(self, frame: Any, origin: str = "the input") -> CheckedRows:
        return self._join([m.from_frame(frame, origin) for m in self.members])

    @staticmethod
    def _join(parts: list[CheckedRows]) -> CheckedRows:
        inputs = {f"m{k}.{name}": array for k, part in enumerate(parts) for name, array in part.inputs.items()}
        return CheckedRows(parts[0].numeric, parts[0].codes, parts[0].texts, inputs)


class GroupBackend:
    """Every member's ONNX export on ONNX Runtime, combined per batch."""

    platform = "onnxruntime"

    def __init__(self, run_dir: Path):
        from modelfoundry.serve.backends import OnnxBackend

        record = json.loads((Path(run_dir) / "ensemble.json").read_text(encoding="utf-8"))
        self.members = [OnnxBackend(d / "onnx") for d in member_dirs(run_dir)]
        self.combination = Combination.from_json(record["combination"])
        first = self.members[0]
        self.task, self.labels, self.desc = first.task, first.labels, first.desc
        self.columns = list(dict.fromkeys(c for m in self.members for c in m.columns))

    def schema(self, on_unseen: str = "warn") -> GroupSchema:
        """How the server checks a request for this group (every member's preprocessing)."""
        return GroupSchema([m.desc for m in self.members], on_unseen)

    def predict_inputs(self, inputs: Inputs) -> np.ndarray:
        """`m<k>.<input>` arrays -> the combined probabilities (N, K) or values (N,) in the target's units."""
        outputs = []
        for k, member in enumerate(self.members):
            prefix = f"m{k}."
            outputs.append(member.predict_inputs({n[len(prefix):]: a for n, a in inputs.items() if n.startswith(prefix)}))
        return self.combination.apply(outputs)

    def predict_frame(self, frame: Any) -> np.ndarray:
        return self.combination.apply([m.predict_frame(frame) for m in self.members])
