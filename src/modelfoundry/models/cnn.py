"""A small CNN for images: stages of conv blocks (optionally residual), global pooling, a dense head.

This module holds the `model: {name: cnn}` config and its builder; torch is imported inside the builder, so
validating a config never loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, field_validator

from modelfoundry.config.base import Section
from modelfoundry.errors import ConfigError
from modelfoundry.models.choices import Activation, Init

if TYPE_CHECKING:
    from torch import nn

    from modelfoundry.artifacts.inputs import InputSpec


class CNNConfig(Section):
    name: Literal["cnn"]
    channels: list[Annotated[int, Field(gt=0)]] = Field([32, 64], min_length=1)
    kernel_size: int = Field(3, gt=0)  # odd, so 'same' padding keeps the spatial size
    residual: bool = False  # each stage adds a residual block after its downsampling conv
    batch_norm: bool = True
    pool: Literal["max", "avg", "none"] = "max"  # downsampling between stages
    hidden: list[Annotated[int, Field(gt=0)]] = []  # dense layers after global average pooling
    activation: Activation = "relu"
    dropout: float = Field(0.0, ge=0, lt=1)
    init: Init = "kaiming"

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"kernel_size must be odd (3, 5, 7, ...) so padding keeps the image size, got {v}")
        return v


def build_cnn(config: CNNConfig, inputs: InputSpec, n_outputs: int) -> nn.Module:
    """A CNN from `CNNConfig` for an "image" input (B, C, H, W); spatial size halves between stages while it can.
    Numeric columns beside the image (an "numeric" input) join the pooled image features before the dense head."""
    if "image" not in inputs.names or len(inputs["image"].shape) != 3:
        shown = list(inputs[0].shape) if len(inputs) == 1 else repr(inputs)
        raise ConfigError(f"model cnn needs image inputs (C, H, W), but the data gives {shown}.",
                          "Declare the image columns with data.features: {'pixel_*': {type: image}}, "
                          "or use model: {name: mlp}.")
    from torch import nn

    from modelfoundry.models.layers import ConvBlock, ResidualBlock, activation, init_weights

    side: list[str] = []
    side_width = 0
    if inputs.names != ["image"]:
        from modelfoundry.models.combine import split_inputs

        _, side, side_width = split_inputs(inputs, ["image"], "cnn", "image", images=False)
    c_in, height, width = inputs["image"].shape
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
    trunk = len(layers)
    c_in += side_width  # numeric columns beside the image's features
    concat = c_in
    for hidden in config.hidden:
        layers += [nn.Linear(c_in, hidden), activation(config.activation)]
        if config.dropout:
            layers.append(nn.Dropout(config.dropout))
        c_in = hidden
    if config.dropout and not config.hidden:
        layers.append(nn.Dropout(config.dropout))
    layers.append(nn.Linear(c_in, n_outputs))
    if not side:  # an image alone: one Sequential, as models saved before mixed inputs are
        model = nn.Sequential(*layers)
        init_weights(model, config.init, config.activation)
        return model
    from modelfoundry.models.combine import combined

    encoder, head = nn.Sequential(*layers[:trunk]), nn.Sequential(*layers[trunk:])
    for part in (encoder, head):
        init_weights(part, config.init, config.activation)
    return combined(inputs, encoder, ["image"], side, concat, head)
