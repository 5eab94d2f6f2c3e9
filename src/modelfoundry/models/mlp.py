"""Multi-layer perceptron for tabular inputs: [Linear -> (BatchNorm) -> activation -> (Dropout)] x N -> Linear."""

from __future__ import annotations

import math

import torch
from torch import nn

from modelfoundry.models.layers import activation, init_weights


class LinearSkip(nn.Module):
    """deep(x) + linear(x): the network contains a linear model and learns what it misses (wide & deep)."""

    def __init__(self, deep: nn.Module, in_features: int, n_outputs: int):
        super().__init__()
        self.deep = deep
        self.linear = nn.Linear(in_features, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.deep(x) + self.linear(x.flatten(1))  # (B, n_outputs)


def build_mlp(config, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """An MLP from `MLPConfig`; image inputs are flattened first."""
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
