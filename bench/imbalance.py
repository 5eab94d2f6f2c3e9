"""Imbalanced classes: what class weights, SMOTE, random oversampling, the focal loss and a tuned decision
threshold each do to the rare class's recall and F1, against plain training, same seeds.

The task: scikit-learn's breast cancer data (569 rows, 30 numeric columns), the malignant class (label 0, 37% of
rows) made rare. The split is the pipeline's own (stratified, 20% validation, 20% test, per seed); then 90% of the
malignant rows are dropped from the **training and validation splits only** (10% kept: about 13 training and 4
validation rows against ~215 and ~72 benign ones), as if malignant cases had been rarely recorded. The test split
keeps every row (about 42 malignant of 114), so recall and F1 on the rare class are measured on enough rows to
mean something; its class mix is the natural one, not the training one (a prior shift that favours the methods that
push predictions towards the rare class: that is what they are for). Validation holds the same 10% as training, so
the threshold is tuned on what a user would have.

Every arm shares the split, the kept rows, the MLP and its initialisation, and differs only in its setting:

* ``none``: cross-entropy, argmax;  ``class_weights``: data.balance.class_weights: balanced;
* ``smote`` / ``oversample``: data.balance.method (the same `resample` the pipeline calls, on the training rows);
* ``focal``: training.loss: focal (gamma 2);
* ``threshold``: the ``none`` model with evaluation.threshold.metric: f1 tuned on the validation split (the same
  `threshold_record` a run saves in model.json);
* ``threshold_full_val``: the same, tuned on the validation split *before* its malignant rows were dropped (about
  42 of them instead of 4): what tuning does given enough labelled rare rows, e.g. a labelled sample of the
  population the model will see. Not an arm a user of the rare data has; shown to separate the method from the
  4 validation rows it is otherwise tuned on.

Run from the repository root (about a minute on 2 cores)::

    OMP_NUM_THREADS=1 python bench/imbalance.py            # 3 seeds
    OMP_NUM_THREADS=1 python bench/imbalance.py --seeds 1

The last line is machine-readable key=value pairs (means over the seeds).
"""

from __future__ import annotations

import argparse
import copy
import statistics
from typing import Any

import numpy as np

from modelfoundry.artifacts.inputs import take
from modelfoundry.config import load_config

KEEP = 0.10  # the share of malignant rows kept in the training and validation splits
MINORITY = 0  # malignant
ARMS = ("none", "class_weights", "smote", "oversample", "focal", "threshold", "threshold_full_val")
BASE: dict[str, Any] = {
    "name": "bc-imbalance", "data": {"source": "sklearn:breast_cancer", "target": "target", "cache": False,
                                     "split": {"val": 0.2, "test": 0.2, "stratify": True}},
    "model": {"name": "mlp", "hidden": [32, 16]},
    "training": {"epochs": 60, "batch_size": 32, "optimizer": {"name": "adamw", "lr": 2e-3},
                 "early_stopping": {"monitor": "val_loss", "patience": 10}, "restore_best": True},
    "evaluation": {"plots": False, "threshold": {"metric": "f1"}}, "tracking": {"enabled": False}}


def config_for(arm: str, seed: int) -> Any:
    raw = copy.deepcopy(BASE) | {"seed": seed}
    if arm == "class_weights":
        raw["data"]["balance"] = {"class_weights": "balanced"}
    if arm in ("smote", "oversample"):
        raw["data"]["balance"] = {"method": arm}
    if arm == "focal":
        raw["training"]["loss"] = "focal"
    return load_config(raw)


def rare_data(seed: int) -> tuple[Any, tuple[Any, np.ndarray]]:
    """The prepared data of the seed's split with 90% of the malignant training and validation rows dropped, and
    the validation split's inputs and classes before (every malignant row)."""
    from modelfoundry.data.prepare import prepare_data

    data = prepare_data(config_for("none", seed).data, seed)
    assert list(data.target_encoder.classes_) == [0, 1]
    rng = np.random.default_rng(seed)
    full_val = (data.X["val"], data.y["val"])
    for split in ("train", "val"):
        y = data.y[split]
        rare = np.flatnonzero(y == MINORITY)
        kept = np.sort(np.concatenate([np.flatnonzero(y != MINORITY),
                                       rng.choice(rare, max(1, round(KEEP * len(rare))), replace=False)]))
        data.X[split], data.y[split], data.rows[split] = take(data.X[split], kept), y[kept], data.rows[split][kept]
    return data, full_val


def arm_data(arm: str, data: Any, config: Any) -> Any:
    """The rare data as the pipeline would give it under the arm's data.balance."""
    from modelfoundry.data.balance import class_weights, resample

    out = copy.copy(data)
    out.X, out.y, out.rows = dict(data.X), dict(data.y), dict(data.rows)
    out.class_weights = class_weights(data.y["train"], data.target_encoder.classes_,
                                      config.data.balance.class_weights)
    out.X["train"], out.y["train"], out.rows["train"], _ = resample(
        data.X["train"], data.y["train"], data.rows["train"], config.data.balance, seed_of(config), data.preprocessor)
    return out


def seed_of(config: Any) -> int:
    return config.seed


def rare_scores(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, _ = precision_recall_fscore_support(y, pred, labels=[MINORITY], average=None, zero_division=0)
    return {"recall": float(r[0]), "f1": float(f[0]), "precision": float(p[0])}


def one_seed(seed: int) -> dict[str, dict[str, float]]:
    from modelfoundry.artifacts.records import decide_classes
    from modelfoundry.evaluate.threshold import threshold_record
    from modelfoundry.experiment import fit_config
    from modelfoundry.models.inference import predict_outputs

    data, (full_X, full_y) = rare_data(seed)
    counts = np.bincount(data.y["train"])
    results, models = {}, {}
    for arm in ARMS:
        if arm.startswith("threshold"):  # the plain model, deciding at the threshold tuned on validation
            config, model = config_for("none", seed), models["none"]
            X_val, y_val = (data.X["val"], data.y["val"]) if arm == "threshold" else (full_X, full_y)
            record = threshold_record(config.evaluation.threshold, [0, 1], counts, y_val,
                                      predict_outputs(model, X_val, "classification"), "target")
            pred = decide_classes(predict_outputs(model, data.X["test"], "classification"), record)
            results[arm] = rare_scores(data.y["test"], pred) | {"threshold": record["value"]}
            continue
        config = config_for(arm, seed)
        model = fit_config(config, arm_data(arm, data, config)).model
        models[arm] = model
        results[arm] = rare_scores(data.y["test"], predict_outputs(model, data.X["test"], "classification").argmax(1))
    results["_rows"] = {"train_rare": float(counts[MINORITY]), "train_common": float(counts[1 - MINORITY]),
                        "val_rare": float((data.y["val"] == MINORITY).sum()),
                        "test_rare": float((data.y["test"] == MINORITY).sum()), "test": float(len(data.y["test"]))}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    runs = [one_seed(seed) for seed in range(args.seeds)]
    rows = runs[0]["_rows"]
    print(f"breast_cancer, malignant kept at {KEEP:.0%} in train/val: train {rows['train_rare']:.0f} malignant / "
          f"{rows['train_common']:.0f} benign, val {rows['val_rare']:.0f} malignant, test {rows['test_rare']:.0f} "
          f"malignant of {rows['test']:.0f} (seed 0); {args.seeds} seed(s)")
    print(f"{'arm':<18} {'recall (mean ± sd)':>20} {'F1 (mean ± sd)':>18} {'precision':>10}   per-seed recall")
    headline = {}
    for arm in ARMS:
        recall = [r[arm]["recall"] for r in runs]
        f1 = [r[arm]["f1"] for r in runs]
        precision = statistics.mean(r[arm]["precision"] for r in runs)
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
        print(f"{arm:<18} {statistics.mean(recall):>11.3f} ± {sd(recall):.3f} {statistics.mean(f1):>9.3f} ± "
              f"{sd(f1):.3f} {precision:>10.3f}   {' '.join(f'{v:.3f}' for v in recall)}")
        headline[f"{arm}_recall"] = statistics.mean(recall)
        headline[f"{arm}_f1"] = statistics.mean(f1)
    for arm in ("threshold", "threshold_full_val"):
        values = ", ".join(f"{r[arm]['threshold']:.3f}" for r in runs)
        print(f"{arm} on P(malignant): {values}")
    print(" ".join(f"{k}={v:.3f}" for k, v in headline.items()) + f" seeds={args.seeds}")


if __name__ == "__main__":
    main()
