"""`data.balance.method: gan`: synthetic rows of the smaller classes from a class-conditional GAN trained on the
(transformed) training split, appended to it. Validation and test rows are never touched.

The GAN is small and trained briefly (about STEPS optimizer steps, at most MAX_EPOCHS epochs): a few seconds on
breast_cancer. Each class grows to `ratio` x the largest class (`auto`: as large as the largest), as the other
over-sampling methods do; data.json's `balance` records the class counts before and after and the GAN's training.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from modelfoundry.errors import ConfigError

if TYPE_CHECKING:
    from modelfoundry.data.prepare import PreparedData

STEPS = 1000  # generator steps the balancing GAN trains for (about)
MAX_EPOCHS = 300
BATCH = 64
LR = 5e-4


def add_gan_rows(data: PreparedData, ratio: float | str, seed: int, device: str = "auto") -> None:
    """Append GAN-made rows of the classes smaller than `ratio` x the largest to data's training split (in place):
    X['train'], y['train'], rows['train'] (-1 for a synthetic row) and info['balance']."""
    import torch

    from modelfoundry.config import TrainingConfig
    from modelfoundry.models.gan_module import GAN
    from modelfoundry.train.gan_loop import fit_gan

    name = _float_input(data.X["train"])
    x, y = data.X["train"][name], data.y["train"]
    counts = np.bincount(y, minlength=len(data.target_encoder.classes_))
    wanted = math.ceil((1.0 if ratio == "auto" else float(ratio)) * counts.max() - 1e-9)
    grow = np.where(counts > 0, np.maximum(wanted - counts, 0), 0)  # rows to add per class
    info: dict[str, Any] = {"method": "gan", "ratio": ratio, "k_neighbors": None,
                            "before": {str(c): int(n) for c, n in enumerate(counts)}}
    if grow.sum():
        started = time.perf_counter()
        torch.manual_seed(seed)
        image = name == "image"
        gan = GAN(x.shape[1:], len(counts), 32, [64, 32] if image else [64, 64], [32, 64] if image else [64, 64],
                  image=image)
        batches = max(1, len(x) // BATCH)
        epochs = max(1, min(MAX_EPOCHS, math.ceil(STEPS / batches)))
        cfg = TrainingConfig(epochs=epochs, batch_size=BATCH, early_stopping=None, device=device, restore_best=False)
        fit_gan(gan, {"train": data.X["train"]}, {"train": y}, cfg, g_lr=LR, d_lr=LR, ema_decay=0.999, seed=seed)
        labels = np.repeat(np.arange(len(counts)), grow)
        made = gan.cpu().sample(len(labels), torch.from_numpy(labels), torch.Generator().manual_seed(seed))
        data.X["train"] = {name: np.concatenate([x, made.numpy().astype(x.dtype)])}
        data.y["train"] = np.concatenate([y, labels.astype(y.dtype)])
        data.rows["train"] = np.concatenate([data.rows["train"], np.full(len(labels), -1, data.rows["train"].dtype)])
        info["gan"] = {"epochs": epochs, "steps": epochs * batches, "wall_s": round(time.perf_counter() - started, 2)}
    after = counts + grow
    info.update({"after": {str(c): int(n) for c, n in enumerate(after)},
                 "rows": {"before": int(counts.sum()), "after": int(after.sum())}, "synthetic": int(grow.sum())})
    data.info["balance"] = info


def _float_input(X: dict[str, np.ndarray]) -> str:
    """The one float input ("numeric" or "image") a GAN generates; anything else is a ConfigError."""
    if list(X) not in (["numeric"], ["image"]):
        raise ConfigError(f"data.balance.method: gan generates one image or numeric columns, but this data gives the "
                          f"model inputs {list(X)}" + (" (text columns become tokens)" if "tokens" in X else "") + ".",
                          "Use data.balance.method: oversample (it repeats whole rows, any inputs), or "
                          "data.balance.class_weights: balanced.")
    return next(iter(X))
