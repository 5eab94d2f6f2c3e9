"""Model table: short name -> builder(config, input_shape, n_outputs) -> torch.nn.Module.

Adding a model is one module with a builder, its config class in config.py, and one entry here;
the training loop never changes for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from modelfoundry.errors import ConfigError, unknown_name

if TYPE_CHECKING:
    from torch import nn

# name -> "module:function", imported on use so the table itself costs nothing
MODELS = {
    "mlp": "modelfoundry.models.mlp:build_mlp",
    "cnn": "modelfoundry.models.cnn:build_cnn",
}


def build_model(config: Any, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """Build the model named by `config.name` for inputs of `input_shape` (no batch dim)."""
    if config.name not in MODELS:
        raise ConfigError(unknown_name("model", config.name, MODELS))
    module, function = MODELS[config.name].split(":")
    builder = getattr(importlib.import_module(module), function)
    return builder(config, tuple(input_shape), n_outputs)
