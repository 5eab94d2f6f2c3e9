"""Building blocks of the models (torch modules): activations by name, weight initialisation, and the blocks
the MLP and the CNN are made of (structured pruning finds them by type)."""

from __future__ import annotations

import torch
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


class LinearSkip(nn.Module):
    """deep(x) + linear(x): the network contains a linear model and learns what it misses (wide & deep)."""

    def __init__(self, deep: nn.Module, in_features: int, n_outputs: int):
        super().__init__()
        self.deep = deep
        self.linear = nn.Linear(in_features, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.deep(x) + self.linear(x.flatten(1))  # (B, n_outputs)


class ConvBlock(nn.Module):
    """conv -> (BatchNorm) -> activation."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, batch_norm: bool, act: str):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=not batch_norm)
        self.norm = nn.BatchNorm2d(c_out) if batch_norm else nn.Identity()
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class ResidualBlock(nn.Module):
    """Two same-width convs with an identity shortcut (the ResNet basic block)."""

    def __init__(self, channels: int, kernel_size: int, batch_norm: bool, act: str):
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(channels, channels, kernel_size, padding=pad, bias=not batch_norm)
        self.norm1 = nn.BatchNorm2d(channels) if batch_norm else nn.Identity()
        self.conv2 = nn.Conv2d(channels, channels, kernel_size, padding=pad, bias=not batch_norm)
        self.norm2 = nn.BatchNorm2d(channels) if batch_norm else nn.Identity()
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        return self.act(x + self.norm2(self.conv2(out)))


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, C) states, (B, T) mask (1 real, 0 padding) -> (B, C): the mean over each row's real steps (0 for a
    row without any)."""
    weights = mask.unsqueeze(-1).to(states.dtype)  # (B, T, 1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
