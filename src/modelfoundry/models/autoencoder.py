"""An autoencoder for anomaly detection (`model: {name: autoencoder}`, with `data.task: anomaly`).

It is trained on normal rows only and outputs, per row, the anomaly score: the mean squared error of its
reconstruction of the row's inputs (standardised numeric features, or an image's scaled pixels). Its training
loss is the mean score of the batch, given to the loop through the `training_loss` seam. Rows whose score is
above the threshold calibrated on the normal validation rows (data.anomaly.false_alarm_rate) are anomalies.

This module holds the config and the builder; torch is imported inside the builder (the module itself lives in
models/autoencoder_module.py), so validating a config never loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from modelfoundry.config.base import Section
from modelfoundry.errors import ConfigError
from modelfoundry.models.choices import Activation, Init

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from modelfoundry.artifacts.inputs import InputSpec


class AutoencoderConfig(Section):
    name: Literal["autoencoder"]
    hidden: list[Annotated[int, Field(gt=0)]] = Field([32, 8], min_length=1)  # encoder widths; the last is the code
    activation: Activation = "relu"
    dropout: float = Field(0.0, ge=0, lt=1)
    init: Init = "default"


def build_autoencoder(config: AutoencoderConfig, inputs: InputSpec, n_outputs: int) -> nn.Module:
    """An autoencoder over one float input, "numeric" (B, F) or "image" (B, C, H, W) (flattened): the encoder
    narrows through `config.hidden`, the decoder mirrors it; forward gives the (B, 1) anomaly score."""
    from modelfoundry.models.autoencoder_module import Autoencoder
    from modelfoundry.models.layers import init_weights

    if n_outputs != 1:
        raise ConfigError(f"model autoencoder gives one output (the anomaly score) per row; {n_outputs} were asked.",
                          "Use the autoencoder with data.task: anomaly.")
    if len(inputs) != 1 or inputs[0].dtype != "float32":
        kinds = ", ".join(f"'{f.name}'" for f in inputs)
        text = any(f.dtype == "int64" for f in inputs)
        raise ConfigError(f"model autoencoder reconstructs numeric features or an image, but the data gives inputs "
                          f"{kinds}{' (text columns become tokens)' if text else ''}.",
                          "Leave text columns out with data.features: {COLUMN: {type: ignore}}, or detect anomalies "
                          "in numeric and categorical columns only.")
    model = Autoencoder(inputs[0].shape, config.hidden, config.activation, config.dropout)
    init_weights(model, config.init, config.activation)
    return model


def calibrate_threshold(scores: np.ndarray, false_alarm_rate: float) -> float:
    """The lowest observed score with at most `false_alarm_rate` of `scores` (normal validation rows) above it:
    their (1 - rate) quantile (a row is an anomaly when its score is above the threshold)."""
    import math

    import numpy as np

    ordered = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if ordered.size == 0:
        raise ConfigError("The anomaly threshold needs normal validation rows, and there are none.",
                          "Raise data.split.val, or check data.anomaly.normal.")
    allowed = math.floor(ordered.size * false_alarm_rate + 1e-9)  # rows that may score above the threshold
    return float(ordered[ordered.size - allowed - 1])
