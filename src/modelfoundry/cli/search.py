"""Commands that search for a better model: tune (hyperparameters) and compress (smaller, faster variants)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from modelfoundry.cli.console import friendly_errors
from modelfoundry.cli.options import ConfigArg, NoProgress, RunDirArg
from modelfoundry.cli.progress import reporter
from modelfoundry.cli.render import print_compress_summary, print_tune_summary, say_tracking


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

    say_tracking(config=config)
    result = tune_study(config, n_trials=n_trials, n_jobs=n_jobs, out=out, storage=storage, resume=resume,
                        progress=reporter(no_progress))
    print_tune_summary(result)


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
    from modelfoundry.api.compression import compress as compress_model
    from modelfoundry.api.compression import refusal
    from modelfoundry.errors import ConfigError, unknown_name

    if prefer is not None and prefer not in ("latency", "size"):
        raise ConfigError(unknown_name("--prefer", prefer, ["latency", "size"]))
    variants = [v.strip() for v in only.split(",") if v.strip()] if only else None
    from modelfoundry.artifacts.rundir import RunDir

    say_tracking(config=RunDir(model).config if model.is_dir() else None)
    result = compress_model(str(model), max_drop=max_drop, prefer=prefer, out=out, variants=variants,
                            progress=reporter(no_progress, transient=True))
    print_compress_summary(result)
    refused = refusal(result)
    if refused is not None:
        raise refused
