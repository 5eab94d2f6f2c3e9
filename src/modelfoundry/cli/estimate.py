"""`foundry estimate CONFIG`: the memory and time a language model's training (or serving) will need."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from modelfoundry.cli.console import friendly_errors, open_console
from modelfoundry.cli.options import ConfigArg, NoProgress
from modelfoundry.cli.progress import reporter


@friendly_errors
def estimate(config: ConfigArg,
             steps: Annotated[int, typer.Option("--steps", min=0, help="Training steps to time after one warm-up "
                                                "(0: memory only, nothing built).")] = 3,
             serving: Annotated[bool, typer.Option("--serving", help="Estimate serving instead: weights and a KV "
                                                   "cache per stream (serve.max_streams, serve.llm_dtype).")] = False,
             memory_gb: Annotated[float | None, typer.Option("--memory-gb", min=0.01, help="Fit in this much "
                                                                "memory (default: what the machine has "
                                                                "available).", show_default=False)] = None,
             no_progress: NoProgress = False) -> None:
    """Say the memory training a language model (or serving it) will need, item by item, and the time per step;
    if it won't fit, the config changes that would. Exits non-zero when it won't fit."""
    from modelfoundry.api.estimation import estimate as estimate_training
    from modelfoundry.api.estimation import estimate_serving, gib
    from modelfoundry.config import load_config
    from modelfoundry.errors import ConfigError, ServingError, TrainingError

    resolved = load_config(config)
    available = int(memory_gb * (1 << 30)) if memory_gb is not None else None
    if serving:
        if resolved.model.name != "llm":
            raise ConfigError("foundry estimate --serving covers language models (model: {name: llm}).")
        serve = resolved.serve
        # a stream holds its prompt and its answer: about data.lm.max_length + serve.max_new_tokens tokens
        result = estimate_serving(resolved.model.base, dtype=serve.llm_dtype, max_streams=serve.max_streams,
                                  context=resolved.data.lm.max_length + serve.max_new_tokens,
                                  available_bytes=available)
    else:
        result = estimate_training(resolved, timed_steps=steps, available_bytes=available,
                                   progress=reporter(no_progress, transient=True))
    print_estimate(result)
    if not result.fits:
        error = ServingError if serving else TrainingError
        raise error(f"This {result.kind} won't fit: it needs about {gib(result.total_bytes)} and "
                    f"{gib(result.available_bytes)} is available (keeping 10% free).", result.hint())


def print_estimate(result: Any) -> None:
    """The items and totals, the machine's memory, the verdict, the timing and the fallbacks as tables."""
    from rich.table import Table

    from modelfoundry.api.estimation import describe_changes, gib

    console = open_console()
    table = Table(title=f"{result.kind.capitalize()} {result.model}: memory", title_justify="left")
    table.add_column("item", style="bold")
    table.add_column("size", justify="right")
    for name, size in result.items.items():
        table.add_row(name, gib(size))
    table.add_row("total", gib(result.total_bytes), style="bold")
    table.add_row("available", gib(result.available_bytes))
    console.print(table)
    settings = describe_changes(result.settings)
    console.print(f"For {settings}.", markup=False, soft_wrap=True)
    params = result.parameters
    if params.get("trainable") is not None:
        console.print(f"Parameters: {params['total']:,} ({params['trainable']:,} trained"
                      + (f", {params['adapters']:,} in LoRA adapters" if params.get("adapters") else "") + ").",
                      markup=False)
    verdict = "[green]fits[/]" if result.fits else "[bold red]won't fit[/]"
    console.print(f"Verdict: {verdict} ({gib(result.total_bytes)} of {gib(result.available_bytes)} available).")
    if result.step_s is not None:
        line = f"Time: {result.step_s:.2f} s per step, {result.tokens_s:,.0f} tokens/s"
        if result.epoch_s is not None:
            line += f"; an epoch of {result.train_rows:,} training rows ~{_duration(result.epoch_s)}"
        else:
            line += f"; 1000 training rows ~{_duration(result.per_1000_rows_s)}"
        console.print(line + ".", markup=False)
    if result.fallbacks:
        options = Table("change", "total", title="Would fit", title_justify="left")
        for fallback in result.fallbacks:
            options.add_row(describe_changes(fallback["changes"]), gib(fallback["total_bytes"]))
        console.print(options)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
