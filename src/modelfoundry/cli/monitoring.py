"""`foundry monitor MODEL --data FILE` and `foundry monitor report MODEL`: one command whose first argument may be
the word `report` (a group with a MODEL argument would take `report` for a model)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from modelfoundry.cli.console import friendly_errors, open_console
from modelfoundry.cli.options import UriOption

SHOWN = 10  # columns named in the alert line (the table and report list all)
FailOn = Annotated[str, typer.Option("--fail-on", help="Exit with code 10 when a column alerts (alert: patience "
                                     "consecutive drifted windows), drifts in any window (drift), or never.")]


@friendly_errors
def monitor(target: Annotated[str, typer.Argument(metavar="MODEL | report", show_default=False,
                                                  help="A run directory or NAME, NAME/VERSION, NAME@ALIAS; or the "
                                                  "word `report` followed by MODEL.")],
            model: Annotated[Optional[str], typer.Argument(metavar="[MODEL]", show_default=False,
                                                           help="After `report`: the model whose logged rows "
                                                           "to analyse.")] = None,
            data: Annotated[Optional[Path], typer.Option("--data", help="New rows (.csv/.parquet/.jsonl) with the "
                                                         "model's input columns.")] = None,
            report: Annotated[Optional[Path], typer.Option("--report", help="Report directory (default: "
                                                           "./monitor-report-<model>-<UTC time>/).")] = None,
            fmt: Annotated[str, typer.Option("--format", help="Report format: md or html.")] = "md",
            window_rows: Annotated[Optional[int], typer.Option("--window-rows", min=20, help="Rows per window "
                                                               "(default: the model's monitor.window.rows).")] = None,
            fail_on: FailOn = "alert",
            limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="report: only the newest N "
                                                         "logged rows.")] = None,
            version: Annotated[Optional[str], typer.Option("--version", help="report: only rows served by this "
                                                           "version (default: the one MODEL names).")] = None,
            url: Annotated[Optional[str], typer.Option("--url", help="report: the request log's SQLAlchemy URL "
                                                       "(default: monitor.log.url, else foundry-requests.db "
                                                       "beside the project's foundry.db).")] = None,
            uri: UriOption = None) -> None:
    """Drift between a model's training data and new rows, with the server's tests, thresholds and alert rule.

    foundry monitor MODEL --data new.csv: the file's rows in windows of monitor.window.rows, each compared with
    the model's reference profile (inputs and predictions), plus the share of out-of-distribution rows.

    foundry monitor report MODEL: the same on the rows the server logged for MODEL (the request log), plus live
    accuracy (or error) on rows with feedback and agreement with a shadow model.

    Both print a table per column, write report.md (or .html) with PNG plots and monitor.json, and exit with
    code 10 when an alert fires (--fail-on), so CI can gate on it; 0 otherwise.
    """
    from modelfoundry.api.monitoring import FAIL_ON
    from modelfoundry.errors import ConfigError
    from modelfoundry.monitor.report import FORMATS

    for flag, value, choices in (("--fail-on", fail_on, FAIL_ON), ("--format", fmt, FORMATS)):
        if value not in choices:
            raise ConfigError(f"{flag} must be one of {', '.join(choices)}. Got '{value}' instead.")
    if target == "report" and (model is not None or not Path(target).exists()):
        if model is None:
            raise ConfigError("`foundry monitor report` needs the MODEL whose logged rows to analyse.",
                              "Run `foundry monitor report NAME@ALIAS` (or a run directory).")
        _only(data=("--data", data, "foundry monitor MODEL --data FILE"))
        from modelfoundry.api.monitoring import monitor_log

        result = monitor_log(model, limit=limit, version=version, url=url, window_rows=window_rows, uri=uri)
    else:
        if model is not None:
            raise ConfigError(f"`foundry monitor` takes one MODEL; got '{target}' and '{model}'.",
                              "Run `foundry monitor MODEL --data FILE`, or `foundry monitor report MODEL`.")
        if data is None:
            raise ConfigError("`foundry monitor MODEL` needs the rows to compare: --data FILE.",
                              f"Run `foundry monitor {target} --data new.csv`, or `foundry monitor report {target}` "
                              "for the rows the server logged.")
        _only(limit=("--limit", limit, "report"), version=("--version", version, "report"),
              url=("--url", url, "report"))
        from modelfoundry.api.monitoring import monitor_data

        result = monitor_data(target, data, window_rows=window_rows, uri=uri)
    _finish(result, report, fmt, fail_on)


def _only(**given: tuple[str, Any, str]) -> None:
    from modelfoundry.errors import ConfigError

    for flag, value, form in given.values():
        if value is not None:
            usage = "foundry monitor report MODEL" if form == "report" else form
            raise ConfigError(f"{flag} belongs to `{usage}` only.", f"Drop {flag}, or run `{usage}`.")


def _finish(result: Any, report: Optional[Path], fmt: str, fail_on: str) -> None:
    from modelfoundry.api.arguments import fresh_dir
    from modelfoundry.errors import DriftDetected
    from modelfoundry.monitor.report import write_report

    failing = result.failed(fail_on)  # a bad --fail-on is refused before anything is written
    out_dir = report or fresh_dir(Path(), f"monitor-report-{_safe(result.model)}")
    path = write_report(result, out_dir, fmt)
    print_monitor(result)
    open_console().print(f"Report: {path}", markup=False, soft_wrap=True)
    if failing:
        named = ", ".join(_shown(c) for c in failing[:SHOWN]) + (f" and {len(failing) - SHOWN} more"
                                                                 if len(failing) > SHOWN else "")
        raise DriftDetected(f"Drift alert ({fail_on}) on {len(failing)} column{'s' * (len(failing) != 1)}: {named}.",
                            f"See {path}; exit code 10 fails a CI step (--fail-on never reports without failing).")


def print_monitor(result: Any) -> None:
    """The per-column table, then dataset drift, OOD share and the log's live figures."""
    from rich.table import Table

    from modelfoundry.monitor.report import health_lines

    count = len(result.windows)
    table = Table("column", "test", "score", "p-value", "threshold", "windows drifted", "alert", title_justify="left",
                  title=f"Drift: {result.model}{' ' + result.version if result.version else ''} vs its reference, "
                        f"{result.rows} rows from {result.source} in {count} window{'s' * (count != 1)}")
    for c in result.columns:
        table.add_row(_shown(c.column), c.test, f"{c.score:.4g}", "-" if c.p_value is None else f"{c.p_value:.3g}",
                      f"{c.threshold:.4g}", f"{c.windows_drifted}/{c.windows}",
                      "[bold red]ALERT[/]" if c.alert else "-")
    console = open_console()
    console.print(table)
    console.print(f"Dataset drift in {result.dataset_drift_windows} of {count} windows.", markup=False)
    for line in health_lines(result, by_window=True):
        console.print(line[0].upper() + line[1:] + ".", markup=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"Note: {note}", markup=False, soft_wrap=True)


def _shown(column: str) -> str:
    from modelfoundry.monitor.report import column_title

    return column_title(column)


def _safe(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "model"
