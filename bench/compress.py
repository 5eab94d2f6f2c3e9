"""What does `foundry compress` buy on this machine? Speed and size of the chosen variant against the fp32
original on its fastest fp32 runtime (ONNX Runtime; eager PyTorch is 3-6x slower at batch 1, so a speedup
against it would prove nothing).

Three models are trained (tracking off, in a temporary folder) and compressed exactly as
``foundry compress RUN --max-drop 0.01`` does (every compressor; the guard on the validation split):

* ``digits_cnn``: ``examples/digits.yaml`` (CNN with residual blocks);
* ``bc_mlp``: ``examples/breast_cancer.yaml`` (MLP 64-32 with batch norm);
* ``wide_mlp``: an MLP with three 1024-wide layers on the digits (64 inputs), 10 epochs.

For each: the variant chosen for latency (``prefer: latency``) and the smallest variant within the guard,
with batch-1 and batch-64 speedups, size ratio and validation metric delta, plus what the test split says
of the chosen model. Target: >= 2x faster at batch 1 or >= 3x smaller, with <= 1 point of accuracy lost.
Where only size improves, it says so. The last line is machine-readable key=value pairs.

Run from the repository root::

    python bench/compress.py            # about 5 minutes on 2 cores
    python bench/compress.py --quick    # the breast_cancer MLP only, fewer timing repeats
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from modelfoundry.config import load_config
from modelfoundry.api.compression import compress
from modelfoundry.api.training import run

ROOT = Path(__file__).resolve().parents[1]


def configs(quick: bool) -> dict[str, dict]:
    def example(name: str) -> dict:
        data = load_config(ROOT / "examples" / name).model_dump(mode="json")
        data["tracking"] = {"enabled": False}
        data["evaluation"]["plots"] = False
        return data

    out = {"bc_mlp": example("breast_cancer.yaml")}
    if quick:
        return out
    out["digits_cnn"] = example("digits.yaml")
    wide = example("digits.yaml")
    wide["name"] = "digits_wide_mlp"
    wide["data"]["features"] = {}  # the 64 pixels as plain numeric columns
    wide["model"] = {"name": "mlp", "hidden": [1024, 1024, 1024], "dropout": 0.1}
    wide["training"].update(epochs=10, batch_size=64)
    out["wide_mlp"] = wide
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--max-drop", type=float, default=0.01)
    args = parser.parse_args()
    headline = []
    with tempfile.TemporaryDirectory() as tmp:
        for key, data in configs(args.quick).items():
            data["compress"].update(repeats=20 if args.quick else 60)
            run_dir = Path(tmp) / key / "run"
            run(load_config(data), run_dir=run_dir, progress=False)
            result = compress(str(run_dir), max_drop=args.max_drop, out=Path(tmp) / key / "c", progress=False)
            original = result.original
            print(f"\n{key}: original fp32 on ONNX Runtime: val {result.metric} {original['metric']:.4f}, "
                  f"b1 {original['latency_b1_ms']:.3f} ms, b64 {original['latency_b64_ms']:.3f} ms, "
                  f"{original['size_bytes'] / 1e3:.1f} kB, {original['params']:,} params")
            for v in result.variants:
                if v["error"]:
                    print(f"  {v['name']:<34} failed: {v['error'][:90]}")
                    continue
                print(f"  {v['name']:<34} {v['runtime']:<11} Δ{v['metric_delta']:+.4f}  "
                      f"b1 {v['speedup_b1']:5.2f}x  b64 {v['speedup_b64']:5.2f}x  size {1 / v['size_ratio']:5.2f}x "
                      f"smaller  {'pass' if v['passed_guard'] else 'FAIL ' + ','.join(v['failed_guards'])}"
                      f"{'' if v['servable'] else ' (not served)'}")
            eligible = [v for v in result.variants if v["passed_guard"] and v["servable"]]
            smallest = min(eligible, key=lambda v: v["size_ratio"]) if eligible else None
            chosen = result.chosen
            if chosen:
                print(f"  chosen for latency: {chosen['name']} — b1 {chosen['speedup_b1']:.2f}x, "
                      f"b64 {chosen['speedup_b64']:.2f}x, {1 / chosen['size_ratio']:.2f}x smaller, "
                      f"val Δ {chosen['metric_delta']:+.4f}, test {result.metric} "
                      f"{result.test_metrics.get(result.metric, float('nan')):.4f}")
            else:
                print("  chosen for latency: none (no variant within the guard is faster than fp32 ONNX Runtime)")
            if smallest:
                print(f"  smallest within the guard: {smallest['name']} — {1 / smallest['size_ratio']:.2f}x smaller, "
                      f"b1 {smallest['speedup_b1']:.2f}x, val Δ {smallest['metric_delta']:+.4f}")
            fast = chosen["speedup_b1"] if chosen else 1.0
            small = 1 / smallest["size_ratio"] if smallest else 1.0
            met = fast >= 2.0 or small >= 3.0
            print(f"  target (>= 2x faster at b1 or >= 3x smaller, within the guard): {'met' if met else 'NOT met'}"
                  f"{' (size only)' if met and fast < 2.0 else ''}")
            headline += [f"{key}_chosen={chosen['name'] if chosen else 'none'}",
                         f"{key}_speedup_b1={chosen['speedup_b1'] if chosen else 1.0:.2f}",
                         f"{key}_speedup_b64={chosen['speedup_b64'] if chosen else 1.0:.2f}",
                         f"{key}_size_x={small:.2f}",
                         f"{key}_delta={chosen['metric_delta'] if chosen else 0.0:+.4f}"]
    print()
    print(" ".join(headline))


if __name__ == "__main__":
    main()
