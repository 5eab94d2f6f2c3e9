"""The data check's files: findings.json (machine readable), report.md and/or report.html (self-contained: the plots
are embedded), and plots/<column>.png. Every file is written atomically."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import TYPE_CHECKING

from modelfoundry.data.quality.findings import percent, summary
from modelfoundry.data.quality.plots import MAX_PLOTS, plot_columns
from modelfoundry.errors import ConfigError
from modelfoundry.storage import write_json, write_text

if TYPE_CHECKING:
    import pandas as pd

    from modelfoundry.data.quality.checkup import CheckResult

FORMATS = {"md": ("md",), "html": ("html",), "both": ("md", "html")}
SHOWN_COLUMNS = 6  # columns named in a finding's table cell
SHOWN_SCORES = 10  # single-feature scores listed


def write_report(result: CheckResult, frame: pd.DataFrame, out_dir: Path, fmt: str = "md",
                 other: pd.DataFrame | None = None, max_plots: int | None = None) -> dict[str, Path]:
    """Write findings.json, the report(s) and the plots (of at most `max_plots` columns, default MAX_PLOTS; 0: none)
    into `out_dir`; returns name -> path of what was written."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}. Got '{fmt}' instead.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    limit = MAX_PLOTS if max_plots is None else max(max_plots, 0)
    plots = plot_columns(frame, result.kinds, plotted(result, limit), out_dir / "plots", other) if limit else {}
    record = result.to_json()
    record["plots"] = {"columns": len(frame.columns), "plotted": len(plots), "limit": limit,
                       "files": {c: f"plots/{name}" for c, name in plots.items()}}
    written = {"findings": out_dir / "findings.json"}
    write_json(written["findings"], record)
    blocks = _blocks(result, plots, len(frame.columns), limit)
    for kind in FORMATS[fmt]:
        path = out_dir / f"report.{kind}"
        write_text(path, _markdown(blocks) if kind == "md" else _html(blocks, f"Data check: {result.source}",
                                                                       out_dir))
        written[kind] = path
    return written


def plotted(result: CheckResult, limit: int = MAX_PLOTS) -> list[str]:
    """The columns to plot: those named by findings first (worst first), then the rest in order; `limit` at most."""
    named = [c for f in result.findings for c in f.columns if c in result.kinds]
    ordered = list(dict.fromkeys(named + list(result.kinds)))
    return [c for c in ordered if result.kinds[c] != "other"][:limit]


def cell_columns(columns: list[str]) -> str:
    """A finding's columns for a table cell: the first SHOWN_COLUMNS and how many more."""
    shown = ", ".join(columns[:SHOWN_COLUMNS])
    return shown + (f" (+{len(columns) - SHOWN_COLUMNS} more)" if len(columns) > SHOWN_COLUMNS else "") or "-"


def value_text(kind: str, value: float) -> str:
    """A finding's number as it reads best: shares as percentages, scores and counts as they are."""
    if kind in ("leakage", "shift", "adversarial", "high_cardinality") or value > 1:
        return f"{value:.4g}"
    return percent(value)


def _blocks(result: CheckResult, plots: dict[str, str], n_columns: int, limit: int) -> list[tuple]:
    about = (f"{result.rows} rows, {result.columns} columns" + (f", target '{result.target}' ({result.task})"
                                                               if result.target else ", no target given")
             + (f"; compared with {result.compare}" if result.compare else ""))
    blocks: list[tuple] = [("h1", f"Data check: {result.source}"), ("p", about),
                           ("p", f"**{summary(result.findings)}.**")]
    if result.findings:
        blocks += [("h2", "Findings"), ("table", ["severity", "kind", "columns", "value", "finding", "fix"],
                                        [[f.severity, f.kind, cell_columns(f.columns), value_text(f.kind, f.value),
                                          f.message, f.fix] for f in result.findings])]
    else:
        blocks.append(("p", "Nothing to report."))
    if result.leakage:
        metric = "balanced accuracy" if result.task == "classification" else "R^2"
        blocks += [("h2", "Each column alone"),
                   ("p", (f"Cross-validated {metric} of a single-feature model per column (the best "
                          f"{min(SHOWN_SCORES, len(result.leakage))}); close to 1 means the column alone gives the "
                          "target away.")),
                   ("table", ["column", metric, "ROC-AUC"],
                    [[s["column"], f"{s['score']:.3f}", "-" if s["auc"] is None else f"{s['auc']:.3f}"]
                     for s in result.leakage[:SHOWN_SCORES]])]
    kinds = {k: sum(v == k for v in result.kinds.values()) for k in ("numeric", "categorical", "text", "other")}
    blocks += [("h2", "Columns"), ("p", ", ".join(f"{v} {k}" for k, v in kinds.items() if v) + ".")]
    if plots:
        note = (f"Plots of {len(plots)} of {n_columns} columns (columns with findings first; at most {limit})."
                if len(plots) < n_columns else "")
        blocks += [("h2", "Distributions")] + ([("p", note)] if note else [])
        blocks += [("img", column, f"plots/{name}") for column, name in plots.items()]
    return blocks


def _markdown(blocks: list[tuple]) -> str:
    lines: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            lines += [f"{'#' * int(kind[1])} {block[1]}", ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "table":
            lines.append("| " + " | ".join(block[1]) + " |")
            lines.append("|" + "---|" * len(block[1]))
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block[2]]
            lines.append("")
        elif kind == "img":
            lines += [f"![{_md_cell(block[1])}]({block[2].replace(' ', '%20')})", ""]
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _html(blocks: list[tuple], title: str, out_dir: Path) -> str:
    import re

    body = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            body.append("<p>" + re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(block[1])) + "</p>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f'<td class="{html.escape(str(row[0]))}">{html.escape(str(c))}</td>'
                                            if i == 0 else f"<td>{html.escape(str(c))}</td>"
                                            for i, c in enumerate(row)) + "</tr>" for row in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":  # embedded, so the one file is the whole report
            data = base64.b64encode((out_dir / block[2]).read_bytes()).decode("ascii")
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block[1])}">'
                        f"<figcaption>{html.escape(block[1])}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "vertical-align:top;text-align:left}td.error{color:#b00;font-weight:bold}td.warning{color:#a60}"
             "figure{display:inline-block;margin:4px}figcaption{font-size:small;text-align:center}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")
