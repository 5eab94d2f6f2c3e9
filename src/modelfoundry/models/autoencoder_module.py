"""The autoencoder's torch module (its config and builder are in models/autoencoder.py)."""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import nn

from modelfoundry.models.layers import activation


class Autoencoder(nn.Module):
    """Encoder (Linear -> activation)* down to the code, decoder mirrored back to the input width; forward gives
    each row's mean squared reconstruction error, the anomaly score."""

    def __init__(self, input_shape: tuple[int, ...] | list[int], hidden: list[int], act: str, dropout: float = 0.0):
        super().__init__()
        width = math.prod(input_shape)
        widths = [width, *hidden]
        self.encoder = self._stack(widths, act, dropout, last_plain=False)
        self.decoder = self._stack(widths[::-1], act, dropout, last_plain=True)

    @staticmethod
    def _stack(widths: list[int], act: str, dropout: float, last_plain: bool) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(pairwise(widths)):
            layers.append(nn.Linear(a, b))
            if not (last_plain and i == len(widths) - 2):  # the reconstruction itself is linear
                layers.append(activation(act))
                if dropout:
                    layers.append(nn.Dropout(dropout))
        return nn.Sequential(*layers)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F) flattened inputs -> (B, F) their reconstruction."""
        return self.decoder(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)  # (B, F)
        return (self.reconstruct(flat) - flat).pow(2).mean(dim=1, keepdim=True)  # (B, 1)

    def training_loss(self) -> nn.Module:
        """The loss the loop minimises: the batch's mean anomaly score (the targets are ignored)."""
        return MeanScore()


class MeanScore(nn.Module):
    """Mean of the (B, 1) or (B,) scores; the targets are placeholders (labels never train an autoencoder)."""

    def forward(self, scores: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        return scores.float().mean()
