"""Measure a model variant on the runtime it will be served with: latency, size on disk, parameters, outputs.

ONNX variants run in an InferenceSession configured exactly as `modelfoundry.export` serves them; torch
variants run eagerly (or compiled, if the module is) under `torch.inference_mode()`. Latencies are the
median wall time of one call on a fixed random batch of every named input (`InputSpec.example(batch, seed=0)`:
the same numbers for every variant compared), after a warm-up, over at least `repeats` calls and
at least `min_time_s` seconds, so a noisy machine moves the median rather than the answer.
"""

from __future__ import annotations

import io
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelfoundry.artifacts.inputs import rows_of
from modelfoundry.errors import ExportError
from modelfoundry.models.onnx_graph import serving_threads

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from torch import nn

    from modelfoundry.artifacts.inputs import InputSpec

PREDICT_BATCH = 4096
_BATCHNORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime session set up like the one `foundry serve` and `export_onnx` use.

    Args:
        path: an .onnx file.
        threads: intra-op threads; default the serving choice, max(1, min(4, cores - 1)).

    Returns:
        An `onnxruntime.InferenceSession` on the CPU execution provider.
    """
    from modelfoundry.models.onnx_graph import ort_session

    return ort_session(path, threads)


def onnx_latency_ms(path: str | Path, inputs: InputSpec, batch: int, *, warmup: int = 10,
                    repeats: int = 50, min_time_s: float = 0.3, threads: int | None = None) -> float:
    """Median wall time of one `session.run` on a fixed random batch of every named input, in milliseconds.

    Args:
        path: an .onnx file with one graph input per named input of `inputs` (or, exported before named
            inputs, one input called "input").
        inputs: the model's input spec (the saved record's `input_spec`).
        batch: rows per call.
        warmup: calls made before timing (session start-up, allocator growth, caches).
        repeats: the fewest timed calls.
        min_time_s: the least total time spent timing; more calls are made until it is reached.
        threads: intra-op threads; default the serving choice (see `onnx_session`).
    """
    session = onnx_session(path, threads)
    feed = _session_feed(session, _random_batch(inputs, batch))
    output = session.get_outputs()[0].name
    return _median_ms(lambda: session.run([output], feed), warmup, repeats, min_time_s)


def torch_latency_ms(model: nn.Module, inputs: InputSpec, batch: int, *, warmup: int = 10,
                     repeats: int = 50, min_time_s: float = 0.3, threads: int | None = None) -> float:
    """Median wall time of one forward pass under `torch.inference_mode()`, in milliseconds.

    Float inputs are cast to the dtype of the module's first floating-point parameter or buffer, so fp32,
    bf16/fp16-weight and eager-quantized modules (whose int8 weights are not parameters) all run; integer
    inputs (token ids, masks) stay int64. The module is called with the inputs in the spec's order.

    Args:
        model: the module; put in eval mode.
        inputs: the model's input spec (the saved record's `input_spec`).
        batch: rows per call.
        warmup: calls made before timing (for a `torch.compile`d module the first ones compile).
        repeats: the fewest timed calls.
        min_time_s: the least total time spent timing.
        threads: torch intra-op threads while timing (restored afterwards); default the same count as
            `onnx_session`, so candidates on both runtimes are compared on the same cores (with all cores
            on a busy machine, OpenMP's barriers wait on descheduled threads: 10-40 ms stalls were measured
            on 2 cores).
    """
    import torch

    model.eval()
    dtype = first_float_dtype(model)
    x = [t.to(dtype) if t.is_floating_point() else t
         for t in map(torch.from_numpy, inputs.arrange(_random_batch(inputs, batch)))]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or serving_threads())
    try:
        with torch.inference_mode():
            return _median_ms(lambda: model(*x), warmup, repeats, min_time_s)
    finally:
        torch.set_num_threads(previous)


def first_float_dtype(model: nn.Module) -> Any:
    """The dtype of the module's first floating-point parameter or buffer; float32 when it has none."""
    import itertools

    import torch

    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def onnx_size_bytes(path: str | Path) -> int:
    """Bytes on disk of an ONNX model: the .onnx file plus every external data file it names."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    locations = {entry.value for tensor in model.graph.initializer
                 if tensor.data_location == onnx.TensorProto.EXTERNAL
                 for entry in tensor.external_data if entry.key == "location"}
    return path.stat().st_size + sum((path.parent / name).stat().st_size for name in locations)


def onnx_params(path: str | Path) -> int:
    """Elements in all initializers of an ONNX model.

    Every initializer counts, whatever its dtype: an int8 weight counts once (its fp32 original is gone
    after quantization), and so do the quantization scales and zero points and the few shape constants the
    exporter stores, so a quantized model reads a little above its fp32 original (one scale and zero point
    per tensor or channel). BatchNorm folded into a convolution counts as the convolution's weights only,
    so an exported model may read below `torch_params` of the module it came from.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)  # dims are in the protobuf; no need for the bytes
    return int(sum(int(np.prod(tensor.dims, dtype=np.int64)) for tensor in model.graph.initializer))


def torch_params(model: nn.Module) -> int:
    """Elements in the module's state dict except BatchNorm running statistics.

    The state dict rather than `parameters()`, because quantized modules keep their int8 weights outside
    `parameters()` (packed, or as graph constants); like `onnx_params`, their scales and zero points count.
    """
    total = 0
    for name, value in model.state_dict().items():
        if not name.endswith(_BATCHNORM_STATISTICS):
            total += sum(tensor.numel() for tensor in _tensors_in(value))
    return total


def torch_size_bytes(model: nn.Module) -> int:
    """Bytes of `torch.save(model.state_dict())`, written to memory."""
    import torch

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def onnx_predict(path: str | Path, X: Mapping[str, np.ndarray], batch: int = PREDICT_BATCH) -> np.ndarray:
    """The model's first output on the named inputs `X` (N rows each), in batches: probabilities or
    standardised values."""
    session = onnx_session(path)
    output = session.get_outputs()[0].name
    feed = _session_feed(session, X)
    n = rows_of(feed)
    parts = [session.run([output], {k: v[i:i + batch] for k, v in feed.items()})[0] for i in range(0, n, batch)]
    if not parts:
        raise ValueError("onnx_predict needs at least one row.")
    return np.concatenate(parts)


def onnx_feed(names: list[str], inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`inputs` keyed by the graph's input `names`, floats as float32 and integers as int64, C-contiguous.

    The graph's inputs are named as the model's named inputs; an export from before named inputs has one
    input called "input", which takes the one named input whatever its name.
    """
    if set(inputs) == set(names):
        arrays = [inputs[n] for n in names]
    elif len(inputs) == len(names) == 1:
        arrays = list(inputs.values())
    else:
        raise ExportError(f"The ONNX model takes the input(s) {names}, but {list(inputs)} were given.",
                          "Measure the model with the inputs of its saved input spec, or export it again.")
    return {n: np.require(a, dtype=np.float32 if a.dtype.kind == "f" else np.int64, requirements=["C"])
            for n, a in zip(names, arrays)}


SEQUENCE_INPUTS = ("tokens", "attention_mask")  # their steps (and windows) must stay dynamic to be served


def check_sequence_axes(path: str | Path) -> None:
    """Raise an ExportError when a graph fixes the length of its token inputs: the server pads each batch to
    its longest text, so a graph that takes one length only fails on every other (a 500, not an answer)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    for node in graph.input:
        if node.name not in SEQUENCE_INPUTS:
            continue
        dims = node.type.tensor_type.shape.dim
        fixed = [d.dim_value for d in list(dims)[1:] if not d.dim_param]
        if fixed:
            raise ExportError(f"The graph {Path(path).name} takes '{node.name}' of fixed length {fixed} only, but a "
                              "served batch is padded to its longest text, so it could not be served.",
                              "The export fixed it (seen with recurrent models exported a second time in one "
                              "process); the variant is left out, the others are unaffected.")


def _session_feed(session: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return onnx_feed([node.name for node in session.get_inputs()], inputs)


# ---------------------------------------------------------------------------------------------- internals
def _random_batch(inputs: InputSpec, batch: int) -> dict[str, np.ndarray]:
    """A fixed batch of every named input (standard-normal floats, zero token ids, a mask of ones): the same
    numbers for every variant compared."""
    return inputs.example(batch, seed=0)


def _median_ms(call: Callable[[], Any], warmup: int, repeats: int, min_time_s: float) -> float:
    for _ in range(warmup):
        call()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - started < min_time_s:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _tensors_in(value: Any) -> list[Any]:
    """The tensors inside a state-dict entry (quantized layers store tuples of packed params)."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors_in(item)]
    return []
