"""The public API: one module per verb; each composes the stages, makes the decisions and returns a result object.

Names are imported on first use, so importing the package costs nothing until a verb is called.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "run": "training",
    "train": "training",
    "evaluate": "evaluation",
    "predict": "prediction",
    "cross_validate": "cross_validation",
    "tune": "tuning",
    "compress": "compression",
    "export": "exporting",
    "serve": "serving",
    "model_dir": "arguments",
    "RunResult": "results",
    "TuneResult": "results",
    "CompressResult": "results",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"modelfoundry.api.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'modelfoundry.api' has no attribute {name!r}")
