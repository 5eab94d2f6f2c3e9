"""The reproducibility manifest: everything needed to explain why two runs differ."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("modelfoundry", "torch", "numpy", "pandas", "scikit-learn", "pydantic", "pyarrow", "matplotlib")


def build_manifest(*, seed: int, split_seed: int, device: str, determinism: dict[str, Any], config_hash: str,
                   fingerprint: dict[str, Any], project_dir: Path) -> dict[str, Any]:
    import torch

    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "packages": {name: _version(name) for name in PACKAGES},
        "device": device,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "determinism": determinism,
        "seeds": {"seed": seed, "split": split_seed},
        "config_hash": config_hash,
        "git": git_state(project_dir),
        "dataset": fingerprint,
    }


def git_state(directory: Path) -> dict[str, Any] | None:
    """Commit and dirtiness of the git working tree holding `directory`, or None outside one."""
    try:
        commit = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(directory), "status", "--porcelain"], capture_output=True,
                                text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
