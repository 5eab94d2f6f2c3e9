"""ONNX export of a trained run, checked for parity with the PyTorch model before anything is published.

    <out_dir>/                      (default: <run_dir>/model/onnx/)
      model.onnx        one graph input per named model input, in the spec's order and with its name and
                        dtype ("numeric" (batch, F) float32, "image" (batch, C, H, W) float32, "tokens"
                        (batch, T) int64, ...; export.json `inputs` lists them) -> "probabilities"
                        (batch, K) for classification (softmax included), "prediction" (batch, 1) for
                        regression (standardised: value = output * std + mean, both in preprocess.json),
                        "anomaly_score" (batch, 1) for an anomaly detector (above target.threshold: an anomaly).
                        Exports made before named inputs have one input called "input"; they still load.
      model.onnx.data   the weights, only for models too large to embed (over 1 GiB)
      preprocess.json   raw columns -> model input, pickle-free (format in modelfoundry.data.portable)
      export.json       what was exported, how, and the parity reached; written last, so a directory
                        with export.json holds a complete export

The parity check runs the run's test split through both paths - saved Preprocessor + torch model, and
preprocess.json + ONNX Runtime - and refuses to publish when they differ by more than `tolerance`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelfoundry.artifacts.inputs import InputSpec, PaddingTrim, padding_trim, rows_of, take
from modelfoundry.artifacts.records import DataRecord, ExportRecord
from modelfoundry.artifacts.rundir import ExportDir, RunDir
from modelfoundry.errors import ConfigError, ExportError, RunDirError, first_line
from modelfoundry.storage import read_json, write_json

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    import pandas as pd
    from torch import nn

    from modelfoundry.rundir import SavedModel

EXPORT_FORMAT = 1
INPUT_NAME = "input"
EXTERNAL_DATA_BYTES = 1 << 30  # above this the weights go to model.onnx.data (protobuf caps a file at 2 GiB)
BATCH = 4096


@dataclass
class ExportResult:
    out_dir: Path
    onnx_path: Path
    max_abs_diff: float  # largest |torch - onnxruntime| over the rows checked and all outputs
    rows_checked: int
    input_name: str  # the first graph input (the only one for a tabular or image model)
    output_name: str
    exporter: str  # "dynamo" (torch.export) or "torchscript" (the fallback)
    opset: int
    tolerance: float
    files: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    input_names: list[str] = field(default_factory=list)  # every graph input, in the model's input order


def export_onnx(run_dir: str | Path, out_dir: str | Path | None = None, *, tolerance: float = 1e-4,
                opset: int | None = None, parity_rows: pd.DataFrame | None = None) -> ExportResult:
    """Export a run's model to ONNX with its portable preprocessing, after checking both reproduce it.

    Args:
        run_dir: a trained run directory.
        out_dir: where to publish; default `<run_dir>/model/onnx/`. Files already there are replaced
            only when the new export passes the parity check.
        tolerance: the largest absolute difference allowed between PyTorch and ONNX Runtime outputs
            (probabilities, or standardised predictions for regression).
        opset: the ONNX opset; default the exporter's own.
        parity_rows: raw rows to check on instead of the run's test split (e.g. when the source moved).
    """
    from modelfoundry.data.anomaly import describe_target
    from modelfoundry.data.portable import describe_preprocessor
    from modelfoundry.rundir import load_model

    started = time.perf_counter()
    if not tolerance >= 0:
        raise ConfigError(f"The 'tolerance' parameter of export_onnx must be >= 0. Got {tolerance} instead.")
    saved = load_model(run_dir)
    if saved.record.runtime == "onnx":  # already a graph (a compressed variant): publish it as it is
        return _copy_graph(saved, Path(out_dir) if out_dir is not None else None, started)
    rows = _test_rows(saved) if parity_rows is None else parity_rows
    if len(rows) == 0:
        raise ExportError(f"There are no rows to check the export of {saved.run_dir} on.",
                          "Pass rows with parity_rows, or give the run a non-empty test split.")
    desc = describe_preprocessor(saved.preprocessor)
    desc["target"] = describe_target(saved.target_encoder, saved.record.target)  # an anomaly's: with its threshold
    out = Path(out_dir) if out_dir is not None else RunDir(saved.run_dir).onnx_dir
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out))  # same filesystem, so os.replace is atomic
    try:
        metadata = _stage(saved, desc, rows, staging, tolerance, opset)
        _publish(staging, out, metadata["files"])
    except BaseException:
        if created and not any(p != staging for p in out.iterdir()):
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(out, ExportDir(out).graph, metadata["parity"]["max_abs_diff"],
                        metadata["parity"]["rows_checked"], metadata["input"]["name"], metadata["output"]["name"],
                        metadata["exporter"], metadata["opset"], tolerance, metadata["files"],
                        time.perf_counter() - started, [i["name"] for i in metadata["inputs"]])


@dataclass
class OnnxPredictor:
    """Raw rows -> probabilities (N, K) or predictions in the target's units (N,), with ONNX Runtime only."""

    session: Any
    preprocess: dict[str, Any]
    metadata: dict[str, Any]
    input_names: list[str]  # the graph's inputs, in the order of the model's named inputs
    output_name: str
    trim: PaddingTrim | None = None  # a padding-invariant model: each call cut to its longest text

    @classmethod
    def open(cls, directory: Path, preprocess: dict[str, Any], metadata: dict[str, Any]) -> OnnxPredictor:
        session = _session(ExportDir(directory).graph)
        names = [node.name for node in session.get_inputs()]
        trim = padding_trim(names) if metadata.get("padding_invariant") else None  # steps dynamic: may cut
        return cls(session, preprocess, metadata, names, session.get_outputs()[0].name, trim)

    @property
    def input_name(self) -> str:
        return self.input_names[0]

    @property
    def task(self) -> str:
        return self.preprocess["target"]["task"]

    @property
    def labels(self) -> list[str]:
        return [str(c) for c in self.preprocess["target"].get("classes") or []]

    def feed(self, inputs: Mapping[str, np.ndarray], rows: slice = slice(None)) -> dict[str, np.ndarray]:
        """The graph's feed for the named inputs (an export from before named inputs has one input, "input")."""
        arrays = [inputs[n] for n in self.input_names] if set(inputs) == set(self.input_names) else list(inputs.values())
        if len(arrays) != len(self.input_names):
            raise ExportError(f"The ONNX model takes {len(self.input_names)} input(s) {self.input_names}, but "
                              f"{len(arrays)} were given ({list(inputs)}).", "Export the model again.")
        parts = tuple(a[rows] for a in arrays)
        if self.trim is not None:  # padding past the longest text changes nothing the model computes; it costs
            parts = self.trim(parts)
        return {name: np.require(a, dtype=np.float32 if a.dtype.kind == "f" else np.int64, requirements=["C"])
                for name, a in zip(self.input_names, parts)}

    def predict_inputs(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The model's named inputs (N rows each) -> the ONNX output, float32 (N, K) or (N, 1)."""
        n = rows_of(inputs)
        parts = [self.session.run([self.output_name], self.feed(inputs, slice(i, i + BATCH)))[0]
                 for i in range(0, n, BATCH)]
        return np.concatenate(parts) if parts else np.empty((0, len(self.labels) or 1), dtype=np.float32)

    def predict_frame(self, frame: pd.DataFrame, origin: str = "the input") -> np.ndarray:
        """What `foundry predict` computes: class probabilities (float64), or values in the target's units."""
        from modelfoundry.data.portable import apply_portable

        output = self.predict_inputs(apply_portable(self.preprocess, frame, origin)).astype(np.float64)
        if self.task == "classification":
            return output
        target = self.preprocess["target"]
        return (output[:, 0] if output.shape[1] == 1 else output) * target["std"] + target["mean"]  # (N,) or (N, H)


def load_onnx_predictor(out_dir: str | Path) -> OnnxPredictor:
    """Open an export made by `export_onnx` (model.onnx, preprocess.json, export.json) for inference."""
    out = ExportDir(out_dir)
    missing = [path.name for path in (out.record, out.preprocess, out.graph) if not path.is_file()]
    if missing:
        raise RunDirError(f"'{out.path}' holds no complete ONNX export (missing {', '.join(missing)}).",
                          "Export the run first: `foundry export RUN_DIR --format onnx`.")
    return OnnxPredictor.open(out.path, read_json(out.preprocess), ExportRecord.read(out.record).to_json())


# ---------------------------------------------------------------------------------------------- internals
def _copy_graph(saved: SavedModel, out: Path | None, started: float) -> ExportResult:
    """Export of a model whose runtime is ONNX: its graph, sidecar and export.json, copied as they are."""
    source = RunDir(saved.run_dir).onnx_dir
    meta = ExportRecord.read(ExportDir(source).record)
    if out is not None and out.resolve() != source.resolve():
        out.mkdir(parents=True, exist_ok=True)
        for name in meta.files:
            shutil.copyfile(source / name, out / name)
    target = out or source
    parity = meta.parity
    return ExportResult(target, ExportDir(target).graph, parity.get("max_abs_diff", 0.0), parity.get("rows_checked", 0),
                        meta.input["name"], meta.output["name"], meta.exporter, meta.opset,
                        parity.get("tolerance", 0.0), meta.files, time.perf_counter() - started,
                        [i["name"] for i in meta.extra.get("inputs", [meta.input])])


def _stage(saved: SavedModel, desc: dict[str, Any], rows: pd.DataFrame, staging: Path, tolerance: float,
           opset: int | None) -> dict[str, Any]:
    """Export, write preprocess.json, check parity and write export.json, all inside `staging`."""
    output_name = {"classification": "probabilities", "anomaly": "anomaly_score"}.get(saved.task, "prediction")
    staged = ExportDir(staging)
    exporter = _export_model(_exportable(saved), saved.record.input_spec, staged.graph, output_name, opset)
    _check_onnx(staged.graph)
    write_json(staged.preprocess, desc)
    trims = {"padding_invariant": _padding_invariant(saved.model)}  # parity is checked on the feeds served
    predictor = OnnxPredictor.open(staging, read_json(staged.preprocess), trims)
    parity = _parity(saved, predictor, rows, tolerance)
    weights = sorted(p.name for p in staging.iterdir() if p.name not in (ExportDir.GRAPH, ExportDir.PREPROCESS))
    files = [*weights, ExportDir.GRAPH, ExportDir.PREPROCESS, ExportDir.RECORD]  # the order they are published in
    metadata = _metadata(saved, predictor, staged.graph, exporter, parity, tolerance, files)
    write_json(staged.record, metadata)
    return metadata


def _padding_invariant(model: nn.Module) -> bool:
    """Whether the graph may be fed token batches cut to their longest text (the model says its outputs do not
    depend on padding, and its token inputs' steps are exported dynamic)."""
    return bool(getattr(model, "padding_invariant", False))


def _exportable(saved: SavedModel) -> nn.Module:
    """The model in eval mode on the CPU in float32, with a softmax head for classification. A model with
    adapters (LoRA) is exported merged (`merged()`: adapters folded into the base weights); the parity check
    then compares the merged graph with the adapter model."""
    from torch import nn

    model = saved.model.cpu().float().eval()
    merge = getattr(model, "merged", None)
    if callable(merge):
        model = merge().cpu().float().eval()
    if saved.task != "classification":
        return model

    class WithSoftmax(nn.Module):
        def __init__(self, inner: nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, *inputs):  # the named inputs in order -> (B, K) probabilities
            return self.inner(*inputs).softmax(dim=1)

    return WithSoftmax(model).eval()


def _export_model(module: nn.Module, inputs: InputSpec, path: Path, output_name: str, opset: int | None) -> str:
    """Write `path` with the torch.export-based exporter, or the TorchScript one if that fails; which one.

    The graph has one input per named input, with its name and dtype, and a dynamic batch dimension.
    """
    import torch

    example = tuple(torch.from_numpy(a) for a in inputs.example(2).values())  # batch 2: torch.export would
    names = {"input_names": inputs.names, "output_names": [output_name], "opset_version": opset}  # specialise 1
    large = sum(p.numel() * p.element_size() for p in module.parameters()) > EXTERNAL_DATA_BYTES
    with warnings.catch_warnings(), _quiet_logger("torch.onnx._internal.exporter._registration"), \
            _quiet_logger("onnxscript.optimizer"):  # "Evaluation failed" notes of its constant folding
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))  # torch internals, not actionable
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")  # e.g. shared batch axes
        try:
            torch.onnx.export(module, example, str(path), dynamo=True, external_data=large, verbose=False,
                              dynamic_shapes=_batch_dims(module, inputs), **names)
            fixed = _fixed_axes(path, inputs)
            if not fixed:
                return "dynamo"
            # torch 2.13: an LSTM exported a second time in a process is unrolled over a fixed number of steps
            raise ExportError(f"the graph fixes {', '.join(fixed)}")
        except Exception as exc:  # noqa: BLE001 - any failure of the new exporter falls back to the old one
            first = exc
        for leftover in path.parent.glob(f"{path.name}*"):  # a half-written model.onnx(.data)
            leftover.unlink()
        try:
            torch.onnx.export(module, example, str(path), dynamo=False,
                              dynamic_axes={**{f.name: {a: n for a, n in enumerate(_dynamic_axes(f)) if n} for f in inputs},
                                            output_name: {0: "batch"}},
                              **names)
            return "torchscript"
        except Exception as exc:  # noqa: BLE001 - reported with both causes
            raise ExportError(f"Could not export the model to ONNX. torch.export exporter: {first_line(first)}; "
                              f"TorchScript exporter: {first_line(exc)}.",
                              "Report the model config; meanwhile serve the run with the torch backend.") from exc


SEQUENCE_INPUTS = ("tokens", "attention_mask")  # their second dimension (steps) is dynamic too


def _dynamic_axes(field: Any) -> list[str | None]:
    """The name of each axis of an input that the graph must leave free (None for a fixed one): the batch,
    and for token inputs their steps (and windows of long texts, (W, T), when there can be several)."""
    if field.name not in SEQUENCE_INPUTS:
        return ["batch"] + [None] * len(field.shape)
    if len(field.shape) == 2:
        return ["batch", "windows" if field.shape[0] >= 2 else None, "steps"]
    return ["batch", "steps"]


def _fixed_axes(path: Path, inputs: InputSpec) -> list[str]:
    """The axes `_dynamic_axes` wants free that the ONNX graph at `path` fixes, as "input[axis]"."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dims = {i.name: i.type.tensor_type.shape.dim for i in graph.input}
    return [f"{f.name}[{axis}]" for f in inputs if f.name in dims
            for axis, want in enumerate(_dynamic_axes(f)) if want and axis < len(dims[f.name])
            and not dims[f.name][axis].dim_param]


def _batch_dims(module: nn.Module, inputs: InputSpec) -> tuple[Any, ...]:
    """torch.export's dynamic shapes for `module`'s inputs: the batch dimension of each, and the steps of token
    inputs (one shared length, up to the data's), so a server may pad a batch to its longest text. They
    follow the forward signature (a `forward(*inputs)` takes them as one nested tuple)."""
    import inspect

    import torch

    batch = torch.export.Dim("batch")
    sequences = [f for f in inputs if f.name in SEQUENCE_INPUTS]
    steps = torch.export.Dim("steps", max=max(max((f.shape[-1] for f in sequences), default=2), 2))
    most = max((f.shape[0] for f in sequences if len(f.shape) == 2), default=1)  # long texts' windows (W, T)
    windows = torch.export.Dim("windows", max=most) if most >= 2 else None

    def axes(f: Any) -> dict[int, Any]:
        if f.name not in SEQUENCE_INPUTS:
            return {0: batch}
        if len(f.shape) == 2:
            return {0: batch, 1: windows, 2: steps} if windows is not None else {0: batch, 2: steps}
        return {0: batch, 1: steps}

    dims = tuple(axes(f) for f in inputs)
    kinds = [p.kind for p in inspect.signature(module.forward).parameters.values()]
    return (dims,) if kinds and kinds[0] is inspect.Parameter.VAR_POSITIONAL else dims


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Errors only from `name` meanwhile (the exporter warns on every call that torchvision is missing)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_onnx(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path))  # by path, so external weights are checked too
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"The exported ONNX model is invalid: {first_line(exc)}.",
                          "Try another opset (--opset), or report the model config.") from exc


def _parity(saved: SavedModel, predictor: OnnxPredictor, rows: pd.DataFrame, tolerance: float) -> dict[str, Any]:
    """Torch on the saved Preprocessor vs ONNX Runtime on preprocess.json, on every row and on one row alone."""
    from modelfoundry.data.portable import apply_portable
    from modelfoundry.models.inference import predict_outputs

    X_torch = saved.preprocessor.transform(rows, "the parity rows")
    X_portable = apply_portable(predictor.preprocess, rows, "the parity rows")
    n = rows_of(X_torch)  # len(rows), or a history's windows
    expected = predict_outputs(saved.model, X_torch, saved.task).reshape(n, -1)  # (N, K) or (N, 1) or (N, H)
    fixed = [node.name for node in predictor.session.get_inputs() if not isinstance(node.shape[0], str)]
    if fixed:
        raise ExportError(f"The exported model has a fixed batch size on input(s) {fixed} instead of a dynamic one.",
                          "Report the model config; meanwhile serve the run with the torch backend.")
    try:
        got = predictor.predict_inputs(X_portable).astype(np.float64)
        single = predictor.predict_inputs(take(X_portable, slice(0, 1))).astype(np.float64)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ExportError(f"ONNX Runtime could not run the exported model: {first_line(exc)}.",
                          "Try another opset (--opset), or report the model config.") from exc
    diff = float(max(np.abs(got - expected).max(), np.abs(single - expected[:1]).max()))
    if not diff <= tolerance:
        raise ExportError(f"The ONNX export differs from the PyTorch model by up to {diff:.3g} on "
                          f"{len(rows)} rows, more than the tolerance {tolerance:g}; nothing was written.",
                          "Raise --tolerance if the difference is acceptable, or try another --opset.")
    preprocess_diff = max((float(np.abs(X_portable[k].astype(np.float64) - X_torch[k]).max())
                           for k in X_torch if X_torch[k].size), default=0.0)
    return {"max_abs_diff": diff, "rows_checked": n, "preprocess_max_abs_diff": preprocess_diff}


def _test_rows(saved: SavedModel) -> pd.DataFrame:
    """The raw rows of the run's test split, rebuilt from its source (checked unchanged by fingerprint)."""
    from modelfoundry.data.prepare import rebuild_splits

    recorded = DataRecord.read(RunDir(saved.run_dir).data_record).sha256
    return rebuild_splits(saved.config.data, saved.config.seed, recorded, saved.run_dir)["test"]


def _metadata(saved: SavedModel, predictor: OnnxPredictor, onnx_path: Path, exporter: str,
              parity: dict[str, Any], tolerance: float, files: list[str]) -> dict[str, Any]:
    import onnx
    import onnxruntime
    import torch

    import modelfoundry

    spec = saved.record.input_spec
    model = onnx.load(str(onnx_path), load_external_data=False)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    output_meaning = ("class probabilities, in the order of labels" if saved.task == "classification"
                      else "anomaly score (mean squared reconstruction error); an anomaly when above "
                           "target.threshold (preprocess.json)" if saved.task == "anomaly"
                      else "standardised prediction: value = output * target.std + target.mean (preprocess.json)")
    return {
        "format": EXPORT_FORMAT,
        "name": saved.record.name, "architecture": saved.config.model.name, "task": saved.task,
        "labels": saved.labels, "target": saved.record.target, "config_hash": saved.record.config_hash,
        "run_dir": str(saved.run_dir.resolve()),
        "input": {"name": predictor.input_name, "shape": ["batch", *spec[0].shape], "dtype": spec[0].dtype},
        "inputs": [{"name": node, "shape": ["batch", *f.shape], "dtype": f.dtype}
                   for node, f in zip(predictor.input_names, spec)],
        "output": {"name": predictor.output_name, "shape": ["batch", saved.record.n_outputs],
                   "meaning": output_meaning},
        # a binary classifier's tuned decision: the class at threshold.positive_index when its probability is
        # >= threshold.value, else the other one (model.json's `threshold`; absent: the most probable class)
        "threshold": saved.record.threshold,
        "opset": opset, "exporter": exporter, "files": files,
        "merged": callable(getattr(saved.model, "merged", None)),  # LoRA adapters folded into the base weights
        "padding_invariant": predictor.trim is not None,  # the server cuts token batches to their longest text
        "parity": {**parity, "tolerance": tolerance},
        "versions": {"modelfoundry": modelfoundry.__version__, "torch": torch.__version__,
                     "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _publish(staging: Path, out: Path, files: list[str]) -> None:
    """Move the staged files into `out` (weights, model, preprocessing): old export.json out first, new in last."""
    record = ExportDir(out).record
    previous = read_json(record).get("files", []) if record.is_file() else []
    record.unlink(missing_ok=True)
    for name in files:  # export.json is the last of them
        os.replace(staging / name, out / name)
    for name in set(previous) - set(files):  # e.g. a model.onnx.data the new export no longer needs
        if name == Path(name).name:  # a plain file name, never a path out of `out`
            (out / name).unlink(missing_ok=True)


def _session(path: Path) -> Any:
    from modelfoundry.models.onnx_graph import ort_session

    return ort_session(path)
