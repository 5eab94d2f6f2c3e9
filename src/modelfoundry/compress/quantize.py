"""Quantized and lower-precision variants of a trained model, each a candidate to be measured, never assumed faster.

ONNX candidates start from the fp32 `model.onnx` that `export_onnx` writes (one graph input per named
input, e.g. `numeric` (batch, F) float32; output probabilities or standardised predictions) and keep that
interface:

    ort_dynamic_int8   int8 weights, activations quantized per call       (MatMulInteger / ConvInteger)
    ort_static_int8    int8 weights, activations calibrated on training rows (QDQ or QOperator graph)
    ort_fp16           fp16 weights, fp32 inputs and outputs

Torch candidates take the trained `nn.Module` (called with the named inputs in its spec's order; raw
outputs, logits for classification) and return another:

    torch_dynamic_int8_eager   deprecated eager-mode dynamic int8 on nn.Linear / nn.LSTM / nn.GRU
    torch_pt2e_int8            torch.export + X86InductorQuantizer (torchao) + optionally torch.compile
    bf16_torch                 bf16 weights and compute, fp32 in and out

Whether int8 pays depends on the model and the CPU: for small models the per-call (de)quantization
costs more than the int8 matrix products save, so the caller measures every candidate (measure.py) and
keeps one only when it is faster or smaller within the accuracy guard.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from modelfoundry.artifacts.inputs import rows_of
from modelfoundry.errors import ExportError, first_line

if TYPE_CHECKING:
    from collections.abc import Iterator

    import torch
    from torch import nn

CALIBRATION_BATCH = 32
ACTIVATION_TYPES = ("uint8", "int8")
FORMATS = ("qdq", "qoperator")
CALIBRATION_METHODS = ("minmax", "percentile")
_BUG_HINT = "Report the model config; meanwhile keep the fp32 model (other candidates are unaffected)."


# --------------------------------------------------------------------------------------------- ONNX Runtime
def ort_dynamic_int8(fp32: Path, out: Path, *, per_channel: bool = False) -> Path:
    """Dynamic int8: int8 weights (QInt8), activations quantized on the fly at every call.

    Args:
        fp32: the exported fp32 model.onnx.
        out: where to write the quantized model.
        per_channel: one scale per output channel instead of one per weight tensor.

    Returns:
        `out`, checked to load in ONNX Runtime.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32, out = Path(fp32), Path(out)
    with _prepared(fp32, out) as source, _quiet():
        try:
            quantize_dynamic(source, out, per_channel=per_channel, weight_type=QuantType.QInt8,
                             use_external_data_format=_is_large(fp32))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises assorted types
            raise ExportError(f"Dynamic int8 quantization of {fp32} failed: {first_line(exc)}.", _BUG_HINT) from exc
    return _checked(out, "dynamic int8")


def ort_static_int8(fp32: Path, out: Path, calibration: Mapping[str, np.ndarray], *, per_channel: bool = True,
                    activation: Literal["uint8", "int8"] = "uint8", fmt: Literal["qdq", "qoperator"] = "qdq",
                    method: Literal["minmax", "percentile"] = "minmax") -> Path:
    """Static int8: int8 weights, activation ranges calibrated once on `calibration` rows.

    MinMax calibration is the default: on the breast_cancer MLP, the digits CNN and a 3x1024 digits MLP it
    kept argmax agreement with fp32 at 100% on the test split (largest probability change 0.02-0.025);
    Percentile (99.999th) was no better overall (0.016 on the CNN, 0.024 on the wide MLP, the same argmax)
    and calibrates about 3x slower. It stays available for models with outlying activations.

    Args:
        fp32: the exported fp32 model.onnx.
        out: where to write the quantized model.
        calibration: the model's named inputs (N rows each), e.g. rows of the training split after
            preprocessing; every graph input is fed (by name), in batches of 32.
        per_channel: one weight scale per output channel (more accurate, same speed on x86).
        activation: "uint8" (asymmetric, the x86 default) or "int8". On an AVX512-VNNI CPU uint8 was
            the fast one: int8 activations made the digits CNN 4x (QDQ) to 15x (QOperator) slower.
        fmt: "qdq" (QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into int8 kernels) or
            "qoperator" (QLinearConv, QLinearMatMul, ... written out directly).
        method: "minmax" or "percentile" calibration.

    Returns:
        `out`, checked to load in ONNX Runtime.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    fp32, out = Path(fp32), Path(out)
    _check_choice("activation", activation, ACTIVATION_TYPES)
    _check_choice("fmt", fmt, FORMATS)
    _check_choice("method", method, CALIBRATION_METHODS)
    if rows_of(calibration) == 0:
        raise ExportError("Static int8 quantization needs calibration rows; got none.",
                          "Pass rows of the training split (model inputs, after preprocessing).")
    quant_format = QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator
    activation_type = QuantType.QUInt8 if activation == "uint8" else QuantType.QInt8
    calibrate_method = CalibrationMethod.MinMax if method == "minmax" else CalibrationMethod.Percentile
    with _prepared(fp32, out) as source, _quiet():
        try:
            quantize_static(source, out, _Batches(_graph_feed(source, calibration)), quant_format=quant_format,
                            per_channel=per_channel, activation_type=activation_type,
                            weight_type=QuantType.QInt8, calibrate_method=calibrate_method,
                            use_external_data_format=_is_large(fp32))
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"Static int8 quantization ({fmt}, {activation} activations) of {fp32} failed: "
                              f"{first_line(exc)}.", _BUG_HINT) from exc
    return _checked(out, f"static int8 ({fmt}, {activation})")


def ort_fp16(fp32: Path, out: Path) -> Path:
    """fp16 weights and compute, fp32 inputs and outputs (the interface of the fp32 export is kept).

    On CPUs without fp16 kernels ONNX Runtime inserts casts back to fp32 around the ops it lacks, so expect
    half the size but no speed-up there; the candidate exists for CPUs and GPUs that have them.

    Args:
        fp32: the exported fp32 model.onnx.
        out: where to write the fp16 model.

    Returns:
        `out`, checked to load in ONNX Runtime.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    fp32, out = Path(fp32), Path(out)
    with _quiet():
        try:
            model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            onnx.save(model, str(out), save_as_external_data=_is_large(fp32), location=f"{out.name}.data")
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"fp16 conversion of {fp32} failed: {first_line(exc)}.", _BUG_HINT) from exc
    return _checked(out, "fp16")


# ----------------------------------------------------------------------------------------------------- torch
def torch_dynamic_int8_eager(model: nn.Module) -> nn.Module:
    """Eager-mode dynamic int8 on every nn.Linear, nn.LSTM and nn.GRU (`torch.ao.quantization.quantize_dynamic`).

    Deprecated by PyTorch (torch.ao.quantization is slated for removal in favour of torchao); kept only as
    a measured candidate for the torch serving backend. Convolutions and embeddings stay fp32. A model with
    LoRA adapters is quantized merged (`merged()`: plain Linear layers, the outputs it is served with). A
    recurrent encoder whose quantized LSTM/GRU no longer exposes per-layer weights runs its packed path,
    which computes the same function. The input model is not modified.
    """
    import torch
    from torch import nn

    source = model.merged() if callable(getattr(model, "merged", None)) else model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        from torch.ao.quantization import quantize_dynamic

        quantized = quantize_dynamic(copy.deepcopy(source).cpu().float().eval(), {nn.Linear, nn.LSTM, nn.GRU},
                                     dtype=torch.qint8)
    for module in quantized.modules():
        rnn = getattr(module, "rnn", None)
        if hasattr(module, "_packed") and rnn is not None and not isinstance(rnn, (nn.LSTM, nn.GRU)):
            module._padded = module._packed  # the padded path reads rnn.weight_ih_l0..., which int8 packs away
    return quantized.eval()


def torch_pt2e_int8(model: nn.Module, example: Mapping[str, Any], calibration: Mapping[str, np.ndarray], *,
                    compiled: bool = True) -> nn.Module:
    """Static int8 through PT2E: torch.export -> prepare_pt2e -> calibrate -> convert_pt2e (X86InductorQuantizer).

    PT2E moved out of torch.ao into torchao (`pip install torchao`; 0.18 works with torch 2.13 on CPU).
    Without `torch.compile` the converted graph runs reference quantize/dequantize ops and is several
    times slower than fp32. Compiled (tens of seconds the first time; a C++ compiler is needed), it ran
    no faster than fp32 here: Inductor's freezing pass, which would fold the int8 weights into oneDNN int8
    kernels, fails on torch 2.13 + torchao 0.18 ("UnsupportedOperatorException: onednn.qlinear_prepack"),
    so weights are dequantized at every call. Measured, it is mainly a 4x-smaller-weights candidate.

    Args:
        model: the trained module (float32 outputs, e.g. logits).
        example: one batch of the named inputs in the model's order (arrays or tensors, e.g.
            `spec.example(1)`) to trace with; the batch dimension stays dynamic.
        calibration: the model's named inputs (N rows each, same order), e.g. training rows, run through in
            batches of 32.
        compiled: wrap the result in `torch.compile` (compiled lazily, on its first call).
    """
    import torch

    allow_exported_model_train_eval, prepare_pt2e, convert_pt2e, x86 = _torchao_pt2e()
    module = copy.deepcopy(model).cpu().float().eval()
    args = tuple(_tensor(x).repeat(2 if len(x) < 2 else 1, *[1] * (x.ndim - 1)) for x in example.values())
    batch = torch.export.Dim("batch")  # one batch dimension shared by every input
    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        try:
            exported = torch.export.export(module, args,  # batch >= 2, or export fixes it at 1
                                           dynamic_shapes=tuple({0: batch} for _ in args)).module()
            _split_module_reuse(exported.graph)
            quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
            prepared = prepare_pt2e(exported, quantizer)
            data = [_tensor(x) for x in calibration.values()]
            with torch.no_grad():
                for start in range(0, rows_of(calibration), CALIBRATION_BATCH):
                    prepared(*(x[start:start + CALIBRATION_BATCH] for x in data))
            converted = convert_pt2e(prepared)
            _drop_unused_weights(converted)
            allow_exported_model_train_eval(converted)  # so .eval() works on it (and on a compiled wrapper)
        except Exception as exc:  # noqa: BLE001 - torch.export raises many types
            raise ExportError(f"PT2E int8 quantization failed: {first_line(exc)}.", _BUG_HINT) from exc
    return torch.compile(converted) if compiled else converted


def bf16_torch(model: nn.Module) -> nn.Module:
    """bf16 weights and compute on the CPU, fp32 in and out (a drop-in for the fp32 module).

    Fast only where the CPU has bf16 instructions (AVX512-BF16 / AMX); elsewhere it is emulated.
    """
    import torch
    from torch import nn

    class Bf16(nn.Module):
        def __init__(self, inner: nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, *inputs):  # the named inputs in order, floats fp32 -> float32 outputs, bf16 inside
            return self.inner(*(x.to(torch.bfloat16) if x.is_floating_point() else x for x in inputs)).float()

    return Bf16(copy.deepcopy(model).cpu().to(torch.bfloat16)).eval()


# ---------------------------------------------------------------------------------------------- internals
def _split_module_reuse(graph: Any) -> None:
    """Give each call of a module called more than once its own name in the nodes' `nn_module_stack`.

    The x86 quantizer groups nodes into patterns by the module they came from; a module object used twice
    (our residual block applies one ReLU after both convs) would make one group with two outputs, which it
    rejects ("Input partition has more than one output node"). A node opens a new call of its module
    unless it consumes a node of that module's current call.
    """
    current: dict[str, tuple[set[Any], int]] = {}  # module path -> (nodes of its current call, calls so far)
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack") if node.op == "call_function" else None
        if not stack:
            continue
        key, (path, kind) = list(stack.items())[-1]
        nodes, calls = current.get(path, (set(), 0))
        if not nodes or not any(arg in nodes for arg in node.all_input_nodes):
            nodes, calls = set(), calls + 1
        nodes.add(node)
        current[path] = (nodes, calls)
        if calls > 1:
            stack[key] = (f"{path}@{calls}", kind)


def _drop_unused_weights(module: Any) -> None:
    """Delete parameters and buffers no node reads: convert_pt2e leaves the fp32 weights beside their int8 copies."""
    used = {node.target for node in module.graph.nodes if node.op == "get_attr"}
    for name, _ in [*module.named_parameters(), *module.named_buffers()]:
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(module.get_submodule(owner), attr)


def _torchao_pt2e() -> tuple[Any, Any, Any, Any]:
    """torchao's PT2E entry points, imported quietly (it logs about CUDA kernels a CPU build cannot load)."""
    import torch

    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        try:
            from torchao.quantization.pt2e import allow_exported_model_train_eval
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
            from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer
        except ImportError as exc:
            raise ExportError("PT2E int8 quantization needs torchao, which is not installed "
                              f"({first_line(exc)}); torch {torch.__version__} no longer ships PT2E in torch.ao.",
                              "Run `pip install torchao` (an add-on that leaves torch as it is), or skip this "
                              "candidate.") from exc
    return allow_exported_model_train_eval, prepare_pt2e, convert_pt2e, x86_inductor_quantizer


class _Batches:
    """ONNX Runtime CalibrationDataReader over rows of every graph input: {input_name: (<=32, ...)} until
    exhausted; `rows` is keyed by the graph's input names, the same number of rows in each."""

    def __init__(self, rows: Mapping[str, np.ndarray]):
        self.rows = dict(rows)
        self.n = rows_of(self.rows)
        self.start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.start >= self.n:
            return None
        stop = self.start + CALIBRATION_BATCH
        batch = {name: a[self.start:stop] for name, a in self.rows.items()}
        short = min(stop, self.n) - self.start
        if 0 < short < CALIBRATION_BATCH <= self.n:
            # top the last batch up from the first rows: percentile calibration stacks all batches' outputs
            # into one array and fails on a shorter last one; repeated rows leave min/max unchanged
            batch = {name: np.concatenate([a, self.rows[name][:CALIBRATION_BATCH - short]])
                     for name, a in batch.items()}
        self.start = stop
        return batch

    def rewind(self) -> None:
        self.start = 0


@contextlib.contextmanager
def _prepared(fp32: Path, out: Path) -> Iterator[Path]:
    """`quant_pre_process` (shape inference + graph optimisation) in a scratch file, or `fp32` if it fails.

    Recommended before quantizing; on our exports it leaves the graph as it was (the exporter already
    folds BatchNorm), but it protects models with unknown intermediate shapes. Its failures are not ours.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".quantize-", dir=out.parent))
    try:
        try:  # in the scratch folder: when shape inference gives up, ONNX Runtime saves its partial graph (and
            # uuid-named weight files) to the working directory, which would litter the user's folder
            with _quiet(), contextlib.chdir(scratch):
                quant_pre_process(str(fp32.resolve()), str((scratch / "pre.onnx").resolve()),
                                  save_as_external_data=_is_large(fp32))
            source = scratch / "pre.onnx"
        except Exception:  # noqa: BLE001 - an optional step: quantize the model as exported
            source = fp32
        yield source
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _checked(path: Path, what: str) -> Path:
    """`path` if ONNX Runtime loads it; otherwise remove it and raise."""
    from modelfoundry.compress.measure import onnx_session

    try:
        onnx_session(path)
    except Exception as exc:  # noqa: BLE001
        path.unlink(missing_ok=True)
        raise ExportError(f"ONNX Runtime cannot load the {what} model: {first_line(exc)}.", _BUG_HINT) from exc
    return path


def _is_large(fp32: Path) -> bool:
    """Whether the model is big enough that its outputs should keep weights in an external file, as the export does."""
    from modelfoundry.compress.measure import onnx_size_bytes
    from modelfoundry.export import EXTERNAL_DATA_BYTES

    try:
        return onnx_size_bytes(fp32) > EXTERNAL_DATA_BYTES
    except Exception:  # noqa: BLE001 - not a readable model: let the quantizer report it
        return False


def _graph_feed(path: Path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`inputs` keyed by the graph's input names (as `measure.onnx_feed`; an old single "input" graph takes
    the one named input), floats float32 and integers int64."""
    import onnx

    from modelfoundry.compress.measure import onnx_feed

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}  # old opsets list initializers among the inputs
    return onnx_feed([i.name for i in graph.input if i.name not in initializers], inputs)


def _tensor(x: Any) -> torch.Tensor:
    """An array or tensor as a CPU tensor: floats float32, integers int64."""
    import torch

    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t.float() if t.is_floating_point() else t.long()


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ExportError(f"The '{name}' parameter of ort_static_int8 must be one of {', '.join(choices)}. "
                          f"Got {value!r} instead.")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the quantization tools meanwhile: library code never prints, but they log advice and print progress."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime.quantization logs through the root logger
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # percentile calibration print()s its progress
            yield
    finally:
        root.setLevel(level)
