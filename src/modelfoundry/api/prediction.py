"""`predict`: every row of a data file through a trained run, with per-row input warnings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelfoundry.api.arguments import model_dir
from modelfoundry.storage import write_table

if TYPE_CHECKING:
    import pandas as pd


def predict(run_dir: str | Path, input_path: str | Path, output_path: str | Path | None = None) -> pd.DataFrame:
    """Predict every row of a data file with a trained run; returns (and optionally writes) a table with a
    `prediction` column (a binary classifier saved with a tuned decision threshold predicts with it) and, for
    classification, one `prob_<label>` column per class; for an anomaly detector,
    `anomaly_score` and `anomaly` (True when the score is above the model's threshold) instead.

    When some row holds a value the model did not see in training (an unseen category, a missing value it
    imputed, a number outside the training range), a `warnings` column holds each row's warnings as JSON
    (empty for clean rows), and `table.attrs["input_warnings"]` counts them per (column, kind)."""
    import json

    import pandas as pd

    from modelfoundry.artifacts.records import decide_classes
    from modelfoundry.data.input_schema import InputSchema
    from modelfoundry.data.sources import read_table
    from modelfoundry.models.inference import predict_outputs
    from modelfoundry.rundir import load_model

    saved = load_model(model_dir(run_dir))
    frame = read_table(Path(input_path))
    if saved.preprocessor.desc["kind"] == "time_series":
        table = _forecast(saved, frame, str(input_path))
        if output_path is not None:
            write_table(table, Path(output_path))
        return table
    schema = InputSchema(saved.preprocessor.desc)
    checked = schema.from_frame(frame, origin=str(input_path))
    output = predict_outputs(saved.model, checked.inputs, saved.task)
    if saved.task == "anomaly":  # the score, and whether it is above the threshold saved with the model
        table = pd.DataFrame({"anomaly_score": output, "anomaly": saved.target_encoder.flag(output)}, index=frame.index)
    elif saved.task == "classification":
        # the most probable class, or a binary model's decision at its tuned threshold (model.json `threshold`)
        predicted = decide_classes(output, saved.record.threshold)
        table = pd.DataFrame({"prediction": saved.target_encoder.decode(predicted)}, index=frame.index)
        for k, label in enumerate(saved.labels):
            table[f"prob_{label}"] = output[:, k]
    else:
        table = pd.DataFrame({"prediction": saved.target_encoder.decode(output)}, index=frame.index)
    warnings, counts = schema.warnings(checked)
    if warnings is not None:
        table["warnings"] = [json.dumps(row) if row else "" for row in warnings]
    table.attrs["input_warnings"] = counts
    if output_path is not None:
        write_table(table, Path(output_path))
    return table


def _forecast(saved: Any, frame: pd.DataFrame, origin: str) -> pd.DataFrame:
    """A time series model over a history: one forecast per origin with a full window (the last one beyond the
    history's end), in columns `time` (the last observed time) and `prediction` or `prediction_1..H`."""
    from modelfoundry.data.timeseries import forecast_table, history_inputs
    from modelfoundry.models.inference import predict_outputs

    history = history_inputs(saved.preprocessor.desc, frame, origin)
    output = predict_outputs(saved.model, history.inputs, saved.task)
    table = forecast_table(history, saved.target_encoder.decode(output))
    table.attrs["input_warnings"] = {}
    return table
