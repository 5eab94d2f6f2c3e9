"""Commands on one config or run: validate, run, train, evaluate, cv, predict, migrate, datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from modelfoundry.cli.console import friendly_errors, open_console
from modelfoundry.cli.options import ConfigArg, NoProgress, RunDirArg
from modelfoundry.cli.progress import reporter
from modelfoundry.cli.render import print_cv_summary, print_summary, say_tracking


@friendly_errors
def validate(config: ConfigArg) -> None:
    """Check a config without running anything; print the fully resolved config."""
    from modelfoundry.config import dump_config, load_config

    resolved = load_config(config)
    console = open_console()
    console.print(f"[green]OK[/] {config}: valid. Resolved config (defaults filled in):\n")
    console.print(dump_config(resolved), markup=False)


@friendly_errors
def run(config: Annotated[Optional[Path], typer.Argument(help="Experiment config (YAML).", show_default=False)] = None,
        run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="Where to write the run "
                                                        "(default: runs/<name>-<timestamp>/).")] = None,
        resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue this run directory from its "
                                                       "last checkpoint.")] = None,
        no_progress: NoProgress = False) -> None:
    """Prepare data, train, evaluate on the test split, and summarise (the whole pipeline)."""
    from modelfoundry.api.training import run as run_pipeline

    need_config_or_resume(config, resume)
    from modelfoundry.artifacts.rundir import RunDir

    say_tracking(config=config if config is not None else RunDir(resume).config)
    result = run_pipeline(config, run_dir=run_dir, resume=resume, progress=reporter(no_progress))
    print_summary(result)


@friendly_errors
def train(config: Annotated[Optional[Path], typer.Argument(help="Experiment config (YAML).", show_default=False)] = None,
          run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="Where to write the run.")] = None,
          resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue this run directory.")] = None,
          no_progress: NoProgress = False) -> None:
    """Prepare data and train only (no test evaluation); `foundry evaluate RUN_DIR` afterwards."""
    from modelfoundry.api.training import train as train_pipeline

    need_config_or_resume(config, resume)
    result = train_pipeline(config, run_dir=run_dir, resume=resume, progress=reporter(no_progress))
    print_summary(result)


@friendly_errors
def evaluate(run_dir: RunDirArg,
             data: Annotated[Optional[Path], typer.Option("--data", help="Labelled file to evaluate on "
                                                          "(default: the run's own test split).")] = None,
             out: Annotated[Optional[Path], typer.Option("--out", help="Output directory.")] = None,
             no_progress: NoProgress = False) -> None:
    """Evaluate a trained run: metrics, plots and report.md (a language model: generated answers, beside the
    base model's)."""
    from modelfoundry.api.evaluation import evaluate as evaluate_run

    print_summary(evaluate_run(run_dir, data=data, out=out, progress=reporter(no_progress, transient=True)))


@friendly_errors
def cv(config: ConfigArg,
       folds: Annotated[int, typer.Option("--folds", "-k", min=2, help="Number of folds K.")] = 5,
       stratified: Annotated[Optional[bool], typer.Option("--stratified/--no-stratified", help="Keep class "
                                                          "proportions in every fold (default: data.split.stratify, "
                                                          "classification only).", show_default=False)] = None,
       out: Annotated[Optional[Path], typer.Option("--out", help="Output directory (default: "
                                                   "runs/<name>-cv-<UTC timestamp>/).")] = None,
       no_progress: NoProgress = False) -> None:
    """K-fold cross-validation: train once per fold, print per-fold and mean ± std held-out metrics."""
    from modelfoundry.api.cross_validation import cross_validate

    result = cross_validate(config, folds=folds, stratified=stratified, out=out,
                            progress=reporter(no_progress, transient=True))
    print_cv_summary(result)


@friendly_errors
def predict(run_dir: RunDirArg,
            input_path: Annotated[Path, typer.Argument(help="Rows to predict (.csv/.parquet/.jsonl), with the "
                                                       "training columns.", show_default=False)],
            output: Annotated[Path, typer.Option("-o", "--output", help="Where to write predictions "
                                                 "(.csv or .parquet).")] = Path("predictions.csv")) -> None:
    """Predict labels (and class probabilities) for new rows, with the run's preprocessing."""
    from modelfoundry.api.prediction import predict as predict_rows

    table = predict_rows(run_dir, input_path, output)
    open_console().print(f"Wrote {len(table)} predictions to [bold]{output}[/].")
    counts = table.attrs.get("input_warnings") or {}
    if counts:  # one line; each row's details are in the file's warnings column
        kinds: dict[str, list[str]] = {}
        for (column, kind), n in counts.items():
            kinds.setdefault(kind, []).append(f"'{column}' {n}")
        flagged = int((table["warnings"] != "").sum())
        open_console().print(f"[yellow]Input warnings[/] on {flagged} of {len(table)} rows: "
                         + "; ".join(f"{kind.replace('_', ' ')} ({', '.join(cols)})" for kind, cols in kinds.items())
                         + " - see the warnings column.", soft_wrap=True)


@friendly_errors
def migrate(run_dir: Annotated[Path, typer.Argument(help="A run directory made by modelfoundry 0.1 "
                                                  "(with preprocess.pkl).", show_default=False)]) -> None:
    """Convert a 0.1 run directory's pickled preprocessing to preprocess.json, without executing the pickle."""
    from modelfoundry.legacy import migrate_run_dir

    written = migrate_run_dir(run_dir)
    open_console().print(f"[green]Migrated[/] {run_dir}: wrote {written.name}; the pickle is kept as "
                     "preprocess.pkl.migrated and never loaded.", soft_wrap=True)


def datasets() -> None:
    """List the bundled datasets usable as data.source without any download."""
    from modelfoundry.data.sources import BUNDLED

    for name in BUNDLED:
        typer.echo(name)


def need_config_or_resume(config: Optional[Path], resume: Optional[Path]) -> None:
    from modelfoundry.errors import ConfigError

    if (config is None) == (resume is None):
        raise ConfigError("Give either a CONFIG to start a run or --resume RUN_DIR to continue one (not both).",
                          "For example: `foundry run examples/digits.yaml`.")
