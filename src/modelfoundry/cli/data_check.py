"""`foundry data check DATA`: the data-quality findings as a table (plain lines off a terminal), the report files,
and exit code 11 when --fail-on matches."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from modelfoundry.cli.console import friendly_errors, open_console

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "dim"}


@friendly_errors
def check(data: Annotated[str, typer.Argument(metavar="DATA", show_default=False,
                                              help="A data file (.csv, .parquet, .jsonl, ...), a bundled dataset "
                                              "(sklearn:breast_cancer) or a config YAML (its data section applies).")],
          target: Annotated[str | None, typer.Option("--target", help="The column to predict (default: the "
                                                        "config's data.target; none: no target checks).")] = None,
          compare: Annotated[str | None, typer.Option("--compare", help="A second file (e.g. the test set) to "
                                                         "compare with: per-column shift and whether a classifier "
                                                         "tells the two apart.")] = None,
          out: Annotated[Path, typer.Option("-o", "--out", help="Report directory.")] = Path("data-check"),
          fmt: Annotated[str, typer.Option("--format", help="Report format: md, html or both.")] = "md",
          fail_on: Annotated[str | None, typer.Option("--fail-on", help="Exit with code 11 when a finding is at "
                                                         "least this severe (warning, error) or of these kinds "
                                                         "(e.g. leakage,pii); comma-separated.")] = None,
          plots: Annotated[int, typer.Option("--plots", min=0, help="Histograms of at most this many columns "
                                             "(those with findings first); 0: none.")] = 50,
          seed: Annotated[int | None, typer.Option("--seed", help="Seed of the samples and folds (default: "
                                                      "the config's, else 0).")] = None) -> None:
    """A data-quality report before any training: missing values, duplicates, constant, ID-like and
    high-cardinality columns, class imbalance, outliers, mixed types, target leakage, likely personal data,
    and (with --compare) distribution shift; per-column histograms; report.md/html and findings.json."""
    from modelfoundry.api.data_check import check_data
    from modelfoundry.errors import DataCheckFailed

    result = check_data(data, target=target, compare=compare, out=out, fmt=fmt, fail_on=fail_on, seed=seed,
                         max_plots=plots)
    print_findings(result)
    if result.failing:
        kinds = sorted({f.kind for f in result.failing})
        many = len(result.failing) != 1
        raise DataCheckFailed(f"{len(result.failing)} finding{'s' * many} match{'es' * (not many)} --fail-on "
                              f"{fail_on}: {', '.join(kinds)}.",
                              f"See {result.files.get('md', result.files.get('html'))}; exit code 11 fails a CI step.")


def print_findings(result: Any) -> None:
    """The findings worst first: a table on a terminal, one plain complete line each elsewhere."""
    from rich.markup import escape
    from rich.table import Table

    from modelfoundry.data.quality.findings import summary
    from modelfoundry.data.quality.report import cell_columns, value_text

    check = result.check
    console = open_console()
    title = (f"Data check: {check.source}: {check.rows} rows, {check.columns} columns"
             + (f", target '{check.target}' ({check.task})" if check.target else "")
             + (f", compared with {check.compare}" if check.compare else ""))
    if console.is_terminal and check.findings:
        table = Table("severity", "kind", "columns", "value", "finding", "fix", title=escape(title),
                      title_justify="left")
        for f in check.findings:
            style = SEVERITY_STYLE[f.severity]
            table.add_row(f"[{style}]{f.severity}[/]", f.kind, escape(cell_columns(f.columns)),
                          value_text(f.kind, f.value), escape(f.message), escape(f.fix))
        console.print(table)
    else:
        console.print(title, markup=False)
        for f in check.findings:
            console.print(f"{f.severity.upper()} {f.kind} [{cell_columns(f.columns)}] {value_text(f.kind, f.value)}: "
                          f"{f.message} Fix: {f.fix}", markup=False, soft_wrap=True)
    console.print(f"{summary(check.findings)} ({result.wall_s:.1f} s).", markup=False)
    for name in ("md", "html", "findings"):
        if name in result.files:
            console.print(f"{'Report' if name != 'findings' else 'Findings'}: {result.files[name]}", markup=False,
                          soft_wrap=True)
