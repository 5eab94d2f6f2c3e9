"""Multi-layer perceptron for tabular inputs: [Linear -> (BatchNorm) -> activation -> (Dropout)] x N -> Linear.

This module holds the `model: {name: mlp}` config and its builder; torch is imported inside the builder, so
validating a config never loads it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from modelfoundry.config.base import Section
from modelfoundry.errors import ConfigError
from modelfoundry.models.choices import Activation, Init

if TYPE_CHECKING:
    from torch import nn

    from modelfoundry.artifacts.inputs import InputSpec


class MLPConfig(Section):
    name: Literal["mlp"] = "mlp"
    hidden: list[Annotated[int, Field(gt=0)]] = [128, 64]
    activation: Activation = "relu"
    dropout: float = Field(0.0, ge=0, lt=1)
    batch_norm: bool = False
    init: Init = "default"
    linear_skip: bool = False  # add a linear path from inputs to outputs (wide & deep): contains the linear model


def build_mlp(config: MLPConfig, inputs: InputSpec, n_outputs: int) -> nn.Module:
    """An MLP from `MLPConfig` over one float input: "numeric" (B, F), or "image" (B, C, H, W) flattened first."""
    from torch import nn

    from modelfoundry.models.layers import LinearSkip, activation, init_weights

    if len(inputs) != 1 or inputs[0].dtype != "float32":
        raise ConfigError(f"model mlp takes one float input (numeric features or an image), but the data gives "
                          f"{inputs!r}.", "Use a model for these inputs, or select the columns with data.features.")
    input_shape = inputs[0].shape
    layers: list[nn.Module] = [nn.Flatten()] if len(input_shape) > 1 else []
    width = in_features = math.prod(input_shape)
    for hidden in config.hidden:
        layers.append(nn.Linear(width, hidden, bias=not config.batch_norm))
        if config.batch_norm:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(activation(config.activation))
        if config.dropout:
            layers.append(nn.Dropout(config.dropout))
        width = hidden
    layers.append(nn.Linear(width, n_outputs))
    model: nn.Module = nn.Sequential(*layers)
    init_weights(model, config.init, config.activation)
    if config.linear_skip:
        model = LinearSkip(model, in_features, n_outputs)
    return model
