"""What `foundry compress` leaves behind: report.json and a scatter of metric against latency."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from modelfoundry.storage import write_bytes_atomic, write_json


def write_report(outcome: Any, out_dir: Path, facts: dict[str, Any]) -> Path:
    """report.json: {"original", "variants", "chosen", ...}; returns its path."""
    report = {"original": outcome.original, "variants": outcome.variants, "chosen": outcome.chosen,
              "best_failing": outcome.best_failing, "metric": outcome.metric,
              "model_dir": str(outcome.model_dir) if outcome.model_dir else None, **facts}
    write_json(out_dir / "report.json", report)
    return out_dir / "report.json"


def ratio_words(ratio: float, better: str, worse: str) -> str:
    """A speedup or shrink factor as people read it: 1.5 -> '1.50x faster', 0.97 -> '1.03x slower'
    (with better='faster', worse='slower'); within half a percent of 1, '1.00x (no change)'."""
    if abs(ratio - 1.0) < 0.005:
        return "1.00x (no change)"
    return f"{ratio:.2f}x {better}" if ratio > 1 else f"{1 / ratio:.2f}x {worse}"


def pareto(entries: list[dict[str, Any]]) -> set[str]:
    """Names of the variants no other variant beats on metric, batch-1 latency and size at once."""
    scored = [e for e in entries if e.get("metric") is not None and e.get("latency_b1_ms") is not None]
    front = set()
    for e in scored:
        dominated = any(o is not e and o["metric"] >= e["metric"] and o["latency_b1_ms"] <= e["latency_b1_ms"]
                        and o["size_bytes"] <= e["size_bytes"] and (o["metric"], o["latency_b1_ms"], o["size_bytes"])
                        != (e["metric"], e["latency_b1_ms"], e["size_bytes"]) for o in scored)
        if not dominated:
            front.add(e["name"])
    return front


def write_scatter(outcome: Any, out_dir: Path, lower_is_better: bool) -> Path | None:
    """scatter.png: validation metric against batch-1 latency, marker area by size on disk."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [outcome.original, *outcome.variants]
    scored = [e for e in entries if e.get("metric") is not None and e.get("latency_b1_ms")]
    if not scored:
        return None
    biggest = max(e["size_bytes"] for e in scored)
    figure, axes = plt.subplots(figsize=(9, 5.5))
    for e in scored:
        chosen = outcome.chosen is not None and e["name"] == outcome.chosen["name"]
        color = "tab:green" if chosen else "tab:gray" if e["name"] == "original" else (
            "tab:blue" if e.get("passed_guard") else "tab:red")
        axes.scatter(e["latency_b1_ms"], e["metric"], s=40 + 600 * e["size_bytes"] / biggest, color=color,
                     alpha=0.6, edgecolors="black" if chosen else "none")
        axes.annotate(e["name"], (e["latency_b1_ms"], e["metric"]), fontsize=7, xytext=(4, 4),
                      textcoords="offset points")
    axes.set_xscale("log")
    axes.set_xlabel("latency at batch 1 (ms, log scale)")
    axes.set_ylabel(f"validation {outcome.metric}" + (" (lower is better)" if lower_is_better else ""))
    axes.set_title("Compression variants: grey original, green chosen, blue within the guard, red outside "
                   "(area: size on disk)", fontsize=9)
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100)
    plt.close(figure)
    write_bytes_atomic(out_dir / "scatter.png", png.getvalue())
    return out_dir / "scatter.png"
