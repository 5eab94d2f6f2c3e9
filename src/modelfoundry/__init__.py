"""modelfoundry: from a dataset to a trained, evaluated, reproducible model with one YAML config.

    from modelfoundry import run
    result = run("examples/breast_cancer.yaml")
    print(result.metrics["accuracy"], result.run_dir)

Names are imported on first use, so `import modelfoundry` (and `foundry --help`) stays fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "run": "modelfoundry.api",
    "train": "modelfoundry.api",
    "evaluate": "modelfoundry.api",
    "predict": "modelfoundry.api",
    "cross_validate": "modelfoundry.api",
    "tune": "modelfoundry.api",
    "compress": "modelfoundry.api",
    "export": "modelfoundry.api",
    "serve": "modelfoundry.api",
    "TuneResult": "modelfoundry.api",
    "RunResult": "modelfoundry.api",
    "CompressResult": "modelfoundry.api",
    "CVResult": "modelfoundry.cv",
    "load_config": "modelfoundry.config",
    "Config": "modelfoundry.config",
    "FoundryError": "modelfoundry.errors",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'modelfoundry' has no attribute {name!r}")
