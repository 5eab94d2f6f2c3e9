"""Running trials: the objective (one training per trial, pruned on the per-epoch validation metric), the
worker loop, and the parent that runs workers in this process or in several and reports their progress."""

from __future__ import annotations

import math
import queue
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from modelfoundry.config import Config, PrunerConfig
from modelfoundry.errors import FoundryError
from modelfoundry.experiment import describe, fit_config
from modelfoundry.reporting import Reporter, reporter_for
from modelfoundry.tune.study import (budget_callback, counted, open_storage, open_study, quiet_optuna,
                                     recover_stale, retry_attrs, spent, worker_id)
from modelfoundry.tune.space import grid_size, suggest

if TYPE_CHECKING:
    from modelfoundry.data.prepare import PreparedData

POLL_S = 1.0


class PruningCallback:
    """Report the monitored metric to the trial each epoch; from epoch `first_check` on, every `interval`
    epochs, ask the pruner and end training when it says so.

    The median pruner is asked with a snapshot of the study's completed trials (refreshed every
    SNAPSHOT_S, so other workers' trials still count): Optuna's own `should_prune` re-reads every trial
    from the storage each time, ~5 ms on SQLite, which is as long as a small model's epoch."""

    SNAPSHOT_S = 5.0

    def __init__(self, trial: Any, metric: str, first_check: int | None = 1, interval: int = 1):
        self.trial, self.metric = trial, metric
        self.first_check, self.interval = first_check, interval
        self.values: dict[int, float] = {}
        self._snapshot: tuple[float, list[Any]] | None = None

    @classmethod
    def for_config(cls, trial: Any, metric: str, pruner: PrunerConfig) -> PruningCallback:
        first = {"median": max(1, pruner.n_warmup_steps), "hyperband": pruner.min_resource}.get(pruner.name)
        return cls(trial, metric, first, pruner.interval_epochs)

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        import optuna

        value, epoch = record.get(self.metric), record["epoch"]
        if value is None or not math.isfinite(value):
            return
        self.trial.report(value, epoch)
        self.values[epoch] = value
        if self.first_check is None or epoch < self.first_check or (epoch - self.first_check) % self.interval:
            return
        if self._should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {record['epoch']} ({self.metric} = {value:.4g})")

    def _should_prune(self) -> bool:
        from optuna.pruners import PercentilePruner

        study = getattr(self.trial, "study", None)
        if study is None or not isinstance(study.pruner, PercentilePruner):
            return self.trial.should_prune()
        now = time.monotonic()
        if self._snapshot is None or now - self._snapshot[0] > self.SNAPSHOT_S:
            from optuna.trial import TrialState

            self._snapshot = (now, study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        view = _StudyView(study.direction, self._snapshot[1])
        return bool(study.pruner.prune(view, _TrialView(dict(self.values))))

    def close(self) -> None:
        pass


@dataclass
class _StudyView:
    """What a percentile pruner reads of a study: its direction and completed trials."""

    direction: Any
    completed: list[Any]

    def get_trials(self, deepcopy: bool = False, states: Any = None) -> list[Any]:
        return self.completed


@dataclass
class _TrialView:
    """What a percentile pruner reads of the running trial: its reported values."""

    intermediate_values: dict[int, float]

    @property
    def last_step(self) -> int | None:
        return max(self.intermediate_values) if self.intermediate_values else None


class Objective:
    """One trial: the base config with the suggested values, trained on the (cached) prepared data; the
    value is the metric at the epoch whose weights the run keeps (the best one with restore_best)."""

    def __init__(self, config: Config, data: PreparedData | None = None):
        self.config = config
        self.metric, _ = config.tune.objective(config.training)
        self._data: dict[str, PreparedData] = {}
        if data is not None:
            self._data[config.data.model_dump_json()] = data

    def __call__(self, trial: Any) -> float:
        import optuna

        trial.set_user_attr("foundry.worker", worker_id())
        if self._surplus(trial):
            trial.set_user_attr("foundry.surplus", True)
            trial.study.stop()
            raise optuna.TrialPruned("surplus: other workers filled the budget while this trial started")
        started = time.perf_counter()
        try:
            trial_config = self.config.with_params(suggest(trial, self.config.tune.space))
            result = fit_config(trial_config, self.data(trial_config), progress=False, metrics=[self.metric],
                                callbacks=[PruningCallback.for_config(trial, self.metric, self.config.tune.pruner)])
        except optuna.TrialPruned:
            trial.set_user_attr("foundry.wall_s", round(time.perf_counter() - started, 3))
            raise
        except KeyboardInterrupt:
            self._interrupted(trial)
            raise
        except Exception as exc:
            trial.set_user_attr("foundry.error", describe(exc))
            trial.set_user_attr("foundry.traceback", traceback.format_exc()[-4000:])
            raise
        trial.set_user_attr("foundry.wall_s", round(time.perf_counter() - started, 3))
        trial.set_user_attr("foundry.epochs", len(result.history))
        trial.set_user_attr("foundry.best_epoch", result.best_epoch)
        if result.interrupted:  # Ctrl-C: the epoch finished, the trial did not; it runs again on --resume
            self._interrupted(trial)
            raise KeyboardInterrupt
        keep = result.best_epoch if trial_config.training.restore_best and result.best_epoch else len(result.history)
        record = next(r for r in result.history if r["epoch"] == keep)
        return float(record.get(self.metric, float("nan")))

    def _surplus(self, trial: Any) -> bool:
        """Whether the trials before this one (finished or still running) already fill the budget: with
        several workers, each checks the budget after its trial, so two can start one trial too many."""
        from optuna.trial import TrialState

        n_trials = self.config.tune.n_trials
        if n_trials is None:
            return False
        before = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                                 TrialState.FAIL, TrialState.RUNNING))
        return sum(t.number < trial.number and (t.state == TrialState.RUNNING or counted(t)) for t in before) \
            >= n_trials

    def data(self, config: Config) -> PreparedData:
        """Prepared data per distinct data section: prepared once unless a trial tunes data.* keys."""
        from modelfoundry.experiment import model_tokenizer, prepare

        key = config.data.model_dump_json() + str(hash(model_tokenizer(config.model)))  # a trial may change the model
        if key not in self._data:
            self._data[key] = prepare(config)
        return self._data[key]

    @staticmethod
    def _interrupted(trial: Any) -> None:
        trial.set_user_attr("foundry.interrupted", True)
        trial.set_user_attr("foundry.error", "interrupted (Ctrl-C); runs again on --resume")
        trial.study.enqueue_trial(trial.params, user_attrs=retry_attrs(trial))


def run_worker(config: Config, storage_url: str, study_name: str, seed: int, *, threads: int | None = None,
               data: PreparedData | None = None, callbacks: list[Callable[[Any, Any], None]] = ()) -> None:
    """Run trials of an existing study until the study's budget (`tune.n_trials`) or `tune.timeout_s` is spent."""
    quiet_optuna()
    if threads:
        import torch

        torch.set_num_threads(threads)
    tune = config.tune
    study, _ = open_study(config, open_storage(storage_url), study_name, resume=True, seed=seed)
    done, running = spent(study)
    remaining = None if tune.n_trials is None else tune.n_trials - done - running
    if tune.sampler.name == "grid":  # a finished grid would be walked again from the start
        left = grid_size(tune.space) - done - running
        remaining = left if remaining is None else min(remaining, left)
    if remaining is not None and remaining <= 0:
        return
    study.optimize(Objective(config, data), n_trials=remaining, timeout=tune.timeout_s, catch=(Exception,),
                   callbacks=[budget_callback(tune.n_trials), *callbacks], gc_after_trial=False)


def _worker_process(config_json: str, storage_url: str, study_name: str, seed: int, threads: int,
                    errors: Any) -> None:
    """Entry point of a worker process (spawned: it imports the package afresh)."""
    try:
        run_worker(Config.model_validate_json(config_json), storage_url, study_name, seed, threads=threads)
    except KeyboardInterrupt:
        pass
    except FoundryError as exc:
        errors.put(f"{exc.message} {exc.hint}".strip())


@dataclass
class StudyRun:
    study: Any
    created: bool
    recovered: list[int] = field(default_factory=list)
    interrupted: bool = False
    wall_s: float = 0.0


def run_study(config: Config, storage_url: str, study_name: str, *, resume: bool,
              progress: Reporter | bool | None, data: PreparedData | None = None) -> StudyRun:
    """Open (or create) the study and run its trials: in this process with one job, else in `tune.n_jobs`
    worker processes sharing the storage, each with its share of the cores."""
    import os

    quiet_optuna()
    started = time.perf_counter()
    tune = config.tune
    study, created = open_study(config, open_storage(storage_url), study_name, resume=resume, seed=config.seed)
    outcome = StudyRun(study, created, [] if created else recover_stale(study))
    base_seed = (tune.sampler.seed if tune.sampler.seed is not None else config.seed) + 1009 * len(study.trials)
    reporter = reporter_for(progress)
    display = _Progress(reporter, study, tune.n_trials) if reporter else None
    try:
        if tune.n_jobs == 1:
            run_worker(config, storage_url, study_name, base_seed, data=data,
                       callbacks=[display.update] if display else [])
        else:
            _run_processes(config, storage_url, study_name, base_seed, display,
                           threads=max(1, (os.cpu_count() or 1) // tune.n_jobs))
    except KeyboardInterrupt:
        outcome.interrupted = True
    finally:
        if display:
            display.close()
    outcome.wall_s = time.perf_counter() - started
    return outcome


def _run_processes(config: Config, storage_url: str, study_name: str, base_seed: int, display: Any,
                   threads: int) -> None:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    workers = [context.Process(target=_worker_process, daemon=False,
                               args=(config.model_dump_json(), storage_url, study_name, base_seed + 7919 * i,
                                     threads, errors))
               for i in range(config.tune.n_jobs)]
    for worker in workers:
        worker.start()
    try:
        while any(w.is_alive() for w in workers):
            time.sleep(POLL_S)
            if display:
                display.update(None, None)
    except KeyboardInterrupt:  # the workers got the same Ctrl-C: they finish their epoch and stop
        for worker in workers:
            worker.join(timeout=60)
        raise
    finally:
        for worker in workers:
            worker.join()
    try:
        message = errors.get(timeout=0.1)
    except queue.Empty:
        return
    raise FoundryError(f"A tuning worker stopped: {message}")


class _Progress:
    """The study's trial budget (all workers) as progress, with the pruned and failed counts and the best value."""

    def __init__(self, reporter: Reporter, study: Any, n_trials: int | None):
        self.reporter, self.study = reporter, study
        reporter.start("trials", n_trials)
        self.update(None, None)

    def update(self, study: Any, trial: Any) -> None:
        from optuna.trial import TrialState

        done = [t for t in self.study.get_trials(deepcopy=False) if counted(t)]
        complete = [t for t in done if t.state == TrialState.COMPLETE and t.value is not None]
        text = (f"{sum(t.state == TrialState.PRUNED for t in done)} pruned, "
                f"{sum(t.state == TrialState.FAIL for t in done)} failed")
        if complete:
            best = (min if self.study.direction.name == "MINIMIZE" else max)(t.value for t in complete)
            text += f", best {self.study.user_attrs.get('foundry.metric', 'value')} {best:.4f}"
        self.reporter.advance(len(done), status=text)

    def close(self) -> None:
        self.update(None, None)
        self.reporter.finish()
