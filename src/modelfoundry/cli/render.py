"""What the commands print: run, cross-validation, study and compression summaries as rich tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from modelfoundry.cli.console import open_console


def say_tracking(uri: Optional[str] = None, *, config: Optional[Path] = None) -> None:
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
    open_console().print(f"Tracking: {describe_uri(uri)}", markup=False, soft_wrap=True)


def print_summary(result: Any) -> None:
    from rich.table import Table

    console = open_console()
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
    params = result.extras.get("parameters")
    if params and params["total"]:
        trained = params["trainable"]
        table.add_row("parameters", f"{_count(params['total'])}" + ("" if trained == params["total"] else
                      f" ({_count(trained)} trained, {100 * trained / params['total']:.2g}%)"))
    prepared = result.extras.get("prepared_cache")
    if prepared:
        table.add_row("prepared data", f"cache hit (saved {prepared['saved_s']:.1f} s)" if prepared["hit"] else
                      f"prepared in {prepared['prepare_s']:.1f} s" + (", cached for the next run" if prepared["stored"]
                                                                      else ""))
    balance, threshold = result.extras.get("balance"), result.extras.get("threshold")
    if balance:  # data.balance: the training split resampled
        counts = " -> ".join(", ".join(f"{k}: {v}" for k, v in balance[when].items()) for when in ("before", "after"))
        table.add_row("training rows", f"{balance['method']}: {counts}" + (f" ({balance['synthetic']} synthetic)"
                                                                           if balance["synthetic"] else ""))
    if threshold:  # evaluation.threshold: the decision the model predicts with
        positive = threshold["positive"]
        table.add_row("decision threshold", f"{positive} when P({positive}) >= {threshold['value']:.4f} (validation "
                      f"{threshold['metric']} {threshold['validation']:.4f}; {threshold['validation_at_0.5']:.4f} at 0.5)")
    text = []
    if "text_cache" in result.extras:
        text.append("tokens from the cache" if result.extras["text_cache"] else "tokenized (cached for the next run)")
    coverage = result.extras.get("text")
    if coverage and coverage["at_limit"] > 0:
        room = f"{coverage['windows']} windows of {coverage['length']} tokens" if coverage["windows"] else \
            f"{coverage['length']} tokens"
        hint = "data.text.max_windows" if coverage["windows"] else "data.text.stride or max_length"
        share = f"{100 * coverage['at_limit']:.0f}%" if coverage["at_limit"] >= 0.01 else "under 1%"
        text.append(f"{share} of training texts fill all {room}, so are probably cut (see {hint})")
    if text:
        table.add_row("text", "; ".join(text))
    frozen = result.extras.get("feature_cache")
    if frozen:
        table.add_row("frozen encoder", "outputs from the cache" if frozen["hit"] else
                      f"run once per split ({frozen['seconds']:.1f} s)" + (", cached for the next run"
                                                                           if frozen["cached"] else ""))
    average = result.extras.get("average")
    if average:
        what = "epochs" if average["method"] == "swa" else "steps"
        table.add_row("weights", f"{average['method'].upper()} average of {average['averaged']} {what} from epoch "
                      f"{average['from_epoch']} on (training.average)")
    memory = result.extras.get("memory")
    if memory:
        table.add_row("memory", f"peak {memory['peak_rss_bytes'] / (1 << 30):.2f} GiB resident (estimated "
                      f"{memory['estimated_bytes'] / (1 << 30):.2f} GiB before training)")
    if result.epochs_run:
        best = f"{result.best_epoch} of {result.epochs_run}"
        if result.best_value is not None:
            best += f" ({result.monitor} {result.best_value:.4f})"
        table.add_row("best epoch", best + ("; stopped early" if result.stopped_early else ""))
    for name in result.headline:
        value = f"{result.metrics[name]:.4f}"
        linear = result.metrics.get(f"baseline_linear_{name}")
        if linear is not None and f"baseline_last_value_{name}" in result.metrics:  # a time series' baselines
            value += (f"   (linear baseline {linear:.4f}, last value {result.metrics[f'baseline_last_value_{name}']:.4f}"
                      f", seasonal naive {result.metrics.get(f'baseline_seasonal_naive_{name}', 0):.4f})")
        elif linear is not None:
            value += f"   (linear baseline {linear:.4f}, dummy {result.metrics.get(f'baseline_dummy_{name}', 0):.4f})"
        elif f"baseline_base_{name}" in result.metrics:  # a language model: its base model, not fine-tuned
            value += f"   (base model {result.metrics[f'baseline_base_{name}']:.4f})"
        elif f"baseline_noise_{name}" in result.metrics:  # a GAN: beside Gaussian noise (and per-class noise)
            value += f"   (Gaussian noise {result.metrics[f'baseline_noise_{name}']:.4f}" + (
                f", per-class {result.metrics[f'baseline_class_gaussian_{name}']:.4f})"
                if f"baseline_class_gaussian_{name}" in result.metrics else ")")
        evaluated_on = result.extras.get("evaluated_on", "test split")
        table.add_row(f"test {name}" if evaluated_on == "test split" else f"{name} ({evaluated_on})", value)
    table.add_row("wall time", f"{result.wall_s:.1f} s")
    console.print(table)
    if result.interrupted:
        console.print(f"[yellow]Stopped on request after a checkpoint.[/] Continue with "
                      f"`foundry run --resume {result.run_dir}`.")
    elif result.metrics:
        from modelfoundry.artifacts.rundir import RunDir

        report = result.extras.get("out_dir", RunDir(result.run_dir).eval_dir) / "report.md"
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


def print_tune_summary(result: Any) -> None:
    from rich.table import Table

    from modelfoundry.redact import redact

    console = open_console()
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


def print_compress_summary(result: Any) -> None:
    from rich.table import Table

    from modelfoundry.compress.report import pareto, ratio_words

    console = open_console()
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


def _count(n: int) -> str:
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.1f} k" if n >= 1e3 else str(n)


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def print_cv_summary(result: Any) -> None:
    from rich.table import Table

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
    console = open_console()
    if not console.is_terminal:  # logs and pipes have no width to fit; rich would assume 80 columns
        console.width = max(console.width, 120)
    console.print(table)
    console.print(f"Wall time {result.wall_s:.1f} s. Per-fold metrics and held-out rows: {result.path}",
                  markup=False, soft_wrap=True)
