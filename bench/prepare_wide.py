"""How long does foundry take to prepare a wide table, against a plain scikit-learn script?

Issue 9 measured 52 s for a 60-row x 2,000-column CSV (one scikit-learn pipeline per column); the target is
under 2 s. This writes such a CSV (numeric columns, a few missing cells, plus a handful of categorical
columns) and times, interleaved over repetitions:

* **foundry**: `modelfoundry.data.prepare.prepare_data` as `foundry run` calls it: read the CSV, infer every
  column's kind, clean, fingerprint (content hash, class balance), stratified split, fit the preprocessing
  (grouped by treatment), describe it in its portable form, check the description reproduces the fitted
  preprocessing, and transform the three splits.
* **plain**: the least a careful script does: `pandas.read_csv`, a stratified `train_test_split` into
  train/val/test, one `ColumnTransformer` (median imputer + standard scaler on the numeric columns,
  most-frequent imputer + one-hot on the categorical ones) fitted on train and applied to the three splits.

The last line is machine-readable: `prepare_s` and `plain_s` are medians; `ratio` is foundry / plain.

    python bench/prepare_wide.py                 # 60 x 2,000, 5 repetitions
    python bench/prepare_wide.py --rows 2000 --cols 500
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def write_table(path: Path, rows: int, cols: int, seed: int = 0) -> None:
    import pandas as pd

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, cols))
    x[rng.random(x.shape) < 0.01] = np.nan
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(cols)])
    for k in range(5):
        frame[f"c{k}"] = rng.choice(["red", "green", "blue"], size=rows)
    frame["target"] = np.where(np.nan_to_num(x[:, 0]) > 0, "yes", "no")
    frame.to_csv(path, index=False)


def foundry_prepare(path: Path) -> float:
    from modelfoundry.config import load_config
    from modelfoundry.data.prepare import prepare_data

    config = load_config({"name": "wide", "data": {"source": str(path), "target": "target", "cache": False},
                          "model": {"name": "mlp"}, "tracking": {"enabled": False}})
    start = time.perf_counter()
    prepare_data(config.data, config.seed)
    return time.perf_counter() - start


def plain_prepare(path: Path) -> float:
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    start = time.perf_counter()
    frame = pd.read_csv(path)
    y = frame.pop("target")
    rest_x, test_x, rest_y, _ = train_test_split(frame, y, test_size=0.15, stratify=y, random_state=0)
    train_x, val_x = train_test_split(rest_x, test_size=0.15 / 0.85, stratify=rest_y, random_state=0)
    numeric = [c for c in frame.columns if c.startswith("f")]
    categorical = [c for c in frame.columns if c.startswith("c")]
    transformer = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
        ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"),
                              OneHotEncoder(handle_unknown="ignore", sparse_output=False)), categorical)])
    transformer.fit(train_x)
    for part in (train_x, val_x, test_x):
        transformer.transform(part).astype(np.float32)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=60)
    parser.add_argument("--cols", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "wide.csv"
        write_table(path, args.rows, args.cols)
        foundry_prepare(path), plain_prepare(path)  # warm-up: imports, caches
        ours, plain = [], []
        for i in range(args.repeats):
            pair = (foundry_prepare, plain_prepare) if i % 2 == 0 else (plain_prepare, foundry_prepare)
            for func in pair:
                (ours if func is foundry_prepare else plain).append(func(path))
    prepare_s, plain_s = statistics.median(ours), statistics.median(plain)
    print(f"{args.rows} rows x {args.cols + 5} columns: foundry {prepare_s:.3f} s, plain scikit-learn {plain_s:.3f} s")
    print(f"prepare_s={prepare_s:.3f} plain_s={plain_s:.3f} ratio={prepare_s / plain_s:.2f} rows={args.rows} "
          f"cols={args.cols + 5}")


if __name__ == "__main__":
    main()
