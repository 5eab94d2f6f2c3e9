"""Small building blocks shared by the models: activations by name and weight initialisation."""

from __future__ import annotations

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh,
               "leaky_relu": nn.LeakyReLU, "elu": nn.ELU}


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


def init_weights(model: nn.Module, scheme: str, nonlinearity: str) -> None:
    """xavier / kaiming init for Linear and Conv weights (biases to zero); 'default' keeps PyTorch's."""
    if scheme == "default":
        return
    gain_name = "relu" if nonlinearity in ("relu", "gelu", "silu", "elu") else "leaky_relu" \
        if nonlinearity == "leaky_relu" else "tanh"
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            if scheme == "xavier":
                nn.init.xavier_uniform_(module.weight, gain=nn.init.calculate_gain(gain_name))
            else:
                nn.init.kaiming_normal_(module.weight, nonlinearity=gain_name)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
