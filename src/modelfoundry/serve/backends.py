"""Inference backends: the model's named inputs (already preprocessed) in, class probabilities (or
target-unit predictions, or an anomaly detector's scores) out.

ONNX Runtime is the default (2-10x faster than eager torch at batch 1 on CPU); PyTorch is the fallback
when a model cannot be exported. Each exposes the run's portable preprocessing description (`desc`), from
which the server checks and transforms every request on its own (data/input_schema.py) before batching.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from modelfoundry.artifacts.inputs import Inputs, take

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


class Backend(Protocol):
    platform: str  # "onnxruntime" | "pytorch"
    task: str
    labels: list[Any]  # class values as in the training data (ints stay ints in JSON)
    columns: list[str]
    desc: dict[str, Any]  # the portable preprocessing description (data/portable.py)
    threshold: dict[str, Any] | None  # a binary classifier's tuned decision threshold (artifacts/records.py)

    def predict_inputs(self, inputs: Inputs) -> np.ndarray: ...

    def predict_frame(self, frame: pd.DataFrame) -> np.ndarray: ...


class OnnxBackend:
    """The model's ONNX export with the pickle-free preprocessing sidecar, on ONNX Runtime."""

    platform = "onnxruntime"

    def __init__(self, export_dir: Path):
        from modelfoundry.export import load_onnx_predictor

        self.predictor = load_onnx_predictor(export_dir)
        self.task = self.predictor.task
        self.labels = list(self.predictor.preprocess["target"].get("classes") or [])  # original class values
        self.columns = list(self.predictor.preprocess["columns"])
        self.desc = self.predictor.preprocess
        self.threshold = self.predictor.metadata.get("threshold")  # export.json: the decision beside the graph

    def predict_inputs(self, inputs: Inputs) -> np.ndarray:
        """The named model inputs -> probabilities (N, K) or values (N,) in the target's units."""
        output = self.predictor.predict_inputs(inputs).astype(np.float64)
        if self.task == "classification":
            return output
        target = self.desc["target"]
        return (output[:, 0] if output.shape[1] == 1 else output) * target["std"] + target["mean"]  # (N,) or (N, H)

    def predict_frame(self, frame: pd.DataFrame) -> np.ndarray:
        return self.predictor.predict_frame(frame, origin="the request")


class TorchBackend:
    """The PyTorch model with the portable preprocessing, for models ONNX export cannot handle."""

    platform = "pytorch"

    def __init__(self, run_dir: Path):
        from modelfoundry.rundir import load_model

        self.saved = load_model(run_dir)
        self.task = self.saved.task
        self.labels = list(getattr(self.saved.target_encoder, "classes_", []))  # original class values
        self.columns = list(self.saved.preprocessor.columns)
        self.desc = self.saved.preprocessor.desc
        self.threshold = self.saved.record.threshold

    def predict_inputs(self, inputs: Inputs) -> np.ndarray:
        from modelfoundry.models.inference import predict_outputs

        output = predict_outputs(self.saved.model, inputs, self.task)
        return output if self.task == "classification" else self.saved.target_encoder.decode(output)

    def predict_frame(self, frame: pd.DataFrame) -> np.ndarray:
        return self.predict_inputs(self.saved.preprocessor.transform(frame, "the request"))


def anomaly_flags(backend: Backend, scores: np.ndarray) -> list[bool]:
    """An anomaly detector's answer per row: True where the score (what both backends return for task anomaly)
    is above the threshold the model was saved with (preprocess.json `target.threshold`)."""
    return (np.asarray(scores, dtype=np.float64) > float(backend.desc["target"]["threshold"])).tolist()


def load_backend(run_dir: Path, prefer: str = "onnx") -> Backend:
    """ONNX Runtime from run_dir/model/onnx (exported and parity-checked on first use), else PyTorch; an ensemble
    of members with different preprocessing: its served group (serve/group.py)."""
    from modelfoundry.serve.group import GroupBackend, is_group

    if is_group(run_dir):
        return GroupBackend(Path(run_dir))
    if prefer == "onnx":
        from modelfoundry.artifacts.rundir import RunDir

        export_dir = RunDir(run_dir).onnx_dir
        try:
            if not RunDir(run_dir).export.record.is_file():
                from modelfoundry.export import export_onnx

                export_onnx(run_dir, export_dir)
            return OnnxBackend(export_dir)
        except Exception as exc:  # noqa: BLE001 - any export/runtime failure: serve with torch instead
            log.warning("ONNX backend unavailable for %s (%s); serving with PyTorch", run_dir, exc)
    return TorchBackend(Path(run_dir))


def warm_up(backend: Backend, rows: int = 1, repeats: int = 5) -> float | None:
    """Predict on neutral model inputs, so the first request does not pay for lazy initialisation; returns
    the median seconds of a `rows`-row call (None when the model could not be called)."""
    import time

    from modelfoundry.data.portable import input_spec

    example = input_spec(backend.desc).example(rows)
    try:
        backend.predict_inputs(take(example, slice(0, 1)))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            backend.predict_inputs(example)
            times.append(time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - warm-up is best effort
        log.info("warm-up skipped: %s", exc)
        return None
    return sorted(times)[len(times) // 2]
