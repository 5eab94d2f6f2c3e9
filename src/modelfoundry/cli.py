"""The `foundry` command: parses arguments, calls the API in pipeline.py, prints summaries. No logic here.

Heavy libraries are imported inside the commands, so `foundry --help` stays instant.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

app = typer.Typer(name="foundry", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None,  # plain help: rendering it with rich costs ~0.1 s per call
                  help="modelfoundry: dataset -> trained, evaluated, reproducible model, from one YAML config.")

ConfigArg = Annotated[Path, typer.Argument(help="Experiment config (YAML).", show_default=False)]
RunDirArg = Annotated[Path, typer.Argument(help="A run directory made by `foundry run`.", show_default=False)]
NoProgress = Annotated[bool, typer.Option("--no-progress", help="Hide the progress bar.")]


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def friendly_errors(command: Callable) -> Callable:
    """Print FoundryErrors as one clean paragraph (no traceback) and exit with their code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from modelfoundry.errors import FoundryError

        try:
            return command(*args, **kwargs)
        except FoundryError as exc:
            console = _console(stderr=True)
            console.print(f"[bold red]Error:[/] {exc.message}", soft_wrap=True, markup=True)
            if exc.hint:
                console.print(f"[bold]Next:[/] {exc.hint}", soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:  # permissions, a full disk, a path that is a directory: not a bug, say so
            where = f" '{exc.filename}'" if exc.filename else ""
            _console(stderr=True).print(f"[bold red]Error:[/] could not access{where}: {exc.strerror or exc}.",
                                        soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            _console(stderr=True).print("Interrupted.")
            raise typer.Exit(130) from None

    return wrapper


@app.command()
@friendly_errors
def validate(config: ConfigArg) -> None:
    """Check a config without running anything; print the fully resolved config."""
    from modelfoundry.config import dump_config, load_config

    resolved = load_config(config)
    console = _console()
    console.print(f"[green]OK[/] {config}: valid. Resolved config (defaults filled in):\n")
    console.print(dump_config(resolved), markup=False)


@app.command()
@friendly_errors
def run(config: Annotated[Optional[Path], typer.Argument(help="Experiment config (YAML).", show_default=False)] = None,
        run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="Where to write the run "
                                                        "(default: runs/<name>-<timestamp>/).")] = None,
        resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue this run directory from its "
                                                       "last checkpoint.")] = None,
        no_progress: NoProgress = False) -> None:
    """Prepare data, train, evaluate on the test split, and summarise (the whole pipeline)."""
    from modelfoundry.pipeline import run as run_pipeline

    _need_config_or_resume(config, resume)
    result = run_pipeline(config, run_dir=run_dir, resume=resume, progress=not no_progress)
    _print_summary(result)


@app.command()
@friendly_errors
def train(config: Annotated[Optional[Path], typer.Argument(help="Experiment config (YAML).", show_default=False)] = None,
          run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="Where to write the run.")] = None,
          resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue this run directory.")] = None,
          no_progress: NoProgress = False) -> None:
    """Prepare data and train only (no test evaluation); `foundry evaluate RUN_DIR` afterwards."""
    from modelfoundry.pipeline import train as train_pipeline

    _need_config_or_resume(config, resume)
    result = train_pipeline(config, run_dir=run_dir, resume=resume, progress=not no_progress)
    _print_summary(result)


@app.command()
@friendly_errors
def evaluate(run_dir: RunDirArg,
             data: Annotated[Optional[Path], typer.Option("--data", help="Labelled file to evaluate on "
                                                          "(default: the run's own test split).")] = None,
             out: Annotated[Optional[Path], typer.Option("--out", help="Output directory.")] = None) -> None:
    """Evaluate a trained run: metrics, plots and report.md."""
    from modelfoundry.pipeline import evaluate as evaluate_run

    _print_summary(evaluate_run(run_dir, data=data, out=out))


@app.command()
@friendly_errors
def predict(run_dir: RunDirArg,
            input_path: Annotated[Path, typer.Argument(help="Rows to predict (.csv/.parquet/.jsonl), with the "
                                                       "training columns.", show_default=False)],
            output: Annotated[Path, typer.Option("-o", "--output", help="Where to write predictions "
                                                 "(.csv or .parquet).")] = Path("predictions.csv")) -> None:
    """Predict labels (and class probabilities) for new rows, with the run's preprocessing."""
    from modelfoundry.pipeline import predict as predict_rows

    table = predict_rows(run_dir, input_path, output)
    _console().print(f"Wrote {len(table)} predictions to [bold]{output}[/].")


@app.command()
def datasets() -> None:
    """List the bundled datasets usable as data.source without any download."""
    from modelfoundry.data.sources import BUNDLED

    for name in BUNDLED:
        typer.echo(f"sklearn:{name}")


def _need_config_or_resume(config: Optional[Path], resume: Optional[Path]) -> None:
    from modelfoundry.errors import ConfigError

    if (config is None) == (resume is None):
        raise ConfigError("Give either a CONFIG to start a run or --resume RUN_DIR to continue one (not both).",
                          "For example: `foundry run examples/digits.yaml`.")


def _print_summary(result: Any) -> None:
    from rich.table import Table

    console = _console()
    table = Table(title="Summary", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("run directory", str(result.run_dir))
    table.add_row("task", result.task)
    if result.epochs_run:
        best = f"{result.best_epoch} of {result.epochs_run}"
        if result.best_value is not None:
            best += f" ({result.monitor} {result.best_value:.4f})"
        table.add_row("best epoch", best + ("; stopped early" if result.stopped_early else ""))
    for name in result.headline:
        value = f"{result.metrics[name]:.4f}"
        linear = result.metrics.get(f"baseline_linear_{name}")
        if linear is not None:
            value += f"   (linear baseline {linear:.4f}, dummy {result.metrics.get(f'baseline_dummy_{name}', 0):.4f})"
        table.add_row(f"test {name}", value)
    table.add_row("wall time", f"{result.wall_s:.1f} s")
    console.print(table)
    if result.interrupted:
        console.print(f"[yellow]Stopped on request after a checkpoint.[/] Continue with "
                      f"`foundry run --resume {result.run_dir}`.")
    elif result.metrics:
        report = result.extras.get("out_dir", Path(result.run_dir) / "eval") / "report.md"
        console.print(f"Report: {report}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
