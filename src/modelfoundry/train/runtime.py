"""Where and how training runs: device choice, seeding, determinism and thread settings."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from modelfoundry.errors import ConfigError


def select_device(name: str) -> torch.device:
    """'auto' picks CUDA when present (then Apple MPS), else the CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"training.device is '{name}', but this machine has no usable CUDA device.",
                          "Use device: auto (or cpu) to train on the CPU.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("training.device is 'mps', but Apple's MPS backend is not available here.",
                          "Use device: auto.")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> dict[str, Any]:
    """Seed Python, NumPy and torch; with `deterministic`, ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        if not (torch.are_deterministic_algorithms_enabled()  # setting it costs ~50 ms, once per trial or fold
                and torch.is_deterministic_algorithms_warn_only_enabled()):
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return determinism_flags()


def determinism_flags() -> dict[str, Any]:
    return {"deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "num_threads": torch.get_num_threads()}


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random stream, as tensors and plain Python values (so a checkpoint loads with weights_only)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(), "generator": generator.get_state(),
             "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`, or None for plain fp32."""
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("training.precision is fp16, which needs a CUDA device; this run is on the CPU.",
                          "Use precision: bf16 on the CPU (or fp32).")
    return torch.float16 if precision == "fp16" else torch.bfloat16
