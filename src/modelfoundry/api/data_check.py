"""`foundry data check`: a data-quality report on a file, a bundled dataset or a config's data before any training;
and the quick part of it that `foundry run` reports before it trains."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelfoundry.errors import FoundryError

if TYPE_CHECKING:
    import pandas as pd

    from modelfoundry.config import Config
    from modelfoundry.data.prepare import PreparedData
    from modelfoundry.data.quality.checkup import CheckResult
    from modelfoundry.data.quality.findings import Finding
    from modelfoundry.reporting import Reporter

CONFIG_SUFFIXES = (".yaml", ".yml")
SHOWN_AT_RUN = 6  # findings `foundry run` lists before training (warnings and errors); the rest are counted


@dataclass
class DataCheckResult:
    """The check's findings, the files written, and the findings `fail_on` fails on (the CLI exits 11 on them)."""

    check: CheckResult
    files: dict[str, Path]
    failing: list[Finding] = field(default_factory=list)
    fail_on: str | None = None
    wall_s: float = 0.0


@dataclass
class _Table:
    frame: pd.DataFrame
    name: str
    target: str | None = None
    task: str = "auto"
    kinds: dict[str, str] = field(default_factory=dict)
    seed: int = 0


def check_data(data: str | Path, *, target: str | None = None, compare: str | Path | None = None,
               out: str | Path = "data-check", fmt: str = "md", fail_on: str | None = None,
               seed: int | None = None, max_plots: int | None = None) -> DataCheckResult:
    """Check a table's quality and write the report.

    Args:
        data: a data file (.csv, .parquet, .jsonl, ...), a bundled dataset (``sklearn:breast_cancer``) or a config
            YAML, whose data.source, data.target, data.task and data.features (types, ignored columns) apply.
        target: the column to predict (overrides the config's); without one the target checks are skipped.
        compare: a second file (or bundled name) to compare with: per-column shift and adversarial validation.
        out: the report directory: findings.json, report.md / report.html, plots/.
        fmt: md, html or both.
        fail_on: a severity (warning, error) and/or finding kinds (leakage,pii): `failing` lists what matches.
        seed: the seed of every sample and fold (default: the config's, else 0).
        max_plots: columns plotted at most (default 50, those with findings first; 0: no plots).
    """
    from modelfoundry.data.quality.checkup import check_frame
    from modelfoundry.data.quality.findings import failing, parse_fail_on
    from modelfoundry.data.quality.report import FORMATS, write_report
    from modelfoundry.errors import ConfigError

    started = time.perf_counter()
    parse_fail_on(fail_on)  # a bad --fail-on or --format is refused before any work
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}. Got '{fmt}' instead.")
    table = load_table(data, target)
    other = _load(compare, "--compare") if compare is not None else None
    result = check_frame(table.frame, source=table.name, target=table.target, task=table.task,
                         compare=other, compare_name=None if compare is None else _name(compare),
                         seed=table.seed if seed is None else seed, kinds=table.kinds)
    files = write_report(result, table.frame, Path(out), fmt, other, max_plots)
    return DataCheckResult(result, files, failing(result.findings, fail_on), fail_on, time.perf_counter() - started)


def load_table(data: str | Path, target: str | None = None) -> _Table:
    """The rows to check and how to read them: a config's data section (any task: its rows are checked as a table,
    with its target if it has one), or a file / bundled dataset as it is."""
    if Path(str(data)).suffix.lower() in CONFIG_SUFFIXES:
        return _from_config(Path(data), target)
    return _Table(_load(data, "DATA"), _name(data), target)


def _from_config(path: Path, target: str | None) -> _Table:
    import fnmatch

    from modelfoundry.config import load_config

    config = load_config(path)
    frame = _load(config.data.source, f"data.source in {path}")
    kinds, ignored = {}, []
    for column in frame.columns:
        override = next((o for key, o in config.data.features.items() if fnmatch.fnmatchcase(column, key)), None)
        if override is not None and override.type == "ignore":
            ignored.append(column)
        elif override is not None and override.type in ("numeric", "categorical", "text"):
            kinds[column] = override.type
    task = config.data.task if config.data.task in ("classification", "regression") else "auto"
    seed = config.data.split.seed if config.data.split.seed is not None else config.seed
    return _Table(frame.drop(columns=ignored), _name(config.data.source), target or config.data.target, task, kinds,
                  seed)


def _load(source: str | Path, given_as: str) -> pd.DataFrame:
    from modelfoundry.data.sources import is_bundled, load_source, read_table

    text = str(source)
    if is_bundled(text):
        return load_source(text)
    return read_table(Path(text).expanduser(), given_as=given_as)


def _name(source: str | Path) -> str:
    from modelfoundry.data.sources import is_bundled

    return str(source) if is_bundled(str(source)) else Path(source).name


def warn_before_training(config: Config, data: PreparedData, progress: Reporter | bool | None) -> None:
    """`foundry run`'s data warnings: the quick checks on the rows just prepared (all splits together), their
    warnings and errors reported as lines before training starts. Never fails the run."""
    import logging

    import pandas as pd

    from modelfoundry.data.quality.checkup import quick_check
    from modelfoundry.reporting import reporter_for

    reporter = reporter_for(progress)
    if reporter is None or not data.frames or data.task not in ("classification", "regression") \
            or config.data.time_series is not None:  # a series' time column is meant to be unique and ordered
        return
    try:
        frame = pd.concat(list(data.frames.values()))
        result = quick_check(frame, source=config.data.source, target=config.data.target, task=data.task,
                             seed=config.seed)
    except (FoundryError, ValueError, TypeError, KeyError, IndexError, MemoryError, OSError) as exc:
        logging.getLogger(__name__).warning("the quick data check was skipped: %s", exc)
        return
    for line in run_lines(result.findings, config.data.source, config.data.target):
        reporter.message(line)


def run_lines(findings: list[Finding], source: str, target: str | None) -> list[str]:
    """The lines `foundry run` shows: warnings and errors (at most SHOWN_AT_RUN), then where to see them all."""
    import shlex

    serious = [f for f in findings if f.severity != "info"]
    lines = [f"Data {f.severity}: {f.message}" for f in serious[:SHOWN_AT_RUN]]
    if serious:
        more = len(serious) - SHOWN_AT_RUN
        command = f"foundry data check {shlex.quote(source)}" + (f" --target {shlex.quote(target)}" if target else "")
        lines.append(f"{f'{more} more data findings. ' if more > 0 else ''}The full report, with a fix for each: "
                     f"`{command}`.")
    return lines


def result_json(result: DataCheckResult) -> dict[str, Any]:
    """The result as JSON: the check, the files written and what fails."""
    return {**result.check.to_json(), "files": {k: str(v) for k, v in result.files.items()},
            "fail_on": result.fail_on, "failing": len(result.failing)}
