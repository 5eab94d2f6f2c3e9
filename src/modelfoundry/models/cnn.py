"""A small CNN for images: stages of conv blocks (optionally residual), global pooling, a dense head."""

from __future__ import annotations

import torch
from torch import nn

from modelfoundry.models.layers import activation, init_weights


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


def build_cnn(config, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """A CNN from `CNNConfig` for (C, H, W) inputs; spatial size halves between stages while it can."""
    if len(input_shape) != 3:
        from modelfoundry.errors import ConfigError

        raise ConfigError(f"model cnn needs image inputs (C, H, W), but the data gives {list(input_shape)}.",
                          "Declare the image columns with data.features: {'pixel_*': {type: image}}, "
                          "or use model: {name: mlp}.")
    c_in, height, width = input_shape
    layers: list[nn.Module] = []
    for i, channels in enumerate(config.channels):
        if i > 0 and config.pool != "none" and min(height, width) >= 2:  # (B, C, H, W) -> (B, C, H/2, W/2)
            layers.append(nn.MaxPool2d(2) if config.pool == "max" else nn.AvgPool2d(2))
            height, width = height // 2, width // 2
        layers.append(ConvBlock(c_in, channels, config.kernel_size, config.batch_norm, config.activation))
        if config.residual:
            layers.append(ResidualBlock(channels, config.kernel_size, config.batch_norm, config.activation))
        c_in = channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]  # (B, C, H, W) -> (B, C)
    for hidden in config.hidden:
        layers += [nn.Linear(c_in, hidden), activation(config.activation)]
        if config.dropout:
            layers.append(nn.Dropout(config.dropout))
        c_in = hidden
    if config.dropout and not config.hidden:
        layers.append(nn.Dropout(config.dropout))
    layers.append(nn.Linear(c_in, n_outputs))
    model = nn.Sequential(*layers)
    init_weights(model, config.init, config.activation)
    return model
