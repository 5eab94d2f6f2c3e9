"""Per-column histograms as PNG (matplotlib, Agg): numbers as a histogram (the compared file's overlaid), categories
as bars of their most common values, text as a histogram of lengths in words."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from modelfoundry.storage import write_bytes_atomic

if TYPE_CHECKING:
    import pandas as pd

MAX_PLOTS = 50  # columns plotted at most (those with findings first)
TOP_BARS = 20


def plot_file(column: str, taken: set[str]) -> str:
    """A file name for `column`'s plot, safe on every file system and distinct from those in `taken`."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", column).strip("._")[:80] or "column"
    name, n = f"{base}.png", 1
    while name.lower() in taken:
        n += 1
        name = f"{base}-{n}.png"
    taken.add(name.lower())
    return name


def plot_columns(frame: pd.DataFrame, kinds: dict[str, str], columns: list[str], folder: Path,
                 other: pd.DataFrame | None = None) -> dict[str, str]:
    """One PNG per column in `columns` (already capped by the caller) under `folder`; returns column -> file name."""
    import io

    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    folder.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    written = {}
    for column in columns:
        figure = Figure(figsize=(4.8, 3.0), dpi=80)
        axes = figure.subplots()
        try:
            drawn = _draw(axes, frame[column], kinds.get(column, "categorical"),
                          other[column] if other is not None and column in other.columns else None)
        except (ValueError, OverflowError):  # values matplotlib cannot bin (extreme magnitudes): no plot
            drawn = False
        if not drawn:
            continue
        axes.set_title(column[:60], fontsize=10)
        figure.tight_layout()
        name = plot_file(column, taken)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        write_bytes_atomic(folder / name, buffer.getvalue())
        written[column] = name
    return written


def _draw(axes: object, series: pd.Series, kind: str, other: pd.Series | None) -> bool:
    from modelfoundry.data.quality.columns import numeric_values

    if kind == "numeric":
        values = numeric_values(series).dropna().to_numpy()
        values = values[np.isfinite(values)]
        if not len(values):
            return False
        compared = numeric_values(other).dropna().to_numpy() if other is not None else None
        low, high = float(values.min()), float(values.max())
        if compared is not None and len(compared):
            low, high = min(low, float(np.nanmin(compared))), max(high, float(np.nanmax(compared)))
        bins = np.linspace(low, high, 31)
        if len(np.unique(bins)) < len(bins):  # one value, or a range too narrow for its magnitude
            pad = max(abs(low) * 1e-3, 0.5)
            bins = np.array([low - pad, high + pad])
        axes.hist(values, bins=bins, color="#4477aa", alpha=0.8, density=compared is not None, label="data")
        if compared is not None and len(compared):
            axes.hist(compared, bins=bins, color="#ee6677", alpha=0.5, density=True, label="compared")
            axes.legend(fontsize=8)
        return True
    if kind == "text":
        lengths = series.dropna().astype(str).str.split().str.len()
        if lengths.empty:
            return False
        axes.hist(lengths, bins=30, color="#4477aa")
        axes.set_xlabel("words", fontsize=8)
        return True
    counts = series.dropna().map(str).value_counts()
    if counts.empty:
        return False
    top = counts.iloc[:TOP_BARS][::-1]
    axes.barh([label[:24] for label in top.index], top.to_numpy(), color="#4477aa")
    axes.tick_params(labelsize=7)
    return True
