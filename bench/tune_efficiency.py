"""Does TPE find good hyperparameters in fewer trials than random search, and does pruning save time?

The search is ``examples/digits_mlp_tune.yaml``'s: an MLP on the digits trained with SGD + momentum, over
learning rate, momentum, weight decay, dropout and batch size, scored by val_loss, run through
``modelfoundry.api.tune`` exactly as ``foundry tune`` runs it (SQLite study), except that trial 0 is
not the config as written (``tune.start_from_config: false``), so both samplers start from scratch.
``--config`` takes any other config with a ``tune:`` section. For each seed:

* **random**: RandomSampler (seeded independently of TPE), no pruning, a fixed budget of trials;
* **tpe**: TPESampler (the config's settings), no pruning, the same budget;
* **tpe+median**: TPESampler with the median pruner (the config's settings), the same budget.

Printed per seed and averaged:

* the best val_loss each sampler reached;
* trials needed to reach random's final best: for random, the trial where it found it; for TPE, the first
  trial whose running best is at least as good (the budget + 1 when it never gets there, which counts
  against TPE);
* for pruning: the study's wall time with and without the median pruner, and the change of the best value,
  set against the spread of the unpruned best across seeds (the noise of the measurement).

Targets: TPE reaches random's final best within 60% of the budget on average
(``tpe_trials_frac`` <= 0.60); the median pruner saves >= 30% of the wall time (``pruning_time_saved``
>= 0.30) with the best value unchanged within noise.

Each study trains on one thread (``training.num_threads: 1``): on 2 shared cores small MLPs train faster
that way, and one thread keeps wall times comparable between arms. Run from the repository root::

    python bench/tune_efficiency.py                 # 8 seeds x 30 trials (about 6 minutes, 2 cores)
    python bench/tune_efficiency.py --quick         # 2 seeds x 12 trials, a smoke run
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path

from modelfoundry.config import load_config
from modelfoundry.api.tuning import tune

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits_mlp_tune.yaml"


def study(example: Path, sampler: str, pruner: str, seed: int, budget: int, epochs: int | None, root: Path) -> dict:
    """One study; returns its per-trial values in trial order, best value and wall time."""
    base = load_config(example)
    tune_cfg = base.tune.model_dump()
    tune_cfg.update(n_trials=budget, storage=None, n_jobs=1, start_from_config=False)  # both from scratch
    tune_cfg["sampler"] = {**tune_cfg["sampler"], "name": sampler, "seed": seed}
    tune_cfg["pruner"] = {**tune_cfg["pruner"], "name": pruner}
    data = base.model_dump(mode="json")
    data.update(tune=tune_cfg, tracking={"enabled": False})
    data["training"].update(num_threads=1)
    if epochs:
        data["training"]["epochs"] = epochs
    config = load_config(data)
    result = tune(config, out=root / f"{sampler}-{pruner}-{seed}", progress=False)
    wall = result.wall_s  # the trials only: not data preparation, plots or trials.csv, the same for every arm
    values = [r["value"] if r["state"] == "COMPLETE" else None for r in sorted(result.rows, key=lambda r: r["number"])]
    best = result.summary["best"]["value"]
    return {"values": values, "best": best, "wall_s": wall,
            "pruned": result.summary["states"]["PRUNED"], "failed": result.summary["states"]["FAIL"]}


def trials_to_reach(values: list, target: float, budget: int) -> int:
    """1-based trial at which the running minimum first reaches `target`; budget + 1 if never."""
    running = math.inf
    for i, value in enumerate(values, start=1):
        if value is not None:
            running = min(running, value)
        if running <= target + 1e-12:
            return i
    return budget + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=None, help="default: the example's training.epochs")
    parser.add_argument("--config", type=Path, default=EXAMPLE, help="a config with a tune: section")
    parser.add_argument("--quick", action="store_true", help="2 seeds x 12 trials x 20 epochs")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.trials = 2, 12
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for seed in range(args.seeds):
            # independent draws: with one seed, TPE's random start-up trials would repeat random search's first ones
            random = study(args.config, "random", "none", 1000 + seed, args.trials, args.epochs, root)
            tpe = study(args.config, "tpe", "none", seed, args.trials, args.epochs, root)
            pruned = study(args.config, "tpe", "median", seed, args.trials, args.epochs, root)
            target = random["best"]
            row = {"seed": seed, "random_best": random["best"], "tpe_best": tpe["best"],
                   "random_n": trials_to_reach(random["values"], target, args.trials),
                   "tpe_n": trials_to_reach(tpe["values"], target, args.trials),
                   "wall_none": tpe["wall_s"], "wall_median": pruned["wall_s"], "pruned_best": pruned["best"],
                   "pruned_trials": pruned["pruned"]}
            rows.append(row)
            print(f"seed {seed}: best val_loss random {row['random_best']:.4f} (trial {row['random_n']}), "
                  f"tpe {row['tpe_best']:.4f} (reached random's best at trial "
                  f"{row['tpe_n'] if row['tpe_n'] <= args.trials else 'never'}); "
                  f"tpe+median {row['pruned_best']:.4f}, {row['pruned_trials']} pruned, "
                  f"wall {row['wall_median']:.1f} s vs {row['wall_none']:.1f} s unpruned", flush=True)

    mean = statistics.fmean
    tpe_frac = mean(r["tpe_n"] for r in rows) / args.trials
    random_frac = mean(r["random_n"] for r in rows) / args.trials
    reached = sum(r["tpe_n"] <= args.trials for r in rows)
    saved = 1 - sum(r["wall_median"] for r in rows) / sum(r["wall_none"] for r in rows)
    delta = mean(r["pruned_best"] - r["tpe_best"] for r in rows)
    noise = statistics.stdev(r["tpe_best"] for r in rows) if len(rows) > 1 else float("nan")
    print()
    print(f"{args.config.name}: budget {args.trials} trials x {args.seeds} seeds")
    print(f"mean best val_loss: random {mean(r['random_best'] for r in rows):.4f}, "
          f"tpe {mean(r['tpe_best'] for r in rows):.4f}, tpe+median {mean(r['pruned_best'] for r in rows):.4f}")
    print(f"trials to reach random's final best: random {random_frac * args.trials:.1f}, "
          f"tpe {tpe_frac * args.trials:.1f} ({tpe_frac:.0%} of the budget; reached on {reached}/{len(rows)} seeds)"
          f"  target <= 60%: {'met' if tpe_frac <= 0.6 else 'NOT met'}")
    print(f"median pruner: wall time saved {saved:.0%} (target >= 30%: {'met' if saved >= 0.3 else 'NOT met'}); "
          f"best val_loss change {delta:+.4f} vs seed-to-seed spread {noise:.4f}")
    print(f"tpe_trials_frac={tpe_frac:.2f} random_trials_frac={random_frac:.2f} tpe_reached={reached}/{len(rows)} "
          f"pruning_time_saved={saved:.2f} pruned_best_delta={delta:+.4f} best_noise={noise:.4f}")


if __name__ == "__main__":
    main()
