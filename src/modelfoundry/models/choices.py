"""Choices that several model configs share (plain types, no torch: config validation reads them)."""

from __future__ import annotations

from typing import Literal

Activation = Literal["relu", "gelu", "silu", "tanh", "leaky_relu", "elu"]  # models.layers.ACTIVATIONS builds them
Init = Literal["default", "xavier", "kaiming"]  # weight initialisation, see models.layers.init_weights
