"""A generative adversarial network (`model: {name: gan}`, with `data.task: generative`).

A generator turns Gaussian noise (and, when conditional, a class) into rows like the training ones; a
discriminator learns to tell them from real rows, and the generator learns to fool it. Images (an "image" input,
pixels scaled to [0, 1]) get a DCGAN: transposed convolutions with BatchNorm up from a small grid, strided
convolutions with LeakyReLU down to one logit. Tables of numeric columns (a "numeric" input, standardised) get an
MLP generator and discriminator. The discriminator's layers carry spectral normalisation (a Lipschitz bound that
keeps its gradients useful to the generator); a conditional discriminator is a projection discriminator (the
class embedding dotted with its features). Training (two Adam optimizers, alternating steps, one-sided label
smoothing) is train/gan_loop.py.

This module holds the config and the builder; torch is imported inside the builder (the module itself lives in
models/gan_module.py), so validating a config never loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from modelfoundry.config.base import Section
from modelfoundry.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from modelfoundry.artifacts.inputs import InputSpec


class GANConfig(Section):
    name: Literal["gan"]
    latent_dim: int = Field(32, ge=1, le=1024)  # the generator's noise per row
    # images: channels of the generator's upsampling stages (each doubles the grid) and of the discriminator's
    # strided stages; tables: the widths of their hidden layers
    generator: list[Annotated[int, Field(gt=0)]] = Field([128, 64], min_length=1, max_length=6)
    discriminator: list[Annotated[int, Field(gt=0)]] = Field([64, 128], min_length=1, max_length=6)
    conditional: bool | Literal["auto"] = "auto"  # auto: when data.target names a class column with 2+ classes
    # Adam, betas (0.5, 0.999), for each network; the discriminator learns faster (the two-timescale rule)
    g_lr: float = Field(1e-4, gt=0, le=1)
    d_lr: float = Field(4e-4, gt=0, le=1)
    label_smoothing: float = Field(0.1, ge=0, lt=0.5)  # one-sided: real rows' target is 1 - label_smoothing
    n_critic: int = Field(1, ge=1, le=10)  # discriminator steps per generator step
    spectral_norm: bool = True  # on the discriminator's layers
    ema_decay: float = Field(0.999, ge=0, lt=1)  # the generator kept is a moving average of its weights; 0: the last


def build_gan(config: GANConfig, inputs: InputSpec, n_outputs: int) -> nn.Module:
    """A GAN for one float input, "image" (C, H, W) -> DCGAN, or "numeric" (F,) -> MLP GAN. `n_outputs` is the
    number of classes of the label column (1 without one); the GAN is conditional on them when
    `config.conditional` is true, or "auto" and there are 2 or more."""
    from modelfoundry.models.gan_module import GAN

    if len(inputs) != 1 or inputs[0].name not in ("image", "numeric") or inputs[0].dtype != "float32":
        kinds = ", ".join(f"'{f.name}'" for f in inputs)
        raise ConfigError(f"model gan generates an image or numeric columns, but the data gives inputs {kinds}.",
                          "Keep one image feature, or numeric columns only: leave text and categorical columns out "
                          "with data.features: {COLUMN: {type: ignore}}.")
    if config.conditional is True and n_outputs < 2:
        raise ConfigError("model.conditional is true, but the data has no class column with 2 or more classes.",
                          "Set data.target to the class column, or model.conditional: auto.")
    n_classes = n_outputs if config.conditional is not False and n_outputs >= 2 else 0
    field = inputs[0]
    return GAN(tuple(field.shape), n_classes, config.latent_dim, config.generator, config.discriminator,
               image=field.name == "image", spectral=config.spectral_norm)
