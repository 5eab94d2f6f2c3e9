"""`foundry retrain`: a challenger on new data, compared with the champion on the recent holdout, promoted only
through the gate (api/retraining.py decides; this shows)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from modelfoundry.cli.console import friendly_errors, open_console
from modelfoundry.cli.options import NoProgress, UriOption
from modelfoundry.cli.progress import reporter

if TYPE_CHECKING:
    from modelfoundry.api.retraining import RetrainResult


@friendly_errors
def retrain(model: Annotated[str, typer.Argument(help="The champion: NAME@ALIAS, NAME/VERSION, NAME (= NAME@ALIAS "
                                                 "of --alias), or a run directory (then nothing is promoted).",
                                                 show_default=False)],
            data: Annotated[Path, typer.Option("--data", help="New labelled rows (CSV, Parquet, JSONL) with the "
                                               "champion's columns and target, oldest first: the last --holdout "
                                               "share is the recent holdout.", show_default=False)],
            mode: Annotated[Optional[str], typer.Option("--mode", help="warm (the champion's weights, lower LR, "
                                                        "new rows) or full (reference + new rows, refitted); "
                                                        "default: monitor.retrain.mode.")] = None,
            alias: Annotated[Optional[str], typer.Option("--alias", help="The alias the gate moves (default: "
                                                         "monitor.retrain.alias, production).")] = None,
            metric: Annotated[Optional[str], typer.Option("--metric", help="The gate's metric (default: "
                                                          "monitor.retrain.metric, else the first headline "
                                                          "metric).")] = None,
            margin: Annotated[Optional[float], typer.Option("--margin", min=0, help="How much better the challenger "
                                                            "must be on the metric.")] = None,
            tolerance: Annotated[Optional[float], typer.Option("--tolerance", min=0, help="How much worse it may be "
                                                               "on each other headline metric.")] = None,
            holdout: Annotated[Optional[float], typer.Option("--holdout", min=0, max=1, help="Share of the new rows "
                                                             "(the last ones) held out to compare on.")] = None,
            epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Epochs for the challenger.")] = None,
            dry_run: Annotated[bool, typer.Option("--dry-run", help="Train and compare; register and move "
                                                  "nothing.")] = False,
            uri: UriOption = None, no_progress: NoProgress = False) -> None:
    """Train a challenger on new data and promote it only if it beats the champion on the recent holdout."""
    from modelfoundry.api.retraining import retrain as retrain_model
    from modelfoundry.errors import ConfigError, unknown_name

    if mode is not None and mode not in ("warm", "full"):
        raise ConfigError(unknown_name("--mode", mode, ["warm", "full"]))
    if not Path(model).exists():  # a registered champion: the challenger is registered beside it
        from modelfoundry.cli.render import say_tracking

        say_tracking(uri)
    result = retrain_model(model, data, mode=mode, alias=alias, metric=metric, margin=margin, tolerance=tolerance,
                           holdout=holdout, epochs=epochs, dry_run=dry_run, uri=uri,
                           progress=reporter(no_progress, transient=True))
    print_retrain_summary(result)


def print_retrain_summary(result: RetrainResult) -> None:
    """Champion vs challenger per metric on the holdout, the decision and why, the versions."""
    from rich.table import Table

    from modelfoundry.config import LOWER_IS_BETTER

    console = open_console()
    champion, decision = result.champion, result.decision
    left = f"champion v{champion['version']}" if champion["version"] else "champion"
    right = f"challenger v{result.challenger_version}" if result.challenger_version else "challenger"
    table = Table("metric", left, right, "change", "gate", title=f"{result.mode} retrain, {result.rows['holdout']} "
                  f"holdout rows (the last of the new data; {result.rows['train']} rows before them trained on)",
                  title_justify="left")
    judged = {c.metric: c for c in decision.checks}
    names = [*judged, *(m for m in result.holdout["champion"] if m not in judged)]
    for name in names:
        a, b = result.holdout["champion"].get(name), result.holdout["challenger"].get(name)
        check = judged.get(name)
        verdict = "-" if check is None or check.passed is None else (
            f"{'pass' if check.passed else 'FAIL'} ({'margin' if check.primary else 'tolerance'} {check.limit:g})")
        label = f"{name}{' (lower is better)' if name in LOWER_IS_BETTER else ''}"
        table.add_row(f"{label}{' *' if check is not None and check.primary else ''}", _num(a), _num(b),
                      "-" if a is None or b is None else f"{b - a + 0.0:+.4f}".replace("-0.0000", "+0.0000"),
                      verdict)
    console.print(table)
    console.print(f"Decision: {decision.reason}", markup=False)
    name = champion["name"]
    if result.dry_run:
        console.print("Dry run: nothing registered, no alias moved.")
    elif name is None:
        registered = f"; the challenger is v{result.challenger_version}" if result.challenger_version else ""
        console.print(f"The champion is a run directory: no alias moved{registered}.")
    for move in result.moves:
        if move["action"] == "refuse":
            text = f"v{move['to']} refused, stays at v{move['from'] or '-'}"
        else:
            text = f"v{move['from'] or '-'} -> v{move['to']}"
        console.print(f"{name}@{move['alias']}: {text}", markup=False)
    console.print(f"Challenger run: {result.run_dir}", markup=False)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
