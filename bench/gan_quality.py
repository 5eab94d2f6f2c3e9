"""How good the GAN is, measured in one run (issue 14):

1. A class-conditional DCGAN on sklearn:digits (its defaults, `--epochs` epochs): the test split's C2ST accuracy
   (0.5: generated digits cannot be told from real ones) and TSTR accuracy (a logistic regression trained on
   generated digits, scored on the real test digits) beside TRTR (trained on the real training digits) and beside
   the two Gaussian-noise references (per-feature noise with random classes; per-class noise).
2. `data.balance.method: gan` on an imbalanced real task: breast_cancer with the malignant class (0) cut to 10% of
   the benign class's size; a small MLP trained with no resampling, with SMOTE and with GAN rows, over `--seeds`
   seeds: the malignant class's recall and F1 on the test split (mean over seeds).

    OMP_NUM_THREADS=1 python bench/gan_quality.py [--epochs 30] [--seeds 3]

The last line holds the headline figures as key=value pairs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def digits_quality(epochs: int, root: Path) -> dict[str, float]:
    from modelfoundry import run
    from modelfoundry.config import load_config

    config = load_config({"name": "digits-gan", "seed": 0, "tracking": {"enabled": False},
                          "data": {"source": "sklearn:digits", "features": {
                              "pixel_*": {"type": "image", "shape": [1, 8, 8], "scale": "minmax"}}},
                          "model": {"name": "gan"}, "training": {"epochs": epochs, "batch_size": 64}})
    started = time.perf_counter()
    result = run(config, run_dir=root / "digits", progress=False)
    metrics = dict(result.metrics)
    metrics["wall_s"] = time.perf_counter() - started
    print(f"digits GAN, {epochs} epochs ({metrics['wall_s']:.0f} s; samples: {root / 'digits' / 'eval' / 'samples.png'})")
    print(f"{'':28}{'GAN':>10}{'noise':>10}{'class noise':>13}")
    for name in ("c2st_accuracy", "fd", "tstr_accuracy"):
        print(f"{name:28}{metrics[name]:10.4f}{metrics['baseline_noise_' + name]:10.4f}"
              f"{metrics['baseline_class_gaussian_' + name]:13.4f}")
    print(f"{'trtr_accuracy (real rows)':28}{metrics['trtr_accuracy']:10.4f}")
    return metrics


def imbalanced_source(root: Path) -> Path:
    """breast_cancer with the malignant rows (class 0) cut to 10% of the benign rows' count (seeded)."""
    from modelfoundry.data.sources import load_source

    frame = load_source("sklearn:breast_cancer")
    benign, malignant = frame[frame.target == 1], frame[frame.target == 0]
    kept = malignant.sample(n=round(0.1 * len(benign)), random_state=0)
    path = root / "breast_cancer_imbalanced.csv"
    frame.loc[sorted([*benign.index, *kept.index])].to_csv(path, index=False)
    return path


def minority_scores(source: Path, method: str, seed: int) -> tuple[float, float, float]:
    """(recall, F1 of the malignant class on the test split, seconds) of a small MLP with `method`'s rows."""
    from sklearn.metrics import f1_score, recall_score

    from modelfoundry.config import load_config
    from modelfoundry.experiment import fit_config, prepare
    from modelfoundry.models.inference import predict_outputs

    config = load_config({"name": "bc", "seed": seed, "tracking": {"enabled": False},
                          "data": {"source": str(source), "target": "target", "balance": {"method": method}},
                          "model": {"name": "mlp", "hidden": [16]},
                          "training": {"epochs": 40, "batch_size": 32, "early_stopping": None}})
    started = time.perf_counter()
    data = prepare(config)
    model = fit_config(config, data).model
    pred = predict_outputs(model, data.X["test"], "classification").argmax(1)
    malignant = [str(c) for c in data.target_encoder.classes_].index("0")
    truth = data.y["test"] == malignant
    return (recall_score(truth, pred == malignant), f1_score(truth, pred == malignant),
            time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        digits = digits_quality(args.epochs, root)
        source = imbalanced_source(root)
        print(f"\nbreast_cancer, malignant cut to 10% of benign; MLP [16], 40 epochs; {args.seeds} seeds")
        print(f"{'method':10}{'recall':>10}{'F1':>10}{'s/run':>8}")
        scores = {}
        for method in ("none", "smote", "gan"):
            runs = np.array([minority_scores(source, method, seed) for seed in range(args.seeds)])
            scores[method] = runs.mean(0)
            print(f"{method:10}{scores[method][0]:10.3f}{scores[method][1]:10.3f}{scores[method][2]:8.1f}")
    figures = {"digits_c2st": digits["c2st_accuracy"], "digits_tstr": digits["tstr_accuracy"],
               "digits_trtr": digits["trtr_accuracy"], "noise_tstr": digits["baseline_noise_tstr_accuracy"],
               "class_noise_tstr": digits["baseline_class_gaussian_tstr_accuracy"],
               **{f"recall_{m}": s[0] for m, s in scores.items()}, **{f"f1_{m}": s[1] for m, s in scores.items()}}
    print(" ".join(f"{k}={v:.3f}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
