"""`foundry ensemble`: trained models combined into one, shown beside its members and the baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from modelfoundry.cli.console import friendly_errors, open_console


@friendly_errors
def ensemble(members: Annotated[list[str], typer.Argument(help="Two or more members: registered versions (NAME/VERSION, "
                                                          "NAME@ALIAS, NAME) or run directories.", show_default=False)],
             method: Annotated[str, typer.Option("--method", help="average (mean of probabilities or predictions), "
                                                 "vote (hard majority, classifiers) or stack (a logistic / ridge "
                                                 "meta-model fitted on the validation split).")] = "average",
             weights: Annotated[Optional[str], typer.Option("--weights", help="Comma-separated weight per member "
                                                            "for average and vote, e.g. 0.6,0.4 (default: equal).")]
             = None,
             name: Annotated[Optional[str], typer.Option("--name", help="Name to register it under (default: "
                                                         "<first member's name>-ensemble).")] = None,
             register: Annotated[Optional[bool], typer.Option("--register/--no-register", help="Log and register "
                                                              "it (default: the first member's tracking.enabled).",
                                                              show_default=False)] = None,
             out: Annotated[Optional[Path], typer.Option("-o", "--out", help="Run directory to write (default: "
                                                         "runs/<name>-<timestamp>/).")] = None,
             data: Annotated[Optional[Path], typer.Option("--data", help="Labelled file to evaluate on, when the "
                                                          "members were not trained on the same split.")] = None,
             snapshots: Annotated[Optional[int], typer.Option("--snapshots", min=2, help="Snapshot ensembling: "
                                                              "the one member is a run directory trained with "
                                                              "training.average.snapshots; combine its last K epochs' "
                                                              "weights.")] = None) -> None:
    """Combine trained models (average, vote or stack) into an ensemble run: evaluated beside its members and the
    baselines, one ONNX graph (serve and predict take it like any run), registered with its members as lineage."""
    from modelfoundry.api.ensembles import ensemble as build
    from modelfoundry.errors import ConfigError

    parsed = None
    if weights is not None:
        try:
            parsed = [float(w) for w in weights.split(",")]
        except ValueError:
            raise ConfigError(f"--weights must be comma-separated numbers, e.g. 0.6,0.4. Got {weights!r} instead.") \
                from None
    result = build(members, method=method, weights=parsed, name=name, register=register, out=out, data=data,
                   snapshots=snapshots)
    _print(result)


def _print(result: Any) -> None:
    from rich.table import Table

    console = open_console()
    shown = result.headline
    table = Table(title=f"Ensemble ({result.method}) on the {result.evaluated_on}", title_justify="left")
    table.add_column("model")
    for metric in shown:
        table.add_column(metric, justify="right")
    rows = [("ensemble", result.metrics)] + [(m["ref"], m["metrics"]) for m in result.members]
    baselines = [(f"baseline ({b})", {k.removeprefix(f"baseline_{b}_"): v for k, v in result.metrics.items()
                                      if k.startswith(f"baseline_{b}_")}) for b in ("dummy", "linear")]
    rows += [(label, values) for label, values in baselines if values]  # none on a --data file
    for label, values in rows:
        table.add_row(label, *(f"{values[m]:.4f}" if m in values else "-" for m in shown),
                      style="bold" if label == "ensemble" else None)
    console.print(table)
    form = "a served group: members' preprocessing differs" if result.parity.get("served_as") == "group" else \
        "one ONNX graph"
    console.print(f"Run directory: {result.run_dir} ({form}; matches the Python combination within "
                  f"{result.parity['max_abs_diff']:.2g} on {result.parity['rows_checked']} rows)", markup=False)
    registry = result.extras.get("registry")
    if registry and registry.get("version"):
        console.print(f"Registered {registry['model']} version {registry['version']} (members as lineage).",
                      markup=False)
