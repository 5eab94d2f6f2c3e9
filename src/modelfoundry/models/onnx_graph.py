"""An ONNX graph behind the nn.Module call interface, for models whose runtime is ONNX Runtime (the int8 and
fp16 variants `foundry compress` makes): evaluate and predict then run the graph that is served.

`ort_session` is the one ONNX Runtime setup of the platform: export's parity check, the server, compression
measurements and this module all use it, so what is measured is what is served."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn


class OnnxGraph(nn.Module):
    """forward(*inputs) runs the graph on the CPU, the arrays fed to the graph's inputs in order (its inputs are
    the model's named inputs, in the spec's order). A classifier's graph ends in a softmax, so forward returns the
    log of its probabilities (softmax of that gives the graph's probabilities back); a regressor's graph
    returns the standardised prediction (B, 1), as the torch model would."""

    def __init__(self, path: Path, task: str):
        super().__init__()
        self.path, self.task = str(path), task
        self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)  # a device for callers that ask one
        self._session = None

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        session = self._session or self._open()
        feed = {}
        for node, x in zip(session.get_inputs(), inputs):
            array = x.detach().cpu().numpy()
            feed[node.name] = np.require(array, dtype=np.float32 if array.dtype.kind == "f" else None,
                                         requirements=["C"])
        out = session.run(None, feed)[0]
        result = torch.from_numpy(np.asarray(out, dtype=np.float32))
        return torch.log(result.clamp_min(1e-30)) if self.task == "classification" else result

    def _open(self):
        self._session = ort_session(self.path)
        return self._session


MAX_THREADS = 4  # ONNX Runtime intra-op threads: more rarely helps small models and starves other requests


def ort_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session: `threads` intra-op threads (default max(1, min(4, cores - 1)), one core
    left for the HTTP side), sequential execution, all graph optimisations, no spinning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or serving_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    # no busy-waiting between calls: under a server's uneven load, spinning threads burn the cores the
    # HTTP side needs (measured: 2-4x the CPU per call at batch 1-32)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def serving_threads() -> int:
    return max(1, min(MAX_THREADS, usable_cores() - 1))


def usable_cores() -> int:
    """Cores this process may use (the affinity mask, which containers and taskset restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
