"""What a study leaves in its output directory: best.yaml, trials.csv, summary.json and PNG plots."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

from modelfoundry.config import Config, dump_config
from modelfoundry.errors import first_line
from modelfoundry.storage import write_bytes_atomic, write_json, write_text
from modelfoundry.tune.space import decoded

PLOTS = {"optimization_history": "plot_optimization_history", "param_importances": "plot_param_importances",
         "parallel_coordinate": "plot_parallel_coordinate"}


def trial_rows(config: Config, study: Any) -> list[dict[str, Any]]:
    """One flat record per trial: number, state, value, epochs, wall time, each parameter, error."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        if attrs.get("foundry.surplus"):  # started after the budget was full; never trained
            continue
        row = {"number": t.number, "state": t.state.name, "value": t.value,
               "epochs": attrs.get("foundry.epochs", _last_step(t)), "best_epoch": attrs.get("foundry.best_epoch"),
               "wall_s": attrs.get("foundry.wall_s", t.duration.total_seconds() if t.duration else None),
               "base_config": bool(attrs.get("foundry.base")), "retry_of": attrs.get("foundry.retry_of"),
               "worker": attrs.get("foundry.worker")}
        for path, value in decoded(config.tune.space, t.params).items():
            row[path] = json.dumps(value) if isinstance(value, (list, dict)) else value
        row["error"] = attrs.get("foundry.error") or attrs.get("fail_reason")
        rows.append(row)
    return rows


def best_trial(study: Any) -> Any | None:
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None and math.isfinite(t.value)]
    if not complete:
        return None
    pick = min if study.direction.name == "MINIMIZE" else max
    return pick(complete, key=lambda t: (t.value, -t.number) if pick is max else (t.value, t.number))


def write_outputs(config: Config, study: Any, out_dir: Path) -> dict[str, Any]:
    """Write trials.csv, best.yaml (when a trial completed), summary.json and the plots; return the summary."""
    import pandas as pd

    rows = trial_rows(config, study)
    buffer = io.StringIO()
    table = pd.DataFrame(rows)
    for column in ("epochs", "best_epoch", "retry_of"):  # whole numbers, blank where a trial has none
        table[column] = table[column].astype("Int64")
    table.to_csv(buffer, index=False)
    write_text(out_dir / "trials.csv", buffer.getvalue())
    metric = study.user_attrs.get("foundry.metric") or config.tune.objective(config.training)[0]
    best = best_trial(study)
    base = next((r for r in rows if r["base_config"] and r["state"] == "COMPLETE"), None)
    summary: dict[str, Any] = {
        "study": study.study_name, "metric": metric, "direction": study.direction.name.lower(),
        "trials": len(rows), "states": {s: sum(r["state"] == s for r in rows) for s in
                                        ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")},
        "base_config_value": base["value"] if base else None, "best": None, "plots": {}}
    if best is not None:
        params = decoded(config.tune.space, best.params)
        best_config = config.with_params(params)
        header = (f"# foundry run {out_dir / 'best.yaml'}\n# Best of {len(rows)} trials of study "
                  f"'{study.study_name}': {metric} = {best.value:.6g} (trial {best.number}).\n")
        write_text(out_dir / "best.yaml", header + dump_config(best_config))
        summary["best"] = {"number": best.number, "value": best.value, "params": params,
                           "config": str(out_dir / "best.yaml")}
    summary["plots"] = write_plots(study, out_dir)
    write_json(out_dir / "summary.json", summary)
    return summary


def write_plots(study: Any, out_dir: Path) -> dict[str, str]:
    """The three Optuna plots as PNGs; {name: file} or {name: 'skipped: why'} when a plot cannot be drawn
    (too few completed trials, a single parameter, ...)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    out: dict[str, str] = {}
    for name, function in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = getattr(optuna_plots, function)(study)
            figure = _figure(axes)
            figure.set_size_inches(9, 5.5)
            figure.tight_layout()
            png = io.BytesIO()
            figure.savefig(png, format="png", dpi=100)
            plt.close(figure)
            write_bytes_atomic(out_dir / f"{name}.png", png.getvalue())
            out[name] = f"{name}.png"
        except Exception as exc:  # noqa: BLE001 - a plot Optuna refuses must not lose the study's results
            plt.close("all")
            out[name] = f"skipped: {first_line(exc)}"
    return out


def _figure(axes: Any) -> Any:
    first = axes.flat[0] if hasattr(axes, "flat") else axes
    return first.figure


def _last_step(trial: Any) -> int | None:
    return max(trial.intermediate_values) if trial.intermediate_values else None
