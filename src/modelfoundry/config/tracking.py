"""The `output:` and `tracking:` sections: where run directories go, and the MLflow store runs are logged to."""

from __future__ import annotations

from modelfoundry.config.base import Section


class OutputConfig(Section):
    dir: str = "runs"  # runs are created as <dir>/<name>-<timestamp>/


class TrackingConfig(Section):
    """MLflow tracking and model registry. The embedded default needs no setup: sqlite:///foundry.db."""

    enabled: bool = True  # log every `foundry run` (params, per-epoch metrics, artifacts) to MLflow
    register_model: bool = True  # and register its model as a new version of the model named by `name`
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI if set, else the nearest foundry.db here or in a parent
    artifacts: str = "mlartifacts"  # artifact folder for experiments this creates (relative: beside a SQLite store)
    experiment: str | None = None  # None: the config's name
