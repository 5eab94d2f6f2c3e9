"""An ONNX graph behind the nn.Module call interface, for models whose runtime is ONNX Runtime (the int8 and
fp16 variants `foundry compress` makes): evaluate and predict then run the graph that is served."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn


class OnnxGraph(nn.Module):
    """forward(x) runs the graph on the CPU. A classifier's graph ends in a softmax, so forward returns the
    log of its probabilities (softmax of that gives the graph's probabilities back); a regressor's graph
    returns the standardised prediction (B, 1), as the torch model would."""

    def __init__(self, path: Path, task: str):
        super().__init__()
        self.path, self.task = str(path), task
        self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)  # a device for callers that ask one
        self._session = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        session = self._session or self._open()
        array = np.require(x.detach().cpu().numpy(), dtype=np.float32, requirements=["C"])
        out = session.run(None, {session.get_inputs()[0].name: array})[0]
        result = torch.from_numpy(np.asarray(out, dtype=np.float32))
        return torch.log(result.clamp_min(1e-30)) if self.task == "classification" else result

    def _open(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, min(4, (os.cpu_count() or 2) - 1))
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(self.path, sess_options=options, providers=["CPUExecutionProvider"])
        return self._session
