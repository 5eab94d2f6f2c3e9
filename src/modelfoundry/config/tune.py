"""The `tune:` section (`foundry tune`): a search space over config keys by dotted path, run on Optuna."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator

from modelfoundry.config.base import SEED_MAX, Section
from modelfoundry.config.evaluation import MONITORS, monitor_mode
from modelfoundry.errors import unknown_name

if TYPE_CHECKING:
    from modelfoundry.config.training import TrainingConfig


class ParamSpace(Section):
    """One dimension of a search space: a float or int range, or a list of choices."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = Field(None, gt=0)  # float/int: only multiples of step above low
    log: bool = False  # float/int: sample on a log scale (low must be > 0)
    choices: list[Any] | None = None  # categorical: two or more values (numbers, text, lists, ...)

    @model_validator(mode="after")
    def _check(self) -> ParamSpace:
        if self.type == "categorical":
            extra = [k for k in ("low", "high", "step") if getattr(self, k) is not None] + (["log"] if self.log else [])
            if extra:
                raise ValueError(f"a categorical takes only choices, not {', '.join(extra)}")
            distinct = {json.dumps(c, sort_keys=True) for c in self.choices or []}
            if len(distinct) < 2:
                raise ValueError(f"a categorical needs at least two different choices, got {self.choices or []}; "
                                 "fix the value in the config instead of tuning it")
            return self
        if self.low is None or self.high is None or self.choices is not None:
            raise ValueError(f"a{'n' if self.type == 'int' else ''} {self.type} range takes low and high "
                             "(and optionally step or log), not choices")
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) is above high ({self.high:g})")
        if self.low == self.high:
            raise ValueError(f"the range is empty (low = high = {self.low:g}); fix the value instead of tuning it")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0, got low = {self.low:g}")
        if self.log and self.step is not None:
            raise ValueError("set step or log: true, not both")
        if self.type == "int":
            bad = [f"{k} = {v:g}" for k, v in (("low", self.low), ("high", self.high), ("step", self.step))
                   if v is not None and not float(v).is_integer()]
            if bad:
                raise ValueError(f"an int range needs whole numbers, got {', '.join(bad)}")
        if self.step is not None and self.step > self.high - self.low:
            raise ValueError(f"step ({self.step:g}) is wider than the range {self.low:g}..{self.high:g}")
        return self

    def extremes(self) -> list[Any]:
        """The values that bound this dimension: low and high, or every choice."""
        if self.type == "categorical":
            return list(self.choices or [])
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


class SamplerConfig(Section):
    name: Literal["tpe", "random", "grid", "gp", "cmaes"] = "tpe"
    seed: int | None = Field(None, ge=0, le=SEED_MAX)  # None: the top-level seed
    n_startup_trials: int = Field(10, ge=0)  # tpe, gp, cmaes: random trials before the model guides the search
    multivariate: bool = True  # tpe: model the parameters jointly

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:  # `sampler: tpe` means `sampler: {name: tpe}`
        return {"name": v} if isinstance(v, str) else v


class PrunerConfig(Section):
    name: Literal["median", "hyperband", "none"] = "median"
    n_startup_trials: int = Field(5, ge=0)  # median: trials that run to the end before any is pruned
    n_warmup_steps: int = Field(3, ge=0)  # median: epochs a trial always runs
    interval_epochs: int = Field(1, ge=1)  # median, hyperband: epochs between pruning checks
    min_resource: int = Field(1, ge=1)  # hyperband: fewest epochs of a trial
    reduction_factor: int = Field(3, ge=2)  # hyperband: how aggressively brackets shrink

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v


# top-level keys and sections a search may not change, and why
FROZEN_PATHS = {
    "name": "it names the study and the model",
    "seed": "it reshuffles the data split, so trials would be scored on different validation rows",
    "data.source": "every trial must see the same data", "data.target": "every trial must see the same data",
    "data.task": "every trial must solve the same task",
    "data.split": "trials would be scored on different validation rows",
    "evaluation": "it does not change training (tune.metric chooses what is optimised)",
    "output": "it does not change training", "tracking": "it does not change training",
    "compress": "it does not change training", "serve": "it does not change training",
    "tune": "a search cannot tune itself",
}


class TuneConfig(Section):
    """A hyperparameter search (`foundry tune`): a space over config fields by dotted path, run on Optuna."""

    space: dict[str, ParamSpace] = Field(min_length=1)  # dotted config path -> range or choices
    metric: str | None = None  # val_loss or val_<metric>; None: training.early_stopping.monitor (else val_loss)
    direction: Literal["auto", "maximize", "minimize"] = "auto"  # auto: from the metric
    n_trials: int | None = Field(20, ge=1)  # trials in the whole study, across resumes and workers
    timeout_s: float | None = Field(None, gt=0, validation_alias=AliasChoices("timeout_s", "timeout"))
    sampler: SamplerConfig = SamplerConfig()
    pruner: PrunerConfig = PrunerConfig()
    study_name: str | None = None  # None: the config's name
    storage: str | None = None  # Optuna storage URL (e.g. postgresql://...); None: SQLite in the output directory
    n_jobs: int = Field(1, ge=1)  # worker processes on this machine
    start_from_config: bool = True  # trial 0 is the config as written (when its values lie in the space)

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str | None) -> str | None:
        if v is not None and v not in MONITORS:
            raise ValueError(unknown_name("metric", v, MONITORS))
        return v

    @model_validator(mode="after")
    def _grid(self) -> TuneConfig:
        if self.sampler.name == "grid":
            loose = [p for p, s in self.space.items() if s.type == "float" and s.step is None]
            if loose:
                raise ValueError(f"the grid sampler needs a finite grid: give {', '.join(loose)} a step "
                                 "(or make it a categorical), or use sampler: tpe / random")
        return self

    def objective(self, training: TrainingConfig) -> tuple[str, str]:
        """(metric, 'maximize' | 'minimize'): what the study optimises."""
        metric = self.metric or (training.early_stopping.monitor if training.early_stopping else "val_loss")
        if self.direction != "auto":
            return metric, self.direction
        return metric, "minimize" if monitor_mode(metric) == "min" else "maximize"
