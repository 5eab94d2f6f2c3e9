"""The GAN's torch modules (see models/gan.py): a DCGAN for images, an MLP GAN for numeric rows."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def _norm(layer: nn.Module, spectral: bool) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(layer) if spectral else layer


class ConvGenerator(nn.Module):
    """(B, latent + classes) -> (B, C, H, W) in [0, 1]: a linear layer to a (widths[0], H/2^k, W/2^k) grid, then
    k = len(widths) transposed convolutions that each double it (BatchNorm, ReLU), a 3x3 conv to C channels and a
    sigmoid; a grid that overshoots an odd size is cropped."""

    def __init__(self, shape: tuple[int, ...], n_in: int, widths: list[int]):
        super().__init__()
        channels, self.height, self.width = shape
        k = len(widths)
        self.grid = (widths[0], math.ceil(self.height / 2 ** k), math.ceil(self.width / 2 ** k))
        self.project = nn.Sequential(nn.Linear(n_in, math.prod(self.grid), bias=False),
                                     nn.BatchNorm1d(math.prod(self.grid)), nn.ReLU())
        layers: list[nn.Module] = []
        c_in = widths[0]
        for c_out in widths:  # (B, c_in, h, w) -> (B, c_out, 2h, 2w)
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU()]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.body(self.project(h).view(len(h), *self.grid))  # (B, C, H', W'), H' >= H
        return torch.sigmoid(x[:, :, :self.height, :self.width])


class ConvCritic(nn.Module):
    """(B, C, H, W) -> (B, features): strided 4x4 convolutions (halving the grid while it is 2 or more),
    LeakyReLU(0.2), flattened."""

    def __init__(self, shape: tuple[int, ...], widths: list[int], spectral: bool):
        super().__init__()
        c_in, height, width = shape
        layers: list[nn.Module] = []
        for c_out in widths:
            if min(height, width) >= 2:  # (B, c_in, h, w) -> (B, c_out, h/2, w/2)
                layers.append(_norm(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), spectral))
                height, width = height // 2, width // 2
            else:
                layers.append(_norm(nn.Conv2d(c_in, c_out, 3, padding=1), spectral))
            layers.append(nn.LeakyReLU(0.2))
            c_in = c_out
        layers.append(nn.Flatten())
        self.body = nn.Sequential(*layers)
        self.features = c_in * height * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MLPGenerator(nn.Module):
    """(B, latent + classes) -> (B, F): hidden layers with BatchNorm and ReLU, a linear output (standardised
    columns are unbounded)."""

    def __init__(self, n_features: int, n_in: int, widths: list[int]):
        super().__init__()
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.Linear(n_in, width, bias=False), nn.BatchNorm1d(width), nn.ReLU()]
            n_in = width
        layers.append(nn.Linear(n_in, n_features))
        self.body = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.body(h)


class MLPCritic(nn.Module):
    """(B, F) -> (B, widths[-1]): hidden layers with LeakyReLU(0.2)."""

    def __init__(self, n_features: int, widths: list[int], spectral: bool):
        super().__init__()
        layers: list[nn.Module] = []
        for width in widths:
            layers += [_norm(nn.Linear(n_features, width), spectral), nn.LeakyReLU(0.2)]
            n_features = width
        self.body = nn.Sequential(*layers)
        self.features = n_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class GAN(nn.Module):
    """A generator and a discriminator, saved and loaded together (one state dict).

    `forward(z, labels)` generates: z (B, latent_dim), labels (B,) class indices (ignored when unconditional)
    -> (B, *shape). `discriminate(x, labels)` gives (B,) logits of "real". A conditional generator reads the
    one-hot class beside the noise; a conditional discriminator adds <embed(class), features> to its logit (a
    projection discriminator).
    """

    def __init__(self, shape: tuple[int, ...], n_classes: int, latent_dim: int, g_widths: list[int],
                 d_widths: list[int], *, image: bool, spectral: bool = True):
        super().__init__()
        self.shape, self.n_classes, self.latent_dim = tuple(shape), n_classes, latent_dim
        n_in = latent_dim + n_classes
        if image:
            self.generator: nn.Module = ConvGenerator(self.shape, n_in, g_widths)
            self.critic: nn.Module = ConvCritic(self.shape, d_widths, spectral)
        else:
            self.generator = MLPGenerator(self.shape[0], n_in, g_widths)
            self.critic = MLPCritic(self.shape[0], d_widths, spectral)
        features = self.critic.features + 1  # + the batch's feature spread (minibatch standard deviation)
        self.head = _norm(nn.Linear(features, 1), spectral)
        self.embed = _norm(nn.Embedding(n_classes, features), spectral) if n_classes else None

    @property
    def conditional(self) -> bool:
        return self.n_classes > 0

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:  # given data rows: predict, evaluate, export or serve
            from modelfoundry.errors import ConfigError

            raise ConfigError("This model is a GAN (data.task: generative): it generates rows, it does not predict, "
                              "evaluate data files, export or serve.", "Draw rows with `foundry sample MODEL -n N -o "
                              "out.csv` (or out.png); its quality scores are in the run's eval/metrics.json.")
        if self.conditional:
            z = torch.cat([z, F.one_hot(labels, self.n_classes).to(z.dtype)], dim=1)  # (B, latent + classes)
        return self.generator(z)

    def discriminate(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.critic(x)  # (B, features)
        # how varied the batch is, a feature of every row: a generator that collapses to a few modes is caught
        spread = h.std(dim=0, unbiased=False).mean() if len(h) > 1 else h.new_zeros(())
        h = torch.cat([h, spread.expand(len(h), 1)], dim=1)  # (B, features + 1)
        logits = self.head(h).squeeze(-1)  # (B,)
        if self.conditional:
            logits = logits + (self.embed(labels) * h).sum(dim=1)
        return logits

    def generator_parameters(self) -> list[nn.Parameter]:
        return list(self.generator.parameters())

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return [p for m in (self.critic, self.head, self.embed) if m is not None for p in m.parameters()]

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """`n` generated rows (n, *shape), in eval mode (BatchNorm's running statistics); `labels` (n,) class
        indices for a conditional GAN (None: drawn uniformly)."""
        device = next(self.parameters()).device  # drawn on the CPU (where `generator` is), then moved
        if self.conditional and labels is None:
            labels = torch.randint(self.n_classes, (n,), generator=generator)
        z = torch.randn(n, self.latent_dim, generator=generator).to(device)
        labels = labels.to(device) if labels is not None else None
        was_training = self.training
        self.eval()
        try:
            return self(z, labels)
        finally:
            self.train(was_training)
