"""The Optuna study behind `foundry tune`: samplers and pruners by name, storage, the trial budget, and
stale trials left by a killed worker.

One study lives in one storage (SQLite in the output directory by default, any Optuna URL otherwise), so
resuming and extra workers are the same thing: open the study and run trials until the budget is spent.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from modelfoundry.config import Config, PrunerConfig, SamplerConfig, TuneConfig, config_hash
from modelfoundry.errors import ConfigError, first_line
from modelfoundry.redact import redact
from modelfoundry.tune.space import base_point, grid

HEARTBEAT_S = 30  # a trial whose worker stops beating for GRACE_S is failed and tried again
GRACE_S = 120


def quiet_optuna() -> None:
    """Optuna's per-trial INFO lines and experimental-feature warnings would run through our progress bar."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*(independent sampl|CmaEsSampler|GPSampler).*")


# ------------------------------------------------------------------------------- samplers and pruners
def _tpe(cfg: SamplerConfig, tune: TuneConfig, seed: int) -> Any:
    from optuna.samplers import TPESampler

    return TPESampler(seed=seed, n_startup_trials=cfg.n_startup_trials, multivariate=cfg.multivariate,
                      constant_liar=True)  # parallel workers do not all pick the same promising point


def _random(cfg: SamplerConfig, tune: TuneConfig, seed: int) -> Any:
    from optuna.samplers import RandomSampler

    return RandomSampler(seed=seed)


def _grid(cfg: SamplerConfig, tune: TuneConfig, seed: int) -> Any:
    from optuna.samplers import GridSampler

    return GridSampler(grid(tune.space), seed=seed)


def _gp(cfg: SamplerConfig, tune: TuneConfig, seed: int) -> Any:
    from optuna.samplers import GPSampler

    return GPSampler(seed=seed, n_startup_trials=cfg.n_startup_trials)


def _cmaes(cfg: SamplerConfig, tune: TuneConfig, seed: int) -> Any:
    from optuna.samplers import CmaEsSampler

    return CmaEsSampler(seed=seed, n_startup_trials=cfg.n_startup_trials)  # categoricals are sampled at random


SAMPLERS: dict[str, Callable[[SamplerConfig, TuneConfig, int], Any]] = {
    "tpe": _tpe, "random": _random, "grid": _grid, "gp": _gp, "cmaes": _cmaes}


def build_pruner(cfg: PrunerConfig, max_epochs: int) -> Any:
    from optuna import pruners

    if cfg.name == "median":
        return pruners.MedianPruner(n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.n_warmup_steps)
    if cfg.name == "hyperband":
        return pruners.HyperbandPruner(min_resource=cfg.min_resource, max_resource=max_epochs,
                                       reduction_factor=cfg.reduction_factor)
    return pruners.NopPruner()


# --------------------------------------------------------------------------------------------- storage
def default_storage(out_dir: Path) -> str:
    return f"sqlite:///{(out_dir / 'study.db').resolve()}"


RACE_SIGNS = ("already exists", "UNIQUE constraint failed: alembic", "database is locked")


def open_storage(url: str) -> Any:
    """An RDB storage with heartbeats, so the trials of a worker that died are failed and retried."""
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    engine_kwargs = _sqlite_engine(url) if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(1, 6):
        try:
            storage = RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S,
                                 grace_period=GRACE_S,
                                 heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
            if url.startswith("sqlite"):
                _serialise_transactions(storage.engine)
            return storage
        except Exception as exc:  # noqa: BLE001 - a bad URL or an unreachable database: say which
            # workers starting together on a new database race to create Optuna's tables (or to switch the new
            # SQLite file to WAL, which SQLite may refuse at once with 'database is locked'): the loser retries
            if attempt < 5 and any(sign in str(exc) for sign in RACE_SIGNS):
                time.sleep(0.2 * attempt)
                continue
            error = exc
            break
    first = redact(first_line(error))  # an Optuna URL may carry a password: never shown, never stored
    raise ConfigError(f"Cannot open the Optuna storage '{redact(url)}': {first}.",
                      "Check tune.storage / --storage (e.g. postgresql://user:pass@host/db, or omit it for "
                      "SQLite in the output directory) and that the database server is reachable.")


def _sqlite_engine(url: str) -> dict[str, Any]:
    """SQLite in WAL mode with synchronous=NORMAL: readers do not block the writer (parallel workers), and
    a commit (one per reported epoch) costs ~0.1 ms instead of an fsync. Still safe if a process is killed."""
    import sqlite3

    from sqlalchemy.engine import make_url

    path = make_url(url).database or ":memory:"
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)

    def connect() -> sqlite3.Connection:
        # isolation_level=None: the driver issues no BEGIN of its own (see _serialise_transactions)
        connection = sqlite3.connect(path, timeout=60, check_same_thread=False, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    return {"creator": connect}


def _serialise_transactions(engine: Any) -> None:
    """Begin every SQLite transaction with BEGIN IMMEDIATE (the write lock).

    Python's sqlite3 driver opens a transaction only at the first write, so Optuna's check-then-set of a
    queued trial (WAITING -> RUNNING) was two steps: two workers starting together both took the same
    queued trial, and the second failed on "Cannot tell a COMPLETE trial". Under the write lock the check
    and the set are one step; other workers wait (busy timeout 60 s)."""
    from sqlalchemy import event

    @event.listens_for(engine, "begin")
    def begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def search_hash(config: Config) -> str:
    """What makes two runs the same study: the base config and the space, not the budget or workers."""
    tune = config.tune.model_dump(mode="json", include={"space", "metric", "direction", "sampler", "pruner"})
    return config_hash(config) + "-" + hashlib.sha256(json.dumps(tune, sort_keys=True).encode()).hexdigest()[:8]


def open_study(config: Config, storage: Any, study_name: str, resume: bool, seed: int) -> tuple[Any, bool]:
    """Create the study, or open the existing one when resuming; returns (study, created)."""
    import optuna

    tune = config.tune
    metric, direction = tune.objective(config.training)
    sampler = SAMPLERS[tune.sampler.name](tune.sampler, tune, seed)
    pruner = build_pruner(tune.pruner, config.training.epochs)
    exists = study_name in {s.study_name for s in optuna.get_all_study_summaries(storage)}
    if exists:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
        recorded = study.user_attrs.get("foundry.search_hash")
        if recorded and recorded != search_hash(config):
            raise ConfigError(f"The study '{study_name}' in this storage was started with a different config or "
                              "search space, so its trials are not comparable with this one.",
                              "Restore that config, or start a new study: another --out DIR, or tune.study_name.")
        if not resume and study.trials:
            raise ConfigError(f"The study '{study_name}' already has {len(study.trials)} trials in this storage.",
                              "Add --resume to continue it (or join it as another worker), or pass another "
                              "--out DIR / tune.study_name for a new study.")
        return study, False
    study = optuna.create_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner,
                                direction=direction, load_if_exists=True)  # another worker may create it first
    study.set_user_attr("foundry.search_hash", search_hash(config))
    study.set_user_attr("foundry.metric", metric)
    study.set_user_attr("foundry.config", config.model_dump(mode="json"))
    if tune.start_from_config and tune.sampler.name != "grid" and not study.trials:
        point = base_point(config, tune.space)
        if point is not None:  # trial 0 is the config as written, so the search can only improve on it
            study.enqueue_trial(point, user_attrs={"foundry.base": True}, skip_if_exists=True)
    return study, True


# ------------------------------------------------------------------------------------------- budget
def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def counted(trial: Any) -> bool:
    """Whether a finished trial spends the budget: a trial stopped by Ctrl-C or a kill does not, nor one
    a worker started after the budget was full (a surplus trial)."""
    from optuna.trial import TrialState

    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) and \
        not trial.user_attrs.get("foundry.interrupted") and not trial.user_attrs.get("foundry.surplus")


def spent(study: Any) -> tuple[int, int]:
    """(trials that count, trials running now)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    return sum(counted(t) for t in trials), sum(t.state == TrialState.RUNNING for t in trials)


def budget_callback(n_trials: int | None) -> Callable[[Any, Any], None]:
    """Stop this worker once the study as a whole (every worker) has used up `n_trials`."""
    def check(study: Any, trial: Any) -> None:
        done, running = spent(study)
        if n_trials is not None and done + running >= n_trials:
            study.stop()
    return check


def recover_stale(study: Any) -> list[int]:
    """Fail the RUNNING trials of dead workers on this machine (a killed `foundry tune`), marked as
    interrupted so they do not spend the budget, and queue their parameters again. Workers on other
    machines are covered by heartbeats. Returns the numbers of the trials recovered."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(trial.user_attrs.get("foundry.worker", ""))
        name, _, pid = worker.rpartition(":")
        if name != host or not pid.isdigit() or _alive(int(pid)):
            continue
        study._storage.set_trial_user_attr(trial._trial_id, "foundry.interrupted", True)
        study._storage.set_trial_user_attr(trial._trial_id, "foundry.error", "interrupted: its worker was killed")
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        # a queued trial (the config as written, a retry) killed before drawing has only its fixed params
        params = trial.params or trial.system_attrs.get("fixed_params")
        if params:
            study.enqueue_trial(params, user_attrs=retry_attrs(trial))
        recovered.append(trial.number)
    return recovered


def retry_attrs(trial: Any) -> dict[str, Any]:
    """The user attributes of a trial queued again in place of `trial`."""
    return {"foundry.retry_of": trial.number, **{k: v for k, v in trial.user_attrs.items() if k == "foundry.base"}}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
