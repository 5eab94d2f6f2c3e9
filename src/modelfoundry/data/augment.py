"""Random changes to the training batches (`data.augment`), applied by the loop after each batch is drawn.

`build_augmenter` checks the config against the data (all misfits in one ConfigError, before training) and
returns an `Augmenter`; the loop calls `augmenter(inputs, epoch, step)` on the training batches only. Every draw
comes from a generator seeded by (seed, epoch, step) alone - never torch's global stream - so a resumed run,
even one resumed within an epoch, changes its batches exactly as an uninterrupted one does, and dropout draws
are the same with or without augmentation.

Mixup and cutmix blend each row with row `perm[i]` of the batch by a proportion `lam`; the loop then takes
`lam * loss(out, y) + (1 - lam) * loss(out, y[perm])` (`Mix.loss`), which is mixing with soft labels for
cross-entropy and works unchanged for every other loss (focal, class weights, regression, distillation).

The transforms themselves are in augment_image.py and augment_text.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from modelfoundry.data import augment_image as image_ops
from modelfoundry.data.augment_text import TokenChanges, change_tokens
from modelfoundry.errors import ConfigError

if TYPE_CHECKING:
    from modelfoundry.artifacts.inputs import InputSpec
    from modelfoundry.config import AugmentConfig, DataConfig
    from modelfoundry.config.augment import ImageAugmentConfig, MixConfig, NoiseConfig

UNSUPPORTED_TASKS = {"causal_lm": "a causal language model's examples", "anomaly": "an autoencoder's normal rows",
                     "generative": "a GAN's training images"}
MASK_CANDIDATES = ("[MASK]", "<mask>", "[UNK]", "<unk>", "<|unk|>")


def step_seed(seed: int, epoch: int, step: int) -> int:
    """The seed of one batch's draws: a hash of (seed, epoch, step), so nothing but those decides them."""
    digest = hashlib.blake2b(f"augment:{seed}:{epoch}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class Mix:
    """A batch blended by mixup or cutmix: row i is `lam` of itself and `1 - lam` of row `perm[i]`."""

    perm: torch.Tensor  # (B,)
    lam: float
    kind: str  # "mixup" or "cutmix"

    def loss(self, loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], out: torch.Tensor,
             y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The mixed loss: lam * loss_fn(out, y, rows) + (1 - lam) * loss_fn(out, y[perm], rows[perm])."""
        perm = self.perm.to(y.device)
        return self.lam * loss_fn(out, y, rows) + (1 - self.lam) * loss_fn(out, y[perm], rows[perm])


class Augmenter:
    """Applies the configured transforms to a batch of named inputs (in the input spec's order)."""

    def __init__(self, names: list[str], seed: int, *, image: ImageAugmentConfig | None = None,
                 fill: float = 0.0, text: TokenChanges | None = None,
                 tabular: tuple[NoiseConfig, np.ndarray] | None = None,
                 mixup: MixConfig | None = None, cutmix: MixConfig | None = None):
        self.names, self.seed = names, seed
        self.image, self.fill, self.text, self.mixup, self.cutmix = image, fill, text, mixup, cutmix
        self.tabular = tabular  # (noise, which numeric columns get it: (F,) bool)
        self._columns: torch.Tensor | None = None

    @property
    def transforms(self) -> list[str]:
        """The names of the active transforms, e.g. ['image.affine', 'image.cutout', 'mixup']."""
        out = [f"image.{k}" for k in type(self.image).model_fields if getattr(self.image, k)] if self.image else []
        if self.text:
            out += [f"text.{k}" for k in ("delete", "swap", "mask", "replace") if getattr(self.text, k)]
        out += ["tabular.noise"] if self.tabular else []
        return out + [k for k in ("mixup", "cutmix") if getattr(self, k) is not None]

    def __call__(self, inputs: tuple[torch.Tensor, ...], epoch: int, step: int
                 ) -> tuple[tuple[torch.Tensor, ...], Mix | None]:
        """The batch with its changes for (epoch, step), and the mixing done to it (None when not mixed)."""
        device = inputs[0].device
        seed = step_seed(self.seed, epoch, step)
        generator = torch.Generator(device=device).manual_seed(seed)
        scalars = np.random.default_rng(seed)  # per-batch numbers (mixing proportion, which mix)
        batch = dict(zip(self.names, inputs))
        if self.image is not None:
            batch["image"] = self._image(batch["image"], generator)
        if self.text is not None:
            batch["tokens"], batch["attention_mask"] = change_tokens(batch["tokens"], batch["attention_mask"],
                                                                     self.text, generator)
        if self.tabular is not None:
            batch["numeric"] = self._noise(batch["numeric"], generator)
        mix = self._mix(batch, generator, scalars)
        return tuple(batch[name] for name in self.names), mix

    # ------------------------------------------------------------------------------------------- images
    def _image(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:  # (B, C, H, W)
        cfg, rows, dev = self.image, len(x), x.device
        if cfg.flip is not None:
            chosen = image_ops.rows_chosen(cfg.flip.p, rows, g, dev)
            vertical = image_ops.rows_chosen(0.5 if cfg.flip.horizontal else 1.0, rows, g, dev) \
                if cfg.flip.vertical else torch.zeros(rows, dtype=torch.bool, device=dev)
            x = image_ops.flip(x, chosen & ~vertical, chosen & vertical)
        if cfg.affine is not None or cfg.crop is not None:
            x = self._resample(x, g)
        if cfg.noise is not None:
            chosen = image_ops.rows_chosen(cfg.noise.p, rows, g, dev)
            noise = torch.randn(x.shape, generator=g, device=dev, dtype=x.dtype) * cfg.noise.std
            x = x + noise * chosen[:, None, None, None]
        if cfg.color is not None:
            c = cfg.color
            x = image_ops.color(x, image_ops.rows_chosen(c.p, rows, g, dev),
                                image_ops.uniform(-c.brightness, c.brightness, rows, g, dev),
                                image_ops.uniform(1 - c.contrast, 1 + c.contrast, rows, g, dev))
        if cfg.cutout is not None:
            c, (height, width) = cfg.cutout, x.shape[-2:]
            side_h, side_w = max(1, round(c.size * height)), max(1, round(c.size * width))
            chosen = image_ops.rows_chosen(c.p, rows, g, dev)
            top = torch.randint(height - side_h + 1, (rows, c.holes), generator=g, device=dev)
            left = torch.randint(width - side_w + 1, (rows, c.holes), generator=g, device=dev)
            x = image_ops.cutout(x, chosen, top, left, side_h, side_w)
        return x

    def _resample(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Affine and crop as one output-to-input map per row, resampled once for the rows that get either."""
        cfg, rows, dev = self.image, len(x), x.device
        eye = torch.eye(3, device=dev).expand(rows, 3, 3)
        maps, moved = eye, torch.zeros(rows, dtype=torch.bool, device=dev)
        if cfg.crop is not None:
            c = cfg.crop
            chosen = image_ops.rows_chosen(c.p, rows, g, dev)
            area = image_ops.uniform(c.area[0], c.area[1], rows, g, dev)
            ratio = torch.exp(image_ops.uniform(float(np.log(c.ratio[0])), float(np.log(c.ratio[1])), rows, g, dev))
            centre = image_ops.uniform(-1.0, 1.0, 2 * rows, g, dev).reshape(rows, 2)
            maps = torch.where(chosen[:, None, None], image_ops.crop_map(area, ratio, centre), eye)
            moved |= chosen
        if cfg.affine is not None:
            a = cfg.affine
            chosen = image_ops.rows_chosen(a.p, rows, g, dev)
            inverse = image_ops.affine_inverse(
                image_ops.uniform(-a.rotate_deg, a.rotate_deg, rows, g, dev),
                image_ops.uniform(-a.translate, a.translate, 2 * rows, g, dev).reshape(rows, 2),
                image_ops.uniform(a.scale[0], a.scale[1], rows, g, dev),
                image_ops.uniform(-a.shear_deg, a.shear_deg, rows, g, dev), x.shape[-2], x.shape[-1])
            maps = torch.where(chosen[:, None, None], maps @ inverse, maps)  # crop first, then the affine change
            moved |= chosen
        if not bool(moved.any()):
            return x
        out = x.clone()
        out[moved] = image_ops.warp(x[moved], maps[moved], self.fill)
        return out

    # ------------------------------------------------------------------------------------- numeric rows
    def _noise(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:  # (B, F)
        noise, columns = self.tabular
        if self._columns is None or self._columns.device != x.device:
            self._columns = torch.as_tensor(columns, device=x.device)
        chosen = image_ops.rows_chosen(noise.p, len(x), g, x.device)
        draws = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype) * noise.std
        return x + draws * (chosen[:, None] & self._columns[None, :])

    # ------------------------------------------------------------------------------------------- mixing
    def _mix(self, batch: dict[str, torch.Tensor], g: torch.Generator, scalars: np.random.Generator) -> Mix | None:
        fired = [(kind, cfg) for kind, cfg in (("mixup", self.mixup), ("cutmix", self.cutmix))
                 if cfg is not None and scalars.random() < cfg.p]
        if not fired:
            return None
        kind, cfg = fired[int(scalars.integers(len(fired)))]  # both fired: one of them, at even odds
        lam = float(scalars.beta(cfg.alpha, cfg.alpha))
        rows = len(next(iter(batch.values())))
        perm = torch.randperm(rows, generator=g, device=next(iter(batch.values())).device)
        if kind == "cutmix":
            x = batch["image"]
            height, width = x.shape[-2:]
            box = image_ops.cutmix_box(lam, height, width, int(scalars.integers(height)), int(scalars.integers(width)))
            batch["image"] = image_ops.paste(x, perm, box)
            lam = 1.0 - (box[1] - box[0]) * (box[3] - box[2]) / (height * width)  # the share actually kept
        else:
            for name in ("image", "numeric"):
                if name in batch:
                    batch[name] = lam * batch[name] + (1 - lam) * batch[name][perm]
        return Mix(perm, lam, kind)


def check_augment_task(cfg: DataConfig) -> None:
    """ConfigError when `data.augment` is set for data it cannot apply to at all (a language model's examples,
    a time series, an autoencoder's or a GAN's rows): checked from the config alone, before any data is read."""
    if not cfg.augment.active:
        return
    what = "a time series' windows" if cfg.time_series is not None else UNSUPPORTED_TASKS.get(str(cfg.task))
    if what is not None:
        raise ConfigError(f"data.augment: augmentation changes the inputs of classifiers and regressors; it does not "
                          f"apply to {what} (data.task: {cfg.task}).", "Remove the data.augment section.")


def build_augmenter(cfg: AugmentConfig, task: str, spec: InputSpec, preprocessing: Mapping[str, Any],
                    train: Mapping[str, np.ndarray], seed: int, *, frozen_encoder: bool = False) -> Augmenter | None:
    """The augmenter of `data.augment` for data with these inputs, or None when nothing is configured.

    Args:
        task: the data's task (augmentation applies to classification and regression).
        spec: the model's named inputs.
        preprocessing: the fitted preprocessing's portable description (which numeric columns are scaled, the
            image's scaling, the tokenizer).
        train: the training split's inputs (the vocabulary that text replacements draw from).
        seed: the run's seed; each batch's draws are a function of it, the epoch and the step.
        frozen_encoder: the model computes its encoder's outputs once (`frozen_features()`), so changed tokens
            would never reach it.

    Raises:
        ConfigError: listing every transform that does not fit the data.
    """
    if not cfg.active:
        return None
    if task in UNSUPPORTED_TASKS or "series" in spec.names:
        what = "a time series' windows" if "series" in spec.names else UNSUPPORTED_TASKS[task]
        raise ConfigError(f"data.augment: augmentation does not apply to {what} (task {task}).",
                          "Remove the data.augment section.")
    problems = fit_problems(cfg, spec, frozen_encoder)
    text = columns = None
    if cfg.text is not None and not problems:
        text = token_changes(cfg.text, preprocessing["text"], train, problems)
    if cfg.tabular is not None and not problems:
        columns = scaled_columns(preprocessing)
        if not columns.any():
            problems.append("data.augment.tabular.noise: none of the numeric columns is scaled (standard or minmax); "
                            "noise applies to scaled numbers only. Scale them (data.features: {COLUMN: {scale: "
                            "standard}}) or remove data.augment.tabular")
    if problems:
        raise ConfigError("data.augment does not fit the data (its inputs are "
                          f"{', '.join(f'{f.name} {list(f.shape)}' for f in spec)}):\n" +
                          "\n".join(f"  - {p}" for p in problems),
                          "Remove or change the listed transforms; docs/config.md#dataaugment says which inputs each "
                          "one applies to.")
    image = cfg.image if cfg.image is not None and any(getattr(cfg.image, k) for k in type(cfg.image).model_fields) \
        else None
    return Augmenter(spec.names, seed, image=image, fill=black_pixel(preprocessing), text=text,
                     tabular=(cfg.tabular.noise, columns) if columns is not None and cfg.tabular.noise else None,
                     mixup=cfg.mixup, cutmix=cfg.cutmix)


def fit_problems(cfg: AugmentConfig, spec: InputSpec, frozen_encoder: bool) -> list[str]:
    """Each configured transform that the inputs cannot take, as a line naming its key and the fix."""
    names, problems = set(spec.names), []
    inputs = ", ".join(spec.names)
    if cfg.image is not None and "image" not in names:
        problems.append(f"data.augment.image: the data has no image input (its inputs are {inputs}); image "
                        "transforms apply to image features (data.features: {\"pixel_*\": {type: image, shape: "
                        "[C, H, W]}}). Remove data.augment.image, or use data.augment.tabular for numeric columns")
    if cfg.cutmix is not None and "image" not in names:
        problems.append(f"data.augment.cutmix: pastes a rectangle of one image into another, and the data has no "
                        f"image input (its inputs are {inputs}); use data.augment.mixup for numeric rows")
    if cfg.mixup is not None and "tokens" in names:
        problems.append("data.augment.mixup: token ids cannot be blended, and the data has text inputs; use "
                        "data.augment.text (delete, swap, mask, replace) instead")
    elif cfg.mixup is not None and not names & {"image", "numeric"}:
        problems.append(f"data.augment.mixup: blends numeric or image inputs; the data has neither ({inputs})")
    if cfg.text is not None and "tokens" not in names:
        problems.append(f"data.augment.text: the data has no text input (its inputs are {inputs}); text changes "
                        "apply to text columns (data.features: {COLUMN: {type: text}})")
    if frozen_encoder:
        problems.append("data.augment: the model's encoder is frozen (finetune: freeze), so its outputs are computed "
                        "once before training and changed inputs would never reach it; use finetune: lora or full, "
                        "or remove data.augment")
    if cfg.tabular is not None and "numeric" not in names:
        problems.append(f"data.augment.tabular: the data has no numeric columns (its inputs are {inputs})")
    return problems


def token_changes(cfg: Any, text: Mapping[str, Any], train: Mapping[str, np.ndarray],
                  problems: list[str]) -> TokenChanges:
    """The plain settings of the text changes: the tokenizer's special ids and mask/unknown id, and the ordinary ids
    of the training split (what replacements draw from). Problems found are appended to `problems`."""
    from modelfoundry.data.text import TextEncoder

    tokenizer = TextEncoder.from_description(dict(text)).tokenizer_
    special = {int(i) for i, token in tokenizer.get_added_tokens_decoder().items() if token.special}
    special.add(int(text["pad_id"]))
    unknown = next((tokenizer.token_to_id(t) for t in MASK_CANDIDATES if tokenizer.token_to_id(t) is not None), None)
    if cfg.mask and unknown is None:
        problems.append("data.augment.text.mask: the tokenizer has no mask or unknown token to put in a token's "
                        "place; use text.delete or text.replace instead")
    special_ids = torch.tensor(sorted(special), dtype=torch.int64)
    tokens, mask = train["tokens"], train["attention_mask"]
    seen = np.unique(tokens[mask == 1])
    vocabulary = torch.from_numpy(seen[~np.isin(seen, special_ids.numpy())].astype(np.int64))
    if cfg.replace and not len(vocabulary):
        problems.append("data.augment.text.replace: the training texts hold no ordinary tokens to draw from")
    return TokenChanges(cfg.delete, cfg.swap, cfg.mask, cfg.replace, unknown, int(text["pad_id"]), special_ids,
                        vocabulary)


def scaled_columns(preprocessing: Mapping[str, Any]) -> np.ndarray:
    """(F,) bool over the `numeric` input: the columns of numeric features scaled standard or minmax (one-hot and
    ordinal categories, and unscaled numbers, are False)."""
    flags: list[bool] = []
    for feature in preprocessing.get("features", []):
        scaled = feature["kind"] == "numeric" and feature.get("scale", {}).get("method") in ("standard", "minmax")
        flags += [scaled] * int(feature["width"])
    return np.asarray(flags, dtype=bool)


def black_pixel(preprocessing: Mapping[str, Any]) -> float:
    """The scaled value of a raw 0 pixel: what an affine change or crop brings in from outside the image."""
    image = preprocessing.get("image")
    return -float(image["offset"]) / float(image["divisor"]) if image else 0.0
