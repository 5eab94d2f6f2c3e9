"""How much longer does `foundry run` take than a plain script doing the same work?

**foundry** is ``foundry run examples/breast_cancer.yaml`` as a user types it, in a fresh process, with
tracking on (MLflow, ``MLFLOW_TRACKING_URI`` pointing at a SQLite store in a temporary directory): prepare
the data (clean, split, scale), train, evaluate on the test split with baselines and plots, write the run
directory and the manifest, log the run and register the model.

**script** is the plain script a careful user writes for the same result, also in a fresh process: load
the data with scikit-learn, a stratified train/val/test split, a standard scaler, the same MLP (same
layers, batch norm, dropout), the same loss (balanced class weights), optimizer, per-step warmup + cosine
schedule, gradient clipping and batch size, a val-loss pass per epoch, for the number of epochs foundry
trained (its early stopping decides it; the script is told), the same test metrics, and the weights saved
with ``torch.save``. No tracking, no plots, no report.

Both are wall times of whole processes (interpreter start and imports included), measured interleaved, the
order alternating every repetition, after one untimed warm-up of each (the warm-up ``foundry run`` creates
the store: a new SQLite store's migrations are timed once, separately, as ``run_new_store_s``).
The ratio is foundry / script (median of the per-repetition ratios; the target is <= 1.3). The last line is
machine-readable key=value pairs.

Run from the repository root::

    python bench/run_overhead.py            # 5 repetitions (about a minute and a half on a quiet 2-core machine)
    python bench/run_overhead.py --repeats 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "breast_cancer.yaml"

SCRIPT = r'''
import math, sys
import numpy as np
import torch
from torch import nn
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_class_weight

epochs, out = int(sys.argv[1]), sys.argv[2]
torch.manual_seed(42)
X, y = load_breast_cancer(return_X_y=True)
X_train, X_rest, y_train, y_rest = train_test_split(X, y, test_size=0.3, stratify=y, random_state=42)
X_val, X_test, y_val, y_test = train_test_split(X_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=42)
scaler = StandardScaler().fit(X_train)
X_train, X_val, X_test = (torch.as_tensor(scaler.transform(a), dtype=torch.float32) for a in (X_train, X_val, X_test))
y_train, y_val = torch.as_tensor(y_train), torch.as_tensor(y_val)
model = nn.Sequential(nn.Linear(30, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.2),
                      nn.Linear(64, 32, bias=False), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 2))
weights = torch.as_tensor(compute_class_weight("balanced", classes=np.array([0, 1]), y=y_train.numpy()),
                          dtype=torch.float32)
loss_fn = nn.CrossEntropyLoss(weight=weights)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-3)
steps_per_epoch, batch = math.ceil(len(X_train) / 32), 32
total, warmup = steps_per_epoch * epochs, 2 * steps_per_epoch
schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.01 + 0.99 * s / warmup if s < warmup else
                                             0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup) / (total - warmup)))))
for epoch in range(epochs):
    model.train()
    for idx in torch.randperm(len(X_train)).split(batch):
        if len(idx) < 2:
            continue
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(X_train[idx]), y_train[idx]).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    model.eval()
    with torch.inference_mode():
        val_loss = loss_fn(model(X_val), y_val).item()
with torch.inference_mode():
    proba = model(X_test).softmax(1).numpy()
metrics = {"accuracy": accuracy_score(y_test, proba.argmax(1)), "f1_macro": f1_score(y_test, proba.argmax(1),
           average="macro"), "roc_auc": roc_auc_score(y_test, proba[:, 1])}
torch.save(model.state_dict(), out)
print(metrics)
'''


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} ... failed (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="run_overhead_"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'foundry.db'}"}
    script = tmp / "plain.py"
    script.write_text(SCRIPT)
    runs = iter(range(10_000))

    def foundry() -> float:
        return timed([sys.executable, "-m", "modelfoundry.cli", "run", str(EXAMPLE), "--run-dir",
                      str(tmp / f"run{next(runs)}"), "--no-progress"], env, tmp)

    new_store = foundry()  # also the warm-up: creates the store and tells how many epochs early stopping allows
    epochs = sum(1 for line in (tmp / "run0" / "metrics.jsonl").read_text().splitlines() if line.strip())

    def plain() -> float:
        return timed([sys.executable, str(script), str(epochs), str(tmp / "weights.pt")], env, tmp)

    plain()
    ratios, run_s, script_s = [], [], []
    for rep in range(args.repeats):
        if rep % 2 == 0:
            f, p = foundry(), plain()
        else:
            p, f = plain(), foundry()
        run_s.append(f)
        script_s.append(p)
        ratios.append(f / p)
        print(f"rep {rep}: foundry run {f:.2f} s, script {p:.2f} s, ratio {f / p:.2f}", flush=True)
    ratio = statistics.median(ratios)
    print(f"epochs={epochs} run_new_store_s={new_store:.2f} run_s={statistics.median(run_s):.2f} "
          f"script_s={statistics.median(script_s):.2f} ratio_run_vs_script={ratio:.2f} target=1.3 "
          f"meets_target={ratio <= 1.3}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
