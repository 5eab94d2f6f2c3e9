"""The request log read back for analysis (`foundry monitor report`): its rows, the logged inputs as a frame the
input schema reads, the logged predictions and OOD scores, and the live figures (accuracy or error on rows with
feedback, agreement with a shadow model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelfoundry.errors import ConfigError, DataError


def read_log(log: Any, name: str, version: str | None, limit: int | None) -> Any:
    """The log's rows; a bad URL, a missing driver or an unreachable database is one ConfigError (URL redacted)."""
    from sqlalchemy.exc import SQLAlchemyError

    from modelfoundry.errors import first_line
    from modelfoundry.redact import redact

    local = log.url.split("?")[0].removeprefix("sqlite:///") if log.url.startswith("sqlite:///") else None
    if local and local != ":memory:" and not Path(local).is_file():  # reading must not create an empty log
        raise DataError(f"There is no request log at {local}.",
                        "Pass --url where the server logs (monitor.log.url; by default foundry-requests.db beside "
                        "the project's foundry.db), or serve the model with monitoring on to start one.")
    try:
        return log.read(name, version, limit)
    except (SQLAlchemyError, ImportError) as exc:
        raise ConfigError(f"The request log at {redact(log.url)} cannot be read: {redact(first_line(exc))}",
                          "Check --url (or monitor.log.url): a SQLAlchemy URL such as sqlite:///foundry-requests.db; "
                          "another database needs its driver installed (PostgreSQL: psycopg).") from None
    finally:
        log.close()



def live_figures(log: Any, task: str) -> dict[str, float]:
    """From request-log rows: accuracy (classification) or mae/rmse (regression) on the rows with a feedback label,
    and agreement (classification) or mean absolute difference (regression) with the shadow model's predictions."""
    import numpy as np

    out: dict[str, float] = {}
    for column, prefix in (("label", "feedback"), ("shadow_prediction", "shadow")):
        part = log[log[column].notna()] if column in log else log.iloc[:0]
        out[f"{prefix}_rows"] = float(len(part))
        if part.empty:
            continue
        if task == "classification":
            same = float((part["prediction"].astype(str) == part[column].astype(str)).mean())
            out["live_accuracy" if prefix == "feedback" else "shadow_agreement"] = same
        else:
            diff = part["prediction"].astype(float).to_numpy() - part[column].astype(float).to_numpy()
            out["live_mae" if prefix == "feedback" else "shadow_mean_abs_difference"] = float(np.abs(diff).mean())
            if prefix == "feedback":
                out["live_rmse"] = float(np.sqrt((diff ** 2).mean()))
    return out



def logged_ood_share(log: Any, reference: Any) -> float | None:
    """The share of logged rows whose stored OOD score is above the reference's threshold (None: no scores)."""
    if reference.ood is None or "ood_score" not in log:
        return None
    scores = log["ood_score"].dropna().astype(float)
    return float((scores > reference.ood.threshold_).mean()) if len(scores) else None



def logged_inputs(log: Any, columns: list[str], reference: Any, settings: Any) -> tuple[Any, set[str], list[str]]:
    """The logged raw input columns as a frame the input schema reads. A hashed, excluded or absent column gets a
    placeholder the schema accepts (so the other columns can be read) and is left out of the comparison."""
    import pandas as pd

    from modelfoundry.monitor.requestlog import META

    hashed, excluded = set(settings.hash_columns), set(settings.exclude_columns)
    data, skipped, notes = {}, set(), []
    for column in columns:
        logged = f"input:{column}" if column in META else column  # the log prefixes names it uses itself
        why = ("hashed in the log" if column in hashed else "excluded from the log" if column in excluded else
               None if logged in log.columns else "not in the log")
        if why is None:
            data[column] = log[logged]
            continue
        skipped.add(column)
        notes.append(f"{column}: skipped ({why})")
        data[column] = _placeholder(reference, column)
    return pd.DataFrame(data, index=log.index), skipped, notes



def _placeholder(reference: Any, column: str) -> Any:
    import numpy as np

    profile = reference.columns.get(column)
    if profile is None:  # a text column (profiled as length and tokens)
        return ""
    sample = profile.sample()
    return float(np.median(sample)) if profile.kind == "numeric" else str(sample[0])



def logged_predictions(predictions: Any, task: str) -> Any:
    """The logged predictions as the drift tests take them: class labels as text, or float values; None for an
    anomaly detector, whose log holds its true/false answers while its reference profiles its scores."""
    import numpy as np

    if task == "anomaly":
        return None
    if task == "classification":
        return predictions.astype(str).to_numpy(dtype=object)
    return predictions.astype(float).to_numpy(dtype=np.float64)
