"""The result objects the verbs return: what a run, a study and a compression produced."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunResult:
    run_dir: Path
    task: str
    metrics: dict[str, float]  # test split: model metrics and baseline_* entries
    headline: list[str]
    best_epoch: int
    epochs_run: int
    monitor: str
    best_value: float | None
    stopped_early: bool = False
    interrupted: bool = False
    wall_s: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)



@dataclass
class TuneResult:
    out_dir: Path
    study_name: str
    storage: str
    metric: str
    direction: str
    summary: dict[str, Any]  # what summary.json holds: counts, best trial, base config value, plots
    rows: list[dict[str, Any]]  # one per trial, as in trials.csv
    recovered: list[int] = field(default_factory=list)  # trials of a killed run, queued again
    interrupted: bool = False
    wall_s: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)



@dataclass
class CompressResult:
    out_dir: Path
    report: Path  # report.json
    metric: str
    original: dict[str, Any]
    variants: list[dict[str, Any]]
    chosen: dict[str, Any] | None  # None: no variant beat the original within the guard
    best_failing: dict[str, Any] | None
    model_dir: Path | None  # the chosen variant as a run directory (evaluate, predict, export, serve take it)
    max_drop: float
    lower_is_better: bool
    test_metrics: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)
    guard: list[Any] = field(default_factory=list)  # compress.guard.Guard: the primary metric's first
