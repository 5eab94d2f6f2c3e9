"""Multi-layer perceptron for tabular inputs: [Linear -> (BatchNorm) -> activation -> (Dropout)] x N -> Linear."""

from __future__ import annotations

from torch import nn

from modelfoundry.models.layers import activation, init_weights


def build_mlp(config, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """An MLP from `MLPConfig`; image inputs are flattened first."""
    layers: list[nn.Module] = [nn.Flatten()] if len(input_shape) > 1 else []
    width = 1
    for size in input_shape:
        width *= size
    for hidden in config.hidden:
        layers.append(nn.Linear(width, hidden, bias=not config.batch_norm))
        if config.batch_norm:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(activation(config.activation))
        if config.dropout:
            layers.append(nn.Dropout(config.dropout))
        width = hidden
    layers.append(nn.Linear(width, n_outputs))
    model = nn.Sequential(*layers)
    init_weights(model, config.init, config.activation)
    return model
