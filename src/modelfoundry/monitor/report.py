"""The `foundry monitor` report: report.md or report.html with the per-column drift table, the windows, the
out-of-distribution share and live figures, and PNG plots of reference vs current distributions; monitor.json
beside it. Every file is written atomically; matplotlib (Agg, no pyplot) is imported only when plotting.

`result` is the api's MonitorResult (read by attribute: model, version, run_dir, source, task, rows, window_rows,
windows, bounds, columns, alerts, drifted, dataset_drift_windows, ood_share, live, notes, reference, current).
"""

from __future__ import annotations

import html
import io
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from modelfoundry.storage import write_bytes_atomic, write_json, write_text

FORMATS = ("md", "html")
TOP = 3  # besides the drifted columns, the columns closest to drifting are plotted
MAX_PLOTS = 24
PREDICTION_TITLE = "prediction"


def write_report(result: Any, out_dir: Path, fmt: str = "md") -> Path:
    """Write report.<fmt>, plots/*.png and monitor.json into `out_dir`; returns the report's path."""
    if fmt not in FORMATS:
        from modelfoundry.errors import ConfigError

        raise ConfigError(f"The report format must be one of {', '.join(FORMATS)}. Got '{fmt}' instead.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = plot_columns(result, out_dir)
    blocks = report_blocks(result, plots)
    path = out_dir / f"report.{fmt}"
    write_text(path, to_markdown(blocks) if fmt == "md" else to_html(blocks, _title(result)))
    write_json(out_dir / "monitor.json", result.to_json())
    return path


def plotted_columns(result: Any) -> list[str]:
    """The drifted columns (the prediction, then the worst first), then the TOP closest to drifting, at most
    MAX_PLOTS in all."""
    ranked = sorted(result.columns, key=lambda c: (not c.windows_drifted, c.column != _prediction(), -c.severity,
                                                   -c.score))
    drifted = [c.column for c in ranked if c.windows_drifted]
    rest = [c.column for c in ranked if not c.windows_drifted][:TOP]
    return [c for c in drifted + rest if c in result.current][:MAX_PLOTS]


def plot_columns(result: Any, out_dir: Path) -> dict[str, str]:
    """One PNG per plotted column under out_dir/plots; returns column -> path relative to out_dir."""
    paths: dict[str, str] = {}
    for k, column in enumerate(plotted_columns(result), start=1):
        profile = result.reference.prediction if column == _prediction() else result.reference.columns.get(column)
        if profile is None:
            continue
        relative = f"plots/{k:02d}-{_safe(column_title(column))}.png"
        (out_dir / "plots").mkdir(parents=True, exist_ok=True)
        plot_distribution(column_title(column), profile, np.asarray(result.current[column]), out_dir / relative)
        paths[column] = relative
    _remove_stale(out_dir / "plots", set(paths.values()), out_dir)
    return paths


def _remove_stale(folder: Path, kept: set[str], out_dir: Path) -> None:
    """A report written again into the same directory leaves no plot of the earlier one behind."""
    for old in folder.glob("[0-9][0-9]-*.png") if folder.is_dir() else []:
        if old.relative_to(out_dir).as_posix() not in kept:
            old.unlink()


def plot_distribution(title: str, profile: Any, current: np.ndarray, path: Path) -> None:
    """Reference vs current: a histogram on shared bins (numeric; the reference from its quantile sketch) or
    side-by-side bars of category shares (categorical)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.subplots()
    reference = np.asarray(profile.sample())
    if profile.kind == "numeric":
        ref, cur = reference.astype(float), current.astype(float)
        ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
        edges = np.histogram_bin_edges(np.concatenate([ref, cur]) if len(cur) else ref, bins=30)
        ax.hist(ref, bins=edges, density=True, alpha=0.55, label="reference (training)")
        ax.hist(cur, bins=edges, density=True, alpha=0.55, label="current")
        ax.set(ylabel="density", xlabel=title)
    else:
        names, ref_share, cur_share = _category_shares(reference, current)
        x = np.arange(len(names))
        ax.bar(x - 0.2, ref_share, width=0.4, label="reference (training)")
        ax.bar(x + 0.2, cur_share, width=0.4, label="current")
        crowded = sum(len(n) for n in names) > 40
        ax.set_xticks(x, names, rotation=45 if crowded else 0, ha="right" if crowded else "center")
        ax.set(ylabel="share of rows")
    ax.set_title(f"{title}: reference vs current")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    write_bytes_atomic(path, buffer.getvalue())


def _category_shares(reference: np.ndarray, current: np.ndarray, top: int = 20) -> tuple[list[str], Any, Any]:
    ref_names, ref_counts = np.unique(reference.astype(str), return_counts=True)
    cur_names, cur_counts = np.unique(current.astype(str), return_counts=True)
    ref = dict(zip(ref_names, ref_counts / max(ref_counts.sum(), 1)))
    cur = dict(zip(cur_names, cur_counts / max(cur_counts.sum(), 1)))
    names = list(ref) + [n for n in cur if n not in ref]  # the reference's order (sorted), then new categories
    if len(names) > top:
        names = sorted(names, key=lambda n: -(ref.get(n, 0) + cur.get(n, 0)))[:top]
    return names, [ref.get(n, 0.0) for n in names], [cur.get(n, 0.0) for n in names]


def report_blocks(result: Any, plots: dict[str, str]) -> list[tuple]:
    """The report as blocks both renderers read: ("h1"|"h2"|"h3"|"p", text), ("list", items),
    ("table", header, rows), ("image", alt, path)."""
    if result.alerts:
        verdict = f"**ALERT** on {', '.join(map(column_title, result.alerts))}"
    elif result.drifted:
        verdict = f"no alert; drift in some window on {', '.join(map(column_title, result.drifted))}"
    else:
        verdict = "no drift, no alert"
    blocks: list[tuple] = [("h1", _title(result)), ("p", f"Result: {verdict}."), ("list", _facts(result))]
    blocks += [("h2", "Columns"), ("table", ["column", "kind", "test", "score", "p-value", "threshold",
                                              "windows drifted", "alert"], [_column_row(c) for c in result.columns])]
    live = _live_metric(result)
    blocks += [("h2", "Windows"), ("table", ["window", "rows", "drifted columns", "share", "dataset drift"]
                                   + ([live[1]] if live else []), _window_rows(result, live))]
    figures = health_lines(result)
    if figures:
        blocks += [("h2", "Model health"), ("list", figures)]
    if plots:
        blocks.append(("h2", "Reference vs current"))
        unplotted = len([c for c in result.drifted if c not in plots])
        if unplotted:
            blocks.append(("p", f"{unplotted} more drifted columns are not plotted (at most {MAX_PLOTS} plots); "
                                "monitor.json holds every column's tests."))
        for column, path in plots.items():
            blocks += [("h3", column_title(column)), ("image", f"{column_title(column)}: reference vs current", path)]
    if result.notes:
        blocks += [("h2", "Notes"), ("list", list(result.notes))]
    return blocks


def _title(result: Any) -> str:
    version = f" {result.version}" if result.version else ""
    source = "the request log" if result.source == "request log" else Path(result.source).name
    return f"Drift report: {result.model}{version} on {source}"


def _facts(result: Any) -> list[str]:
    count = len(result.windows)
    return [f"model: {result.model}" + (f" version {result.version}" if result.version else "")
            + f" ({result.run_dir}), task {result.task}",
            f"rows: {result.rows} from {result.source}, " + (
                f"in {count} windows of {result.window_rows} rows (a short last window joins the one before)"
                if count > 1 else f"in one window (monitor.window.rows: {result.window_rows})"),
            f"dataset drift (a share of drifted columns over monitor.drift.share) in {result.dataset_drift_windows} "
            f"of {count} windows",
            f"written {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}"]


def health_lines(result: Any, by_window: bool = False) -> list[str]:
    """The OOD share and, from the request log, live accuracy (or error) and shadow agreement, as sentences
    (`by_window`: also the live figure of each window, which the report's window table shows)."""
    out = []
    if result.ood_share is not None:
        out.append(f"out-of-distribution rows: {100 * result.ood_share:.1f}% (calibrated to flag "
                   "monitor.ood.false_alarm_rate of the validation rows)")
    live = result.live
    for key, text in (("live_accuracy", "live accuracy"), ("live_mae", "live MAE"), ("live_rmse", "live RMSE")):
        if key in live:
            out.append(f"{text} on {int(live['feedback_rows'])} rows with feedback: {live[key]:.4f}"
                       + _validation(result, key))
    for key, text in (("shadow_agreement", "shadow agreement"), ("shadow_mean_abs_difference",
                                                                 "shadow mean absolute difference")):
        if key in live:
            out.append(f"{text} on {int(live['shadow_rows'])} rows: {live[key]:.4f}")
    metric = _live_metric(result)
    if by_window and metric and len(result.window_live) > 1:
        out.append(f"{metric[1].removesuffix(' (rows)')} by window: "
                   + ", ".join(row[-1] for row in _window_rows(result, metric)))
    if live and not live.get("feedback_rows"):
        out.append("no rows with feedback labels yet (POST /feedback {id, label})")
    return out


def _validation(result: Any, key: str) -> str:
    metric = {"live_accuracy": "accuracy", "live_mae": "mae", "live_rmse": "rmse"}[key]
    value = (getattr(result.reference, "metrics", None) or {}).get(metric)
    return f" (validation: {value:.4f})" if value is not None else ""


def _column_row(c: Any) -> list[str]:
    return [column_title(c.column), c.kind, c.test, f"{c.score:.4g}", "-" if c.p_value is None else f"{c.p_value:.3g}",
            f"{c.threshold:.4g}", f"{c.windows_drifted}/{c.windows}", "ALERT" if c.alert else "-"]


def _live_metric(result: Any) -> tuple[str, str] | None:
    """(key, column title) of the live figure shown per window, None when no window has feedback."""
    for key, title in (("live_accuracy", "live accuracy (rows)"), ("live_mae", "live MAE (rows)")):
        if any(key in live for live in getattr(result, "window_live", [])):
            return key, title
    return None


def _window_rows(result: Any, live: tuple[str, str] | None) -> list[list[str]]:
    rows = []
    for k, (bounds, window) in enumerate(zip(result.bounds, result.windows)):
        drifted = ", ".join(map(column_title, window.drifted)) or "-"
        row = [str(k + 1), f"{bounds[0]}-{bounds[1] - 1}", drifted, f"{window.share:.2f}",
               "yes" if window.dataset_drift else "no"]
        if live:
            figures = result.window_live[k]
            row.append(f"{figures[live[0]]:.4f} ({int(figures['feedback_rows'])})" if live[0] in figures else "-")
        rows.append(row)
    return rows


def to_markdown(blocks: list[tuple]) -> str:
    """The report's blocks as GitHub-flavoured markdown (a '|' in a cell escaped)."""
    lines: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + block[1], ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "list":
            lines += [f"- {item}" for item in block[1]] + [""]
        elif kind == "table":
            lines += ["| " + " | ".join(block[1]) + " |", "|" + "---|" * len(block[1])]
            lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in block[2]] + [""]
        elif kind == "image":
            lines += [f"![{block[1]}]({block[2]})", ""]
    return "\n".join(lines)


def to_html(blocks: list[tuple], title: str) -> str:
    """The report's blocks as one self-contained HTML page (every text escaped; images linked relatively)."""
    body: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3", "p"):
            text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(block[1]))
            body.append(f"<{kind}>{text}</{kind}>")
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
                           for row in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "image":
            body.append(f'<img src="{html.escape(block[2])}" alt="{html.escape(block[1])}">')
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def _prediction() -> str:
    from modelfoundry.monitor.columns import PREDICTION

    return PREDICTION


def column_title(column: str) -> str:
    """A column as people read it: the prediction's internal name shown as 'prediction', a text model's embedding
    distance as 'embedding distance'."""
    if column == "__embedding__":  # monitor/embedding.py EMBEDDING
        return "embedding distance"
    return PREDICTION_TITLE if column == _prediction() else column


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[:60] or "column"
