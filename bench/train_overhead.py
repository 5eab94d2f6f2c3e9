"""How much slower is foundry's training loop than a minimal hand-written PyTorch loop?

Trains the same models on the same data with both loops and prints training throughput:

* breast_cancer MLP (``examples/breast_cancer.yaml``) at batch 32 and at batch 256,
* digits CNN (``examples/digits.yaml``) at batch 64.

**foundry** is ``modelfoundry.train.loop.fit`` as a user gets it: per-epoch validation, metrics.jsonl,
the default checkpoint policy (the final epoch always saves) into a fresh temporary run directory, and the
progress `foundry run` shows (its terminal reporter). The whole ``fit`` call is timed.

**hand** is the practical upper bound: tensors pre-loaded with ``torch.from_numpy``, a ``randperm`` per
epoch, slices of it as batches, forward, the same loss (class weights, label smoothing), backward, gradient
clipping, the same optimizer and per-step LR schedule (built with foundry's ``build_optimizer`` and
``Schedule``, so the maths is identical), and a val-loss forward pass under ``torch.inference_mode`` each
epoch. No checkpoints, no logging. Setup inside the function (tensors, optimizer) is timed too.

Both sides train for the example's own number of epochs (early stopping is disabled), drop a lone last row the same
way, and start from a freshly built model with the same seed. After one untimed warm-up of each, the two
run interleaved (the order alternates every repetition to cancel drift).
samples/s = epochs * training rows used / wall seconds; the ratio is foundry / hand (median of the
per-repetition ratios; the target is >= 0.97). The last line is machine-readable key=value pairs.

Run from the repository root::

    python bench/train_overhead.py            # the full run (about two minutes on a quiet 2-core machine)
    python bench/train_overhead.py --quick    # a fast smoke run
    python bench/train_overhead.py --checkpoint-every-epoch   # checkpoint.min_interval_s = 0
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from modelfoundry.cli.progress import TerminalReporter
from modelfoundry.config import load_config
from modelfoundry.data.prepare import prepare_data
from modelfoundry.models import build_model
from modelfoundry.train.loop import fit
from modelfoundry.train.optim import Schedule, build_loss, build_optimizer
from modelfoundry.train.runtime import seed_everything, select_device

ROOT = Path(__file__).resolve().parents[1]
CASES = [  # (key, example config, batch size); each trains for its example's own `training.epochs`
    ("mlp_b32", "examples/breast_cancer.yaml", 32),
    ("mlp_b256", "examples/breast_cancer.yaml", 256),
    ("cnn_b64", "examples/digits.yaml", 64),
]


def make_config(path: str, batch_size: int, epochs: int, checkpoint_every_epoch: bool, threads: int | None):
    """The example config with a fixed batch size and epoch count, and no early stopping (re-validated)."""
    raw = load_config(ROOT / path).model_dump()
    raw["training"].update(batch_size=batch_size, epochs=epochs, early_stopping=None, num_threads=threads)
    if checkpoint_every_epoch:
        raw["training"]["checkpoint"]["min_interval_s"] = 0.0
    return load_config(raw)


def n_used(n: int, bs: int) -> int:
    return n - 1 if n % bs == 1 and n > 1 else n  # as in fit: a lone last row is left out of the epoch


def hand_loop(model, data, cfg, seed: int) -> None:
    """The minimal loop a careful PyTorch user writes for in-memory data."""
    t = cfg.training
    assert t.accumulate_steps == 1 and not t.l1 and t.precision == "fp32" and not t.clip_grad_value
    device = select_device(t.device)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)

    def tensor(a):  # the targets come read-only from pandas; torch wants writable arrays
        return torch.from_numpy(np.require(a, requirements="W")).to(device)

    (x_train,), (x_val_in,) = data.X["train"].values(), data.X["val"].values()  # one named input: numeric or image
    x, y, x_val, y_val = (tensor(a) for a in (x_train, data.y["train"], x_val_in, data.y["val"]))
    model.to(device)
    weights = torch.as_tensor(data.class_weights, device=device) if data.class_weights is not None else None
    loss_fn = build_loss(t.loss, data.task, weights, t.label_smoothing)
    optimizer = build_optimizer(model, t.optimizer)
    n, bs = len(x), t.batch_size
    n_train = n_used(n, bs)
    schedule = Schedule(optimizer, t.scheduler, math.ceil(n_train / bs), t.epochs, t.optimizer.lr)
    g = torch.Generator().manual_seed(seed)
    regression = data.task == "regression"
    for _ in range(t.epochs):
        model.train()
        perm = torch.randperm(n, generator=g).to(device)
        for i in range(0, n_train, bs):
            idx = perm[i:i + bs]
            out = model(x[idx])
            loss = loss_fn(out.squeeze(-1) if regression else out, y[idx])
            loss.backward()
            if t.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if schedule.active:
                schedule.batch_end()
        model.eval()
        with torch.inference_mode():
            out = model(x_val)
            val_loss = loss_fn(out.squeeze(-1) if regression else out, y_val).item()
        schedule.epoch_end(val_loss)


def timed(side: str, cfg, data) -> float:
    """Wall seconds of one training run on `side` ('hand' or 'foundry'), from a freshly seeded model."""
    seed_everything(cfg.seed, cfg.training.deterministic)  # what `foundry run` does before building the model
    model = build_model(cfg.model, data.input_spec, data.n_outputs)
    with tempfile.TemporaryDirectory(prefix="foundry-bench-") as run_dir:
        gc.collect()
        start = time.perf_counter()
        if side == "hand":
            hand_loop(model, data, cfg, cfg.seed)
        else:
            fit(model, data.X, data.y, cfg.training, task=data.task, class_weights=data.class_weights,
                seed=cfg.seed, run_dir=Path(run_dir), progress=TerminalReporter())
        return time.perf_counter() - start


def run_case(cfg, reps: int) -> dict[str, float]:
    data = prepare_data(cfg.data, cfg.seed)
    samples = cfg.training.epochs * n_used(len(data.y["train"]), cfg.training.batch_size)
    timed("hand", cfg, data), timed("foundry", cfg, data)  # warm-up
    walls: dict[str, list[float]] = {"hand": [], "foundry": []}
    for rep in range(reps):
        for side in (("hand", "foundry") if rep % 2 == 0 else ("foundry", "hand")):
            walls[side].append(timed(side, cfg, data))
    ratios = [h / f for h, f in zip(walls["hand"], walls["foundry"])]  # sps_foundry / sps_hand
    return {"samples": samples, "hand": samples / statistics.median(walls["hand"]),
            "foundry": samples / statistics.median(walls["foundry"]), "ratio": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions per side (default 7)")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every case's epoch count")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 reps, a quarter of the epochs")
    parser.add_argument("--checkpoint-every-epoch", action="store_true",
                        help="set training.checkpoint.min_interval_s: 0, so fit saves last.pt every epoch")
    parser.add_argument("--threads", type=int, help="training.num_threads for both loops (default: torch's)")
    args = parser.parse_args()
    reps, scale = (2, args.epochs_scale / 4) if args.quick else (args.reps, args.epochs_scale)

    results, loads = {}, []
    for key, path, bs in CASES:
        epochs = load_config(ROOT / path).training.epochs
        cfg = make_config(path, bs, max(1, round(epochs * scale)), args.checkpoint_every_epoch, args.threads)
        results[key] = r = run_case(cfg, reps)
        loads.append(os.getloadavg()[0])
        extra = ", checkpoint every epoch" if args.checkpoint_every_epoch else ""
        print(f"\n{key}: {path} batch {bs}, {cfg.training.epochs} epochs x {r['samples'] // cfg.training.epochs} "
              f"rows, {reps} reps, {select_device(cfg.training.device)}, {torch.get_num_threads()} threads, "
              f"load {loads[-1]:.1f}{extra}")
        print(f"  {'hand samples/s':>16} {'foundry samples/s':>18} {'ratio':>6} {'(min-max)':>12}")
        print(f"  {r['hand']:16.0f} {r['foundry']:18.0f} {r['ratio']:6.3f} {r['ratio_min']:6.3f}-{r['ratio_max']:.3f}",
              flush=True)
    if max(loads) > (os.cpu_count() or 1) + 0.5:
        print(f"\nwarning: load average up to {max(loads):.1f} on {os.cpu_count()} CPUs: other processes competed "
              "for the CPU and the numbers are noisy (try a quiet machine, or --threads 1)")
    print()
    print(" ".join([f"ratio_{k}={r['ratio']:.2f}" for k, r in results.items()]
                   + [f"sps_{side}_{k}={r[side]:.0f}" for k, r in results.items() for side in ("hand", "foundry")]))


if __name__ == "__main__":
    main()
