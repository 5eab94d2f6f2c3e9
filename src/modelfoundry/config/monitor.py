"""The `monitor:` section: the reference profile saved at training, in-server drift and out-of-distribution
scores, the request log and feedback, and champion-challenger retraining (`foundry monitor`, `foundry retrain`)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from modelfoundry.config.base import Section


class WindowConfig(Section):
    """How served rows are grouped before they are compared with the reference."""

    rows: int = Field(500, ge=20)  # a window closes once it holds this many rows
    seconds: float | None = Field(None, gt=0)  # ... or this many seconds after its first row (whichever comes first)
    min_rows: int = Field(50, ge=10)  # a window closed by time with fewer rows is not tested (too few to say anything)
    history: int = Field(20, ge=1, le=1000)  # tested windows kept for the monitor endpoint and reports


class DriftConfig(Section):
    """Which statistical test compares each column with the reference, and when a column alerts."""

    numeric_test: Literal["auto", "ks", "psi", "wasserstein"] = "auto"  # auto: KS up to large_sample rows, then Wasserstein
    categorical_test: Literal["auto", "chi2", "jensen_shannon", "psi"] = "auto"  # auto: chi2 up to large_sample, then JS
    large_sample: int = Field(1000, ge=10)  # window rows above which distance tests replace p-value tests (Evidently)
    fdr: float = Field(0.05, gt=0, lt=1)  # Benjamini-Hochberg false discovery rate over one window's p-value tests
    psi_threshold: float = Field(0.2, gt=0)  # PSI above this is drift
    jensen_shannon_threshold: float = Field(0.1, gt=0, le=1)  # Jensen-Shannon distance above this is drift
    wasserstein_threshold: float = Field(0.1, gt=0)  # Wasserstein distance in reference standard deviations
    patience: int = Field(1, ge=1)  # consecutive drifted windows before a column alerts
    share: float = Field(0.5, gt=0, le=1)  # dataset drift: at least this share of the columns drifted


class OODConfig(Section):
    """Per-row out-of-distribution score: Mahalanobis distance in the model's standardized input space."""

    enabled: bool = True
    false_alarm_rate: float = Field(0.01, gt=0, lt=0.5)  # the share of validation rows flagged: sets the threshold


class RequestLogConfig(Section):
    """A sampled, bounded log of served requests and their predictions (the feedback's and reports' source)."""

    enabled: bool = True
    url: str | None = None  # any SQLAlchemy URL; None: SQLite foundry-requests.db beside the project's foundry.db
    # share of requests logged (their rows get ids for feedback); 0.1: logging every row costs ~5-15% of peak req/s
    sample: float = Field(0.1, ge=0, le=1)
    max_rows: int = Field(100_000, ge=100)  # rows kept per model; the oldest are deleted beyond it
    hash_columns: list[str] = []  # identifier columns stored as salted SHA-256 hashes
    exclude_columns: list[str] = []  # columns never stored


class RetrainConfig(Section):
    """`foundry retrain`: how a challenger is trained and when it replaces the champion."""

    mode: Literal["warm", "full"] = "warm"  # warm: the champion's weights at a lower LR; full: reference + new data
    lr_factor: float = Field(0.1, gt=0, le=1)  # warm: the champion's learning rate times this
    epochs: int | None = Field(None, ge=1)  # None: training.epochs (warm: a third of it, at least 1)
    holdout: float = Field(0.3, gt=0, lt=1)  # share of the new data held out to compare champion and challenger
    metric: str | None = None  # the gate's metric (a test metric); None: the first of evaluation.metrics
    margin: float = Field(0.0, ge=0)  # the challenger must beat the champion on `metric` by at least this
    tolerance: float = Field(0.01, ge=0)  # ... and be no worse than this on every other metric
    alias: str = Field("production", pattern=r"^[A-Za-z0-9_-]+$")  # the alias the gate moves
    challenger_alias: str = Field("challenger", pattern=r"^[A-Za-z0-9_-]+$")  # set to every challenger (shadow it)


class MonitorConfig(Section):
    """`monitor:`: what the server watches, what `foundry monitor` reports, how `foundry retrain` decides."""

    enabled: bool = True  # drift, OOD, request log and feedback in the server (a reference is saved either way)
    window: WindowConfig = WindowConfig()
    drift: DriftConfig = DriftConfig()
    ood: OODConfig = OODConfig()
    log: RequestLogConfig = RequestLogConfig()
    feedback_window: int = Field(500, ge=1)  # the latest labelled rows the live accuracy (or error) is computed on
    shadow: str | None = None  # a registered challenger: NAME@ALIAS, NAME/VERSION or NAME
    retrain: RetrainConfig = RetrainConfig()

    @field_validator("shadow")
    @classmethod
    def _registered(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/\d+|@[A-Za-z0-9_-]+)?", value):
            raise ValueError("a registered model reference is needed: NAME@ALIAS, NAME/VERSION or NAME (a run "
                             "directory can be shadowed with `foundry serve --shadow DIR`)")
        return value

    @model_validator(mode="after")
    def _log_columns(self) -> MonitorConfig:
        both = set(self.log.hash_columns) & set(self.log.exclude_columns)
        if both:
            raise ValueError(f"monitor.log: {', '.join(sorted(both))} is both hashed and excluded; keep it in one list")
        return self
