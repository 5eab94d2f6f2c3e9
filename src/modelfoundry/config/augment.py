"""The `data.augment` section: random changes to the training batches, drawn afresh each epoch from the run's
seed (so a resumed run sees the batches an uninterrupted one would). Validation, test, predict and serve never
see them. Every transform is off unless its section is given; `p` is the chance a row (or, for mixup/cutmix, a
batch) gets it."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from modelfoundry.config.base import Section

Probability = Annotated[float, Field(ge=0, le=1)]


class FlipConfig(Section):
    p: Probability = 0.5
    horizontal: bool = True  # mirror left-right
    vertical: bool = False  # mirror top-bottom (rarely right for digits or text in images)

    @model_validator(mode="after")
    def _check(self) -> FlipConfig:
        if not (self.horizontal or self.vertical):
            raise ValueError("flip needs horizontal: true or vertical: true (or remove the flip section)")
        return self


class AffineConfig(Section):
    """Rotation, shift, zoom and shear in one resampling (`affine_grid` + `grid_sample`)."""

    p: Probability = 0.5
    rotate_deg: float = Field(15.0, ge=0, le=180)  # angle drawn uniformly in [-rotate_deg, rotate_deg]
    translate: float = Field(0.1, ge=0, le=0.5)  # shift up to this share of the width / height
    scale: tuple[float, float] = (0.9, 1.1)  # zoom factor drawn uniformly in [low, high]
    shear_deg: float = Field(0.0, ge=0, le=45)

    @model_validator(mode="after")
    def _check(self) -> AffineConfig:
        low, high = self.scale
        if not 0 < low <= high <= 4:
            raise ValueError(f"scale must be [low, high] with 0 < low <= high <= 4, got [{low:g}, {high:g}]")
        return self


class CropConfig(Section):
    """Random resized crop: a random part of the image, stretched back to the full size."""

    p: Probability = 0.5
    area: tuple[float, float] = (0.6, 1.0)  # the part's share of the image area, drawn in [low, high]
    ratio: tuple[float, float] = (0.75, 1.3333)  # its aspect ratio (width / height), drawn log-uniformly

    @model_validator(mode="after")
    def _check(self) -> CropConfig:
        if not 0 < self.area[0] <= self.area[1] <= 1:
            raise ValueError(f"area must be [low, high] with 0 < low <= high <= 1, got {list(self.area)}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must be [low, high] with 0 < low <= high, got {list(self.ratio)}")
        return self


class NoiseConfig(Section):
    p: Probability = 0.5
    std: float = Field(0.05, gt=0, le=10)  # Gaussian noise, in the units of the scaled inputs


class ColorConfig(Section):
    p: Probability = 0.5
    brightness: float = Field(0.2, ge=0, le=1)  # add a shift drawn in [-b, b] x the image's value range
    contrast: float = Field(0.2, ge=0, le=1)  # scale around the mean by a factor drawn in [1 - c, 1 + c]


class CutoutConfig(Section):
    p: Probability = 0.5
    size: float = Field(0.25, gt=0, le=1)  # side of the erased square, as a share of the image side
    holes: int = Field(1, ge=1, le=16)


class ImageAugmentConfig(Section):
    flip: FlipConfig | None = None
    affine: AffineConfig | None = None
    crop: CropConfig | None = None
    noise: NoiseConfig | None = None
    color: ColorConfig | None = None
    cutout: CutoutConfig | None = None


class TextAugmentConfig(Section):
    """Per-token probabilities; no synonyms: replacements come from the training vocabulary."""

    delete: float = Field(0.0, ge=0, le=0.5)  # drop a token
    swap: float = Field(0.0, ge=0, le=0.5)  # swap a token with its neighbour
    mask: float = Field(0.0, ge=0, le=0.5)  # replace a token with the unknown/mask token
    replace: float = Field(0.0, ge=0, le=0.5)  # replace a token with a random one from the training vocabulary


class TabularAugmentConfig(Section):
    noise: NoiseConfig | None = None  # Gaussian noise on the scaled numeric columns (not one-hot categories)


class MixConfig(Section):
    """Batch mixing with soft labels: each row is blended with another row of the batch (mixup: the whole row,
    cutmix: a rectangle of an image) and its target with the other's in the same proportion."""

    p: Probability = 0.5  # chance a batch is mixed
    alpha: float = Field(0.2, gt=0, le=10)  # the mixing proportion is drawn from Beta(alpha, alpha)


class AugmentConfig(Section):
    image: ImageAugmentConfig | None = None
    text: TextAugmentConfig | None = None
    tabular: TabularAugmentConfig | None = None
    mixup: MixConfig | None = None  # images or numeric rows
    cutmix: MixConfig | None = None  # images only

    @property
    def active(self) -> bool:
        """Whether any transform is configured."""
        return any(getattr(self, name) is not None for name in type(self).model_fields)
