"""The `foundry` command: parses arguments, calls the API in api/, prints summaries. No logic here.

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
RunDirArg = Annotated[Path, typer.Argument(help="A run directory made by `foundry run`, or a registered model: "
                                           "NAME, NAME/VERSION or NAME@ALIAS.", show_default=False)]
NoProgress = Annotated[bool, typer.Option("--no-progress", help="Hide the progress bar.")]
UriOption = Annotated[Optional[str], typer.Option("--uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                                                  "else the nearest foundry.db here or in a parent directory).")]


PIPED_WIDTH = 1000  # off a terminal rich would assume 80 columns: cut tables, commands wrapped mid-way


def _console(stderr: bool = False) -> Any:
    """A console for the CLI's output; off a terminal (a pipe, a log, CI) lines are never wrapped or cut."""
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console.soft_wrap = True
        console.width = max(console.width, PIPED_WIDTH)
    return console


def friendly_errors(command: Callable) -> Callable:
    """Print FoundryErrors as one clean paragraph (no traceback) and exit with their code. Credentials in URIs
    are redacted from everything printed, tracebacks of unexpected errors included."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from modelfoundry.errors import FoundryError
        from modelfoundry.redact import redact, redact_exception

        def text(value: Any) -> str:  # redacted, and literal: a '[...]' in a message is not rich markup
            from rich.markup import escape

            return escape(redact(value))

        try:
            return command(*args, **kwargs)
        except FoundryError as exc:
            console = _console(stderr=True)
            console.print(f"[bold red]Error:[/] {text(exc.message)}", soft_wrap=True, markup=True)
            if exc.hint:
                console.print(f"[bold]Next:[/] {text(exc.hint)}", soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:  # permissions, a full disk, a path that is a directory: not a bug, say so
            where = f" '{text(exc.filename)}'" if exc.filename else ""
            _console(stderr=True).print(f"[bold red]Error:[/] could not access{where}: "
                                        f"{text(exc.strerror or exc)}.", soft_wrap=True)
            if isinstance(exc, IsADirectoryError):
                _console(stderr=True).print("[bold]Next:[/] Give the path of a file (inside that directory, or "
                                            "elsewhere), not of a directory.", soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            _console(stderr=True).print("Interrupted.")
            raise typer.Exit(130) from None
        except Exception as exc:  # a bug: its traceback stays, without the credentials of any URI in it
            redact_exception(exc)
            raise

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
    from modelfoundry.api.training import run as run_pipeline

    _need_config_or_resume(config, resume)
    _say_tracking(config=config if config is not None else resume / "config.yaml")
    result = run_pipeline(config, run_dir=run_dir, resume=resume, progress=not no_progress)
    _print_summary(result)


@app.command()
@friendly_errors
def train(config: Annotated[Optional[Path], typer.Argument(help="Experiment config (YAML).", show_default=False)] = None,
          run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="Where to write the run.")] = None,
          resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue this run directory.")] = None,
          no_progress: NoProgress = False) -> None:
    """Prepare data and train only (no test evaluation); `foundry evaluate RUN_DIR` afterwards."""
    from modelfoundry.api.training import train as train_pipeline

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
    from modelfoundry.api.evaluation import evaluate as evaluate_run

    _print_summary(evaluate_run(run_dir, data=data, out=out))


@app.command()
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
    from rich.table import Table

    from modelfoundry.api.cross_validation import cross_validate

    result = cross_validate(config, folds=folds, stratified=stratified, out=out, progress=not no_progress)
    info = result.info
    table = Table("fold", "train/val/held-out", "best epoch", *result.headline, title_justify="left",
                  title=f"{info['name']}: {info['k']}-fold cross-validation ({result.task}, "
                        f"{'stratified, ' if info['stratified'] else ''}{info['rows']} rows, seed {info['seed']})")
    for fold in result.folds:
        table.add_row(str(fold["fold"]), f"{fold['rows_train']}/{fold['rows_val']}/{fold['rows_heldout']}",
                      f"{fold['best_epoch']} of {fold['epochs_run']}",
                      *(f"{fold['metrics'][n]:.4f}" for n in result.headline), end_section=fold is result.folds[-1])
    table.add_row("mean ± std", "", "", *(f"{result.mean[n]:.4f} ± {result.std[n]:.4f}" for n in result.headline),
                  style="bold")
    console = _console()
    if not console.is_terminal:  # logs and pipes have no width to fit; rich would assume 80 columns
        console.width = max(console.width, 120)
    console.print(table)
    console.print(f"Wall time {result.wall_s:.1f} s. Per-fold metrics and held-out rows: {result.path}",
                  markup=False, soft_wrap=True)


@app.command()
@friendly_errors
def predict(run_dir: RunDirArg,
            input_path: Annotated[Path, typer.Argument(help="Rows to predict (.csv/.parquet/.jsonl), with the "
                                                       "training columns.", show_default=False)],
            output: Annotated[Path, typer.Option("-o", "--output", help="Where to write predictions "
                                                 "(.csv or .parquet).")] = Path("predictions.csv")) -> None:
    """Predict labels (and class probabilities) for new rows, with the run's preprocessing."""
    from modelfoundry.api.prediction import predict as predict_rows

    table = predict_rows(run_dir, input_path, output)
    _console().print(f"Wrote {len(table)} predictions to [bold]{output}[/].")
    counts = table.attrs.get("input_warnings") or {}
    if counts:  # one line; each row's details are in the file's warnings column
        kinds: dict[str, list[str]] = {}
        for (column, kind), n in counts.items():
            kinds.setdefault(kind, []).append(f"'{column}' {n}")
        flagged = int((table["warnings"] != "").sum())
        _console().print(f"[yellow]Input warnings[/] on {flagged} of {len(table)} rows: "
                         + "; ".join(f"{kind.replace('_', ' ')} ({', '.join(cols)})" for kind, cols in kinds.items())
                         + " - see the warnings column.", soft_wrap=True)


@app.command()
@friendly_errors
def tune(config: ConfigArg,
         n_trials: Annotated[Optional[int], typer.Option("--n-trials", min=1, help="Trials in the whole study "
                                                         "(default: tune.n_trials).")] = None,
         n_jobs: Annotated[Optional[int], typer.Option("--n-jobs", min=1, help="Worker processes on this machine "
                                                       "(default: tune.n_jobs).")] = None,
         out: Annotated[Optional[Path], typer.Option("--out", help="Output directory (default: "
                                                     "runs/<name>-tune/).")] = None,
         storage: Annotated[Optional[str], typer.Option("--storage", help="Optuna storage URL shared by workers, "
                                                        "e.g. postgresql://user:pass@host/db (default: SQLite "
                                                        "study.db in the output directory).")] = None,
         resume: Annotated[bool, typer.Option("--resume", help="Continue the study (or join it as another "
                                              "worker) until it has its n_trials.")] = False,
         no_progress: NoProgress = False) -> None:
    """Search hyperparameters with Optuna (the config's tune: section); writes best.yaml, trials.csv, plots."""
    from modelfoundry.api.tuning import tune as tune_study

    _say_tracking(config=config)
    result = tune_study(config, n_trials=n_trials, n_jobs=n_jobs, out=out, storage=storage, resume=resume,
                        progress=not no_progress)
    _print_tune_summary(result)


@app.command()
@friendly_errors
def compress(model: RunDirArg,
             max_drop: Annotated[Optional[float], typer.Option("--max-drop", min=0, help="Largest allowed drop of the "
                                                               "validation metric, in its units (default: "
                                                               "compress.max_drop, 0.01).")] = None,
             prefer: Annotated[Optional[str], typer.Option("--prefer", help="latency or size: what the chosen "
                                                           "variant should improve.")] = None,
             out: Annotated[Optional[Path], typer.Option("--out", help="Output directory (default: "
                                                         "runs/<name>-compressed-<timestamp>/).")] = None,
             only: Annotated[Optional[str], typer.Option("--only", help="Comma-separated compressors to try "
                                                         "(default: compress.variants).")] = None,
             no_progress: NoProgress = False) -> None:
    """Try int8/fp16 quantization, pruning and distillation; keep the best variant within the accuracy guard."""
    from modelfoundry.errors import CompressError, ConfigError, unknown_name
    from modelfoundry.api.compression import compress as compress_model

    if prefer is not None and prefer not in ("latency", "size"):
        raise ConfigError(unknown_name("--prefer", prefer, ["latency", "size"]))
    variants = [v.strip() for v in only.split(",") if v.strip()] if only else None
    _say_tracking(config=model / "config.yaml" if model.is_dir() else None)
    result = compress_model(str(model), max_drop=max_drop, prefer=prefer, out=out, variants=variants,
                            progress=not no_progress)
    _print_compress_summary(result)
    if result.chosen is None:
        failing = result.best_failing
        if failing is None:
            reason = "no variant could be measured"
        else:
            failed = [c for c in failing["guard"] if not c["passed"]]
            reason = (f"the closest, {failing['name']}, fails the {', '.join(c['metric'] for c in failed)} "
                      f"guard{'s' if len(failed) > 1 else ''}: {'; '.join(_guard_failure(c) for c in failed)}")
        kept = [e for e in result.variants if e["passed_guard"] and e["servable"]]
        if failing is None and kept:
            reason = "the variants within the guard are neither faster nor smaller than the original here"
        raise CompressError(f"No compressed variant was kept: {reason}. The original is untouched; the "
                            f"measurements are in {result.report}.",
                            "Allow a larger drop of the primary metric with --max-drop, loosen compress.guard "
                            "(docs/compression.md#the-guard), or try other compressors (compress.variants).")


def _guard_failure(check: dict[str, Any]) -> str:
    from modelfoundry.compress.guard import failure_text

    return failure_text(check)


@app.command("export")
@friendly_errors
def export_model(model: RunDirArg,
                 fmt: Annotated[str, typer.Option("--format", help="Export format.")] = "onnx",
                 output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output directory "
                                                                "(default: RUN_DIR/model/onnx).")] = None,
                 tolerance: Annotated[float, typer.Option("--tolerance", help="Largest allowed difference between "
                                                          "PyTorch and ONNX Runtime outputs.")] = 1e-4) -> None:
    """Export to ONNX (dynamic batch) with its preprocessing sidecar, checked for parity on held-out rows."""
    from modelfoundry.api.exporting import export

    if not model.exists():  # a registered version: the export is recorded on it
        _say_tracking()
    result = export(str(model), output, fmt=fmt, tolerance=tolerance)
    _console().print(f"Exported to [bold]{result.out_dir}[/] ({result.exporter} exporter, opset {result.opset}): "
                     f"max |torch - onnxruntime| = {result.max_abs_diff:.2e} on {result.rows_checked} held-out rows.")


@app.command()
@friendly_errors
def serve(model: RunDirArg,
          host: Annotated[Optional[str], typer.Option("--host", help="Interface to bind [serve.host].")] = None,
          port: Annotated[Optional[int], typer.Option("--port", help="TCP port [serve.port].")] = None,
          workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="Server processes "
                                                         "[serve.workers].")] = None,
          backend: Annotated[Optional[str], typer.Option("--backend", help="onnx (ONNX Runtime) or torch "
                                                         "[serve.backend].")] = None,
          batching: Annotated[Optional[bool], typer.Option("--batching/--no-batching", help="Coalesce concurrent "
                                                           "requests into one model call "
                                                           "[serve.batching].", show_default=False)] = None,
          max_batch_size: Annotated[Optional[int], typer.Option("--max-batch-size", min=1, help="Rows per model "
                                                                "call [serve.max_batch_size].")] = None,
          max_latency_ms: Annotated[Optional[float], typer.Option(
              "--max-latency-ms", min=0, help="How long a batch waits for more requests "
              "[serve.max_latency_ms].")] = None,
          max_queue_size: Annotated[Optional[int], typer.Option("--max-queue-size", min=1, help="Waiting requests "
                                                                "before 503 [serve.max_queue_size].")] = None,
          queue_timeout_ms: Annotated[Optional[float], typer.Option(
              "--queue-timeout-ms", min=1, help="Longest wait in the queue before 503 "
              "[serve.queue_timeout_ms].")] = None,
          max_records: Annotated[Optional[int], typer.Option("--max-records", min=1, help="Rows per request "
                                                             "[serve.max_records].")] = None,
          poll_s: Annotated[Optional[float], typer.Option("--poll-s", min=0, help="Seconds between checks of the "
                                                          "alias (hot switch); 0 disables [serve.poll_s].")] = None,
          api_keys_file: Annotated[Optional[Path], typer.Option(
              "--api-keys-file", help="Require an API key (file from `foundry keys create`) "
              "[serve.api_keys_file].")] = None,
          max_body_mb: Annotated[Optional[float], typer.Option("--max-body-mb", min=0.001, help="Largest request "
                                                               "body [serve.max_body_mb].")] = None,
          rate_limit: Annotated[Optional[float], typer.Option(
              "--rate-limit", min=0.001, help="Requests per second per API key (per client without keys) "
              "[serve.rate_limit_per_s].")] = None,
          rate_burst: Annotated[Optional[int], typer.Option("--rate-burst", min=1, help="Requests allowed at once "
                                                            "above the rate [serve.rate_burst].")] = None,
          on_unseen: Annotated[Optional[str], typer.Option(
              "--on-unseen", help="An unseen category: warn (predict, with a warning) or reject (422) "
              "[serve.on_unseen].")] = None,
          openapi: Annotated[Optional[bool], typer.Option("--openapi/--no-openapi", help="Serve /openapi.json "
                                                          "[serve.openapi].", show_default=False)] = None,
          access_log: Annotated[Optional[bool], typer.Option("--access-log/--no-access-log", help="Log every "
                                                             "request (costs ~5% of throughput) [serve.access_log].",
                                                             show_default=False)] = None,
          uri: UriOption = None) -> None:
    """Serve a model over HTTP: Open Inference Protocol v2 and POST /predict.

    Settings come from the model's own config (its serve: section, defaults in docs/config.md); each option
    given overrides the key in brackets."""
    import os

    import uvicorn

    from modelfoundry.serve.main import ENV_MODEL, ENV_SETTINGS, ENV_URI
    from modelfoundry.serve.store import serve_settings, store_for

    given = {"host": host, "port": port, "workers": workers, "backend": backend, "batching": batching,
             "max_batch_size": max_batch_size, "max_latency_ms": max_latency_ms, "max_queue_size": max_queue_size,
             "queue_timeout_ms": queue_timeout_ms, "max_records": max_records, "poll_s": poll_s,
             "api_keys_file": str(api_keys_file) if api_keys_file else None, "max_body_mb": max_body_mb,
             "rate_limit_per_s": rate_limit, "rate_burst": rate_burst, "on_unseen": on_unseen, "openapi": openapi,
             "access_log": access_log}
    settings = serve_settings(store_for(str(model), uri), {k: v for k, v in given.items() if v is not None})
    if settings.api_keys_file:
        from modelfoundry.serve.security import ApiKeys

        settings.api_keys_file = str(Path(settings.api_keys_file).resolve())
        ApiKeys.from_file(Path(settings.api_keys_file))  # a bad file fails here, with its line, not in every worker
    store = store_for(str(model), uri, settings.backend)
    loaded = store.load()  # an unloadable model fails here, as one paragraph; downloaded and exported once
    options = {"host": settings.host, "port": settings.port, "timeout_graceful_shutdown": 30, "log_level": "info",
               "access_log": settings.access_log}
    if settings.workers == 1:
        from modelfoundry.serve.app import create_app

        uvicorn.run(create_app(settings, store, preloaded=loaded), **options)
        return
    os.environ.update({ENV_MODEL: str(model), ENV_URI: uri or "", ENV_SETTINGS: settings.model_dump_json()})
    uvicorn.run("modelfoundry.serve.main:build", factory=True, workers=settings.workers, **options)


@app.command()
@friendly_errors
def migrate(run_dir: Annotated[Path, typer.Argument(help="A run directory made by modelfoundry 0.1 "
                                                  "(with preprocess.pkl).", show_default=False)]) -> None:
    """Convert a 0.1 run directory's pickled preprocessing to preprocess.json, without executing the pickle."""
    from modelfoundry.legacy import migrate_run_dir

    written = migrate_run_dir(run_dir)
    _console().print(f"[green]Migrated[/] {run_dir}: wrote {written.name}; the pickle is kept as "
                     "preprocess.pkl.migrated and never loaded.", soft_wrap=True)


@app.command()
def datasets() -> None:
    """List the bundled datasets usable as data.source without any download."""
    from modelfoundry.data.sources import BUNDLED

    for name in BUNDLED:
        typer.echo(f"sklearn:{name}")


keys_app = typer.Typer(help="API keys for `foundry serve --api-keys-file`.", no_args_is_help=True,
                       rich_markup_mode=None)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
@friendly_errors
def keys_create(name: Annotated[str, typer.Argument(help="Who the key is for (letters, digits, _ . -).")],
                file: Annotated[Path, typer.Option("--file", help="Keys file (created if missing; only hashes "
                                                   "are stored).")] = Path("api-keys.txt")) -> None:
    """Create an API key; it is printed once, and only its hash is stored."""
    from modelfoundry.serve.security import create_key

    key = create_key(file, name)
    _console().print(f"API key for [bold]{name}[/] (shown once; send as 'Authorization: Bearer KEY'):")
    typer.echo(key)


registry_app = typer.Typer(help="Registered models: versions, aliases, lineage, rollback.", no_args_is_help=True,
                           rich_markup_mode=None)
app.add_typer(registry_app, name="registry")
ReasonOption = Annotated[str, typer.Option("--reason", help="Why; kept in the alias history.")]


@registry_app.command("list")
@friendly_errors
def registry_list(uri: UriOption = None) -> None:
    """List registered models with their latest version and aliases."""
    from rich.table import Table

    from modelfoundry.registry import list_models

    table = Table("model", "versions", "latest", "aliases", "updated", title_justify="left")
    for m in list_models(uri):
        aliases = ", ".join(f"{a}->v{v}" for a, v in sorted(m["aliases"].items())) or "-"
        table.add_row(m["name"], str(m["versions"]), str(m["latest"]), aliases, m["updated"] or "-")
    _console().print(table)


@registry_app.command("show")
@friendly_errors
def registry_show(ref: Annotated[str, typer.Argument(help="NAME, NAME/VERSION or NAME@ALIAS.")],
                  uri: UriOption = None) -> None:
    """Show a model's versions, or one version's lineage and test metrics."""
    from modelfoundry.registry import show

    info = show(ref, uri)
    console = _console()
    for version in info.get("versions", [info]):
        console.print(f"[bold]{info['name']} v{version['version']}[/]  created {version['created']}")
        for key, value in sorted(version["tags"].items()):
            console.print(f"  {key.removeprefix('foundry.')}: {value}", markup=False)
        for key, value in sorted(version["metrics"].items()):
            if not key.startswith("baseline_"):  # baselines stay in the run's report and `registry diff`
                console.print(f"  test {key}: {value:.4f}", markup=False)
    console.print(f"aliases: {info['aliases'] or 'none'}")


@registry_app.command("promote")
@friendly_errors
def registry_promote(name: str, version: str,
                     alias: Annotated[str, typer.Option("--alias", help="Alias to move.")] = "production",
                     reason: ReasonOption = "", uri: UriOption = None) -> None:
    """Point an alias (default: production) at a version."""
    from modelfoundry.registry import promote

    _say_tracking(uri)
    entry = promote(name, version, alias, reason, uri)
    _console().print(f"{name}@{alias}: v{entry['from'] or '-'} -> v{entry['to']}")


@registry_app.command("rollback")
@friendly_errors
def registry_rollback(name: str, alias: Annotated[str, typer.Option("--alias", help="Alias to move back.")] = "production",
                      reason: ReasonOption = "", uri: UriOption = None) -> None:
    """Move an alias back to the version that held it before."""
    from modelfoundry.registry import rollback

    _say_tracking(uri)
    entry = rollback(name, alias, reason, uri)
    _console().print(f"{name}@{alias}: v{entry['from']} -> v{entry['to']} (rolled back)")


@registry_app.command("history")
@friendly_errors
def registry_history(name: str, uri: UriOption = None) -> None:
    """Every alias move of a model: time, user, alias, from, to, action, reason."""
    from rich.table import Table

    from modelfoundry.registry import history

    table = Table("time (UTC)", "user", "alias", "from", "to", "action", "reason", title_justify="left")
    for e in history(name, uri):
        table.add_row(e["time"][:19], e["user"], e["alias"], str(e["from"] or "-"), e["to"], e["action"], e["reason"])
    _console().print(table)


@registry_app.command("diff")
@friendly_errors
def registry_diff(name: str, v1: str, v2: str, uri: UriOption = None) -> None:
    """Config keys and test metrics of two versions side by side."""
    from rich.table import Table

    from modelfoundry.registry import diff

    result = diff(name, v1, v2, uri)
    table = Table("key", f"v{v1}", f"v{v2}", title=f"{name}: v{v1} vs v{v2}", title_justify="left")
    for key, (a, b) in result["config"].items():
        table.add_row(key, str(a), str(b))
    for key, (a, b) in result["metrics"].items():
        table.add_row(f"test {key}", "-" if a is None else f"{a:.4f}", "-" if b is None else f"{b:.4f}")
    _console().print(table)


models_app = typer.Typer(help="Move registered model versions between registries as .tar.gz archives.",
                         no_args_is_help=True, rich_markup_mode=None)
app.add_typer(models_app, name="models")


@models_app.command("export")
@friendly_errors
def models_export(ref: Annotated[str, typer.Argument(help="NAME/VERSION or NAME@ALIAS.")],
                  output: Annotated[Path, typer.Option("-o", "--output", help="Archive to write (.tar.gz).")],
                  uri: UriOption = None) -> None:
    """Write one registered version, its artifacts and metadata to a .tar.gz archive."""
    from modelfoundry.archive import export_archive

    meta = export_archive(ref, output, uri)
    _console().print(f"Wrote {meta['name']} v{meta['version']} to [bold]{output}[/].")


@models_app.command("import")
@friendly_errors
def models_import(archive: Annotated[Path, typer.Argument(help="A .tar.gz made by `foundry models export`.")],
                  name: Annotated[Optional[str], typer.Option("--name", help="Register under this name "
                                                              "(default: the archived model's).")] = None,
                  uri: UriOption = None) -> None:
    """Register an archived version in this registry as a new version (lineage kept; aliases not copied)."""
    from modelfoundry.archive import import_archive

    _say_tracking(uri)
    info = import_archive(archive, name, uri)
    _console().print(f"Registered {info['name']} v{info['version']} (from {info['imported_from']}).")


def _say_tracking(uri: Optional[str] = None, *, config: Optional[Path] = None) -> None:
    """Say where tracking lives before a command writes to it: found from the working directory unless a URI
    is set, so running from elsewhere would otherwise write to another store without a word (docs/tracking.md).
    With `config`, its tracking section decides (nothing is said when tracking is off or the file is unreadable:
    the command itself reports that)."""
    from modelfoundry.tracking import describe_uri

    if config is not None:
        from modelfoundry.config import load_config
        from modelfoundry.errors import FoundryError

        try:
            tracking = load_config(config).tracking
        except FoundryError:
            return
        if not tracking.enabled:
            return
        uri = tracking.uri
    _console().print(f"Tracking: {describe_uri(uri)}", markup=False, soft_wrap=True)


def _need_config_or_resume(config: Optional[Path], resume: Optional[Path]) -> None:
    from modelfoundry.errors import ConfigError

    if (config is None) == (resume is None):
        raise ConfigError("Give either a CONFIG to start a run or --resume RUN_DIR to continue one (not both).",
                          "For example: `foundry run examples/digits.yaml`.")


def _print_summary(result: Any) -> None:
    from rich.table import Table

    console = _console()
    if result.extras.get("already_finished"):
        how = "stopped early" if result.stopped_early else "all epochs"
        console.print(f"{result.run_dir} finished training ({how}); only its registration was left to do." if
                      result.extras.get("registry") else
                      f"Nothing to resume: {result.run_dir} finished training ({how}); its results are unchanged.",
                      markup=False)
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
        evaluated_on = result.extras.get("evaluated_on", "test split")
        table.add_row(f"test {name}" if evaluated_on == "test split" else f"{name} ({evaluated_on})", value)
    table.add_row("wall time", f"{result.wall_s:.1f} s")
    console.print(table)
    if result.interrupted:
        console.print(f"[yellow]Stopped on request after a checkpoint.[/] Continue with "
                      f"`foundry run --resume {result.run_dir}`.")
    elif result.metrics:
        report = result.extras.get("out_dir", Path(result.run_dir) / "eval") / "report.md"
        console.print(f"Report: {report}")
    registered = result.extras.get("registry")
    if registered and registered["version"]:
        already = "Already registered (not again)" if registered.get("existing") else "Registered"
        console.print(f"{already} as version {registered['version']} in {registered['uri']} "
                      f"(`foundry registry show {registered['model']}/{registered['version']}`).", markup=False)
    before = result.extras.get("registered_before")
    if before and before.get("version"):
        console.print(f"Already registered as {before['model']}/{before['version']} (not registered again).",
                      markup=False)


def _print_tune_summary(result: Any) -> None:
    from rich.table import Table

    from modelfoundry.redact import redact

    console = _console()
    summary, metric = result.summary, result.metric
    states = summary["states"]
    table = Table(title=f"Study {result.study_name}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("trials", f"{summary['trials']} ({states['COMPLETE']} complete, {states['PRUNED']} pruned, "
                            f"{states['FAIL']} failed)")
    table.add_row("objective", f"{result.direction} {metric}")
    if summary["base_config_value"] is not None:
        table.add_row("config as written", f"{metric} {summary['base_config_value']:.4f} (trial 0)")
    best = summary["best"]
    if best:
        table.add_row("best", f"{metric} {best['value']:.4f} (trial {best['number']})")
        for path, value in best["params"].items():
            table.add_row(f"  {path}", f"{value:.4g}" if isinstance(value, float) else str(value))
    table.add_row("output", str(result.out_dir))
    table.add_row("storage", redact(result.storage))
    table.add_row("wall time", f"{result.wall_s:.1f} s")
    console.print(table)
    ranked = sorted((r for r in result.rows if r["state"] == "COMPLETE" and r["value"] is not None),
                    key=lambda r: r["value"], reverse=result.direction == "maximize")[:5]
    if ranked:
        top = Table("trial", metric, "epochs", *result.summary["best"]["params"], title="Top trials",
                    title_justify="left")
        for r in ranked:
            top.add_row(str(r["number"]), f"{r['value']:.4f}", str(r["epochs"]),
                        *(f"{r[p]:.4g}" if isinstance(r[p], float) else str(r[p]) for p in best["params"]))
        console.print(top)
    failed = [r for r in result.rows if r["state"] == "FAIL" and r.get("error")]
    for r in failed[:3]:
        console.print(f"[yellow]trial {r['number']} failed:[/] {r['error']}", soft_wrap=True)
    skipped = {k: v for k, v in summary["plots"].items() if v.startswith("skipped")}
    for name, why in skipped.items():
        console.print(f"plot {name} {why}", markup=False)
    if result.recovered:
        console.print(f"Trials {', '.join(map(str, result.recovered))} of a killed run were failed and queued again.")
    if result.interrupted:
        console.print(f"[yellow]Interrupted.[/] Continue with `foundry tune CONFIG --resume --out {result.out_dir}`.")
    if best:
        console.print(f"Next: `foundry run {best['config']}` trains the best config.")
    tracked = result.extras.get("tracking")
    if tracked:
        console.print(f"Logged to {tracked['uri']} (experiment {tracked['experiment']}, {tracked['trials_logged']} "
                      "new trial runs).")


def _print_compress_summary(result: Any) -> None:
    from rich.table import Table

    from modelfoundry.compress.report import pareto, ratio_words

    console = _console()
    if not console.is_terminal:  # logs and pipes have no width to fit; rich would assume 80 columns
        console.width = max(console.width, 150)
    entries = [result.original, *result.variants]
    front = pareto([e for e in entries if e["servable"]])
    rules = [g.describe() for g in result.guard] or [f"{result.metric} drop ≤ {result.max_drop:g}"]
    table = Table("variant", "runtime", f"val {result.metric}", "Δ", "b1 ms", "b64 ms", "speedup b1/b64", "size",
                  "params", "guard", title=f"Compression variants (validation split; guard: {'; '.join(rules)})",
                  title_justify="left")
    for e in entries:
        if e.get("error"):
            table.add_row(e["name"], e["runtime"], "-", "-", "-", "-", "-", "-", "-", f"failed: {e['error'][:60]}")
            continue
        chosen = result.chosen is not None and e["name"] == result.chosen["name"]
        mark = "chosen" if chosen else ("pareto" if e["name"] in front else "")
        guard = "-" if e["name"] == "original" else ("pass" if e["passed_guard"] else
                                                     f"FAIL {', '.join(e['failed_guards'])}")
        if not e["servable"]:
            guard += " (not served)"
        table.add_row(f"{e['name']}{' *' if chosen else ''}", e["runtime"], f"{e['metric']:.4f}",
                      "" if e["name"] == "original" else f"{e['metric_delta']:+.4f}",
                      f"{e['latency_b1_ms']:.3f}", f"{e['latency_b64_ms']:.3f}",
                      f"{e['speedup_b1']:.2f}x / {e['speedup_b64']:.2f}x", _size(e["size_bytes"]), f"{e['params']:,}",
                      f"{guard} {mark}".strip())
    console.print(table)
    if result.chosen is not None:
        c = result.chosen
        console.print(f"Chosen: [bold]{c['name']}[/] — {ratio_words(c['speedup_b1'], 'faster', 'slower')} at "
                      f"batch 1, {ratio_words(c['speedup_b64'], 'faster', 'slower')} at batch 64, "
                      f"{ratio_words(1 / c['size_ratio'], 'smaller', 'larger')}, val {result.metric} "
                      f"{c['metric_delta']:+.4f}; agreement with the original {c['agreement']:.4f}.")
        console.print(f"Saved to {result.model_dir} (evaluate, predict, export and serve take it). "
                      f"Test {result.metric}: {result.test_metrics.get(result.metric, float('nan')):.4f}.")
        registered = result.extras.get("registry")
        if registered and registered.get("version"):
            console.print(f"Registered as {registered['model']}/{registered['version']} with its parent and recipe.")
    console.print(f"Report: {result.report}; plot: {result.out_dir / 'scatter.png'}; wall time {result.wall_s:.1f} s.")


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
