"""`foundry tune` end to end on iris: outputs, reproducing the best trial, resume, a killed worker, shared
storage, failed and pruned trials, MLflow tracking, and what the CLI prints."""

from __future__ import annotations

import csv
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from modelfoundry.cli import app
from modelfoundry.config import load_config
from tests.conftest import tiny_config

runner = CliRunner()

LR = {"type": "float", "low": 1.0e-4, "high": 1.0e-1, "log": True}
HIDDEN = {"type": "categorical", "choices": [[8], [16, 8]]}
BATCH = {"type": "int", "low": 8, "high": 32, "step": 8}
SPACE = {"training.optimizer.lr": LR, "model.hidden": HIDDEN, "training.batch_size": BATCH}
BASE_PARAMS = {"training.optimizer.lr": 1.0e-3, "model.hidden": [8], "training.batch_size": 16}  # tiny_config's
SLOW_EPOCHS = 80  # ~0.7 s a trial on iris: long enough to kill a trial, or for two workers to share a study


def tiny(**sections) -> dict:
    """tiny_config on one torch thread: tiny matmuls on two threads crawl when the other core is busy."""
    cfg = tiny_config(**sections)
    cfg["training"].setdefault("num_threads", 1)
    return cfg


def tuned(tune: dict, **sections) -> dict:
    return tiny(**sections, tune={"space": SPACE, **tune})


def write_config(tmp_path: Path, cfg: dict, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def foundry(*args):
    return runner.invoke(app, [str(a) for a in args])


def foundry_process(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "modelfoundry.cli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_trials(out: Path) -> list[dict]:
    with open(out / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def squeezed(text: str) -> str:
    """Text without whitespace: rich wraps long lines (paths) at the console width."""
    return "".join(text.split())


def study_of(storage: str | Path, name: str = "tiny") -> optuna.Study:
    url = storage if isinstance(storage, str) else f"sqlite:///{storage / 'study.db'}"
    return optuna.load_study(study_name=name, storage=url)


@pytest.fixture(scope="module", autouse=True)
def keep_torch_threads():
    """training.num_threads sets torch's process-wide thread count: give the other test modules theirs back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def counted(trials) -> list:
    return [t for t in trials if t.state.is_finished() and not t.user_attrs.get("foundry.interrupted")
            and not t.user_attrs.get("foundry.surplus")]


# ------------------------------------------------------------------------------------- one small study
@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Six trials over lr (log float), hidden (a categorical of lists) and batch_size (int with a step),
    scored by val_accuracy at the epoch the run keeps (the best val_accuracy epoch: restore_best)."""
    from modelfoundry.api.tuning import tune

    tmp = tmp_path_factory.mktemp("tune")
    cfg = load_config(tuned({"metric": "val_accuracy", "n_trials": 6},
                            training={"epochs": 4, "early_stopping": {"monitor": "val_accuracy", "patience": 50}}))
    result = tune(cfg, out=tmp / "out", progress=False)
    return cfg, result, tmp


def test_a_study_writes_trials_summary_plots_and_a_runnable_best_yaml(study):
    base, result, _ = study
    out = result.out_dir
    rows = read_trials(out)
    assert [int(r["number"]) for r in rows] == list(range(6))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"] == 6 and sum(summary["states"].values()) == 6
    assert summary["states"]["COMPLETE"] + summary["states"]["PRUNED"] == 6
    assert (summary["metric"], summary["direction"]) == ("val_accuracy", "maximize")

    first = rows[0]  # the config as written comes first, so the search can only improve on it
    assert first["base_config"] == "True" and [r["base_config"] for r in rows[1:]] == ["False"] * 5
    assert (float(first["training.optimizer.lr"]), json.loads(first["model.hidden"]),
            int(first["training.batch_size"])) == tuple(BASE_PARAMS.values())
    assert summary["base_config_value"] == pytest.approx(float(first["value"]))
    assert all(8 <= int(r["training.batch_size"]) <= 32 and int(r["training.batch_size"]) % 8 == 0 for r in rows)
    assert all(1e-4 <= float(r["training.optimizer.lr"]) <= 1e-1 for r in rows)

    complete = [r for r in rows if r["state"] == "COMPLETE"]
    top = max(float(r["value"]) for r in complete)
    best = summary["best"]
    assert best["value"] == pytest.approx(top) and float(rows[best["number"]]["value"]) == pytest.approx(top)
    assert best["value"] >= summary["base_config_value"]

    best_config = load_config(out / "best.yaml")  # valid, and `foundry run` ignores nothing in it
    assert best_config.tune is None
    assert (out / "best.yaml").read_text().startswith(f"# foundry run {out / 'best.yaml'}")
    assert _changed(base, best_config) <= set(SPACE)  # nothing but tuned keys differs from the base config...
    assert {path: _get(best_config, path) for path in SPACE} == best["params"]  # ...and those are the best's
    assert best["params"]["model.hidden"] in HIDDEN["choices"]

    for name in ("optimization_history", "param_importances", "parallel_coordinate"):
        plot = summary["plots"][name]
        assert plot == f"{name}.png" and (out / plot).stat().st_size > 1000 or plot.startswith("skipped: "), plot


def test_best_yaml_reproduces_the_best_trial_with_foundry_run(study):
    """Same seed, same data, deterministic CPU training: `foundry run best.yaml` gets the best trial's value
    (and its whole per-epoch curve), which is at least the config-as-written's value."""
    from modelfoundry.api.training import run

    _, result, tmp = study
    best = result.summary["best"]
    rerun = run(load_config(result.out_dir / "best.yaml"), run_dir=tmp / "rerun", progress=False)
    history = [json.loads(line) for line in (tmp / "rerun/metrics.jsonl").read_text().splitlines()]
    kept = next(r for r in history if r["epoch"] == rerun.best_epoch)
    assert kept["val_accuracy"] == pytest.approx(best["value"], abs=1e-12)
    assert rerun.best_epoch == int(read_trials(result.out_dir)[best["number"]]["best_epoch"])
    trial = study_of(result.out_dir).trials[best["number"]]
    assert [r["val_accuracy"] for r in history] == pytest.approx(
        [trial.intermediate_values[e] for e in sorted(trial.intermediate_values)], abs=1e-12)
    assert best["value"] >= result.summary["base_config_value"]


def _flat(data, prefix=""):
    if isinstance(data, dict):
        return {k: v for key, value in data.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): data}


def _changed(a, b) -> set[str]:
    """Dotted paths whose value differs between two configs (lists compared whole), the tune section aside."""
    fa, fb = (_flat(c.model_dump(mode="json", exclude={"tune"})) for c in (a, b))
    return {k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}


def _get(config, path):
    value = config.model_dump(mode="json")
    for part in path.split("."):
        value = value[part]
    return value


# -------------------------------------------------------------------------------------------- resuming
@pytest.mark.slow  # a few seconds: the full suite runs it
def test_resume_continues_the_study_and_a_rerun_without_it_is_refused(tmp_path):
    cfg = write_config(tmp_path, tuned({"n_trials": 3}))
    out = tmp_path / "out"
    assert foundry("tune", cfg, "--out", out, "--no-progress").exit_code == 0

    again = foundry("tune", cfg, "--out", out, "--n-trials", 5, "--no-progress")
    assert again.exit_code == 2, again.output
    assert "already has 3 trials" in again.output and "--resume" in again.output
    assert "Traceback" not in again.output
    assert len(study_of(out).trials) == 3

    resumed = foundry("tune", cfg, "--out", out, "--n-trials", 5, "--resume", "--no-progress")
    assert resumed.exit_code == 0, resumed.output
    trials = study_of(out).trials
    assert [t.number for t in trials] == list(range(5)) and all(t.state.is_finished() for t in trials)
    assert sum(bool(t.user_attrs.get("foundry.base")) for t in trials) == 1  # the base point is not enqueued again
    assert sum(t.params["training.optimizer.lr"] == BASE_PARAMS["training.optimizer.lr"] for t in trials) == 1
    assert len(read_trials(out)) == 5


@pytest.mark.slow
def test_a_killed_tune_is_resumed_and_its_running_trial_retried(tmp_path):
    """SIGKILL a real `foundry tune` mid-trial: on --resume its RUNNING trial is failed as interrupted (not
    spending the budget) and run again with the same parameters."""
    cfg = write_config(tmp_path, tuned({"n_trials": 3, "pruner": "none"},
                                       training={"epochs": SLOW_EPOCHS, "device": "cpu"}))
    out = tmp_path / "out"
    proc = foundry_process("tune", cfg, "--out", out, "--no-progress")
    try:
        victim = _wait_for_running_trial(out / "study.db", proc, timeout_s=120)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert victim is not None, "no trial started running before the process ended"
    states = {t.number: t.state.name for t in study_of(out).trials}
    assert states[victim] == "RUNNING", f"trial {victim} finished before the kill: {states}"

    resumed = foundry("tune", cfg, "--out", out, "--resume", "--no-progress")
    assert resumed.exit_code == 0, resumed.output
    assert squeezed(f"Trials {victim} of a killed run were failed and queued again") in squeezed(resumed.output)
    trials = study_of(out).trials
    killed = trials[victim]
    assert killed.state.name == "FAIL" and killed.user_attrs["foundry.interrupted"] is True
    assert "killed" in killed.user_attrs["foundry.error"]
    retries = [t for t in trials if t.user_attrs.get("foundry.retry_of") == victim]
    assert len(retries) == 1 and retries[0].number > victim
    assert retries[0].params == killed.params and retries[0].state.name == "COMPLETE"
    assert retries[0].user_attrs.get("foundry.base") == killed.user_attrs.get("foundry.base")
    assert len(counted(trials)) == 3 and len(trials) == 4
    assert not [t for t in trials if t.state.name == "RUNNING"]
    rows = read_trials(out)
    assert rows[victim]["state"] == "FAIL" and "killed" in rows[victim]["error"]


def _wait_for_running_trial(db: Path, proc: subprocess.Popen, timeout_s: float) -> int | None:
    """The number of the first RUNNING trial that is training (its worker and every parameter recorded),
    read straight from SQLite, read-only, so this process never creates the tables the worker is creating."""
    deadline = time.monotonic() + timeout_s
    query = ("SELECT t.number FROM trials t WHERE t.state = 'RUNNING' "
             "AND EXISTS (SELECT 1 FROM trial_user_attributes a WHERE a.trial_id = t.trial_id "
             "            AND a.key = 'foundry.worker') "
             "AND (SELECT COUNT(*) FROM trial_params p WHERE p.trial_id = t.trial_id) = ? ORDER BY t.number")
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
                    found = con.execute(query, (len(SPACE),)).fetchone()
                if found:
                    return found[0]
            except sqlite3.OperationalError:  # tables not created yet, or locked for a moment
                pass
        time.sleep(0.05)
    return None


def test_a_queued_trial_killed_before_drawing_its_parameters_is_retried_with_them(tmp_path):
    """The kill above lands in training; here the worker dies in the moment between taking the queued base
    trial and drawing its parameters (they are still only Optuna's fixed_params)."""
    from modelfoundry.api.tuning import tune
    from modelfoundry.tune.study import open_storage, open_study, quiet_optuna

    cfg = load_config(tuned({"n_trials": 2}, training={"epochs": 2}))
    out = tmp_path / "out"
    out.mkdir()
    quiet_optuna()
    study, _ = open_study(cfg, open_storage(f"sqlite:///{out / 'study.db'}"), "tiny", resume=False, seed=0)
    with pytest.warns(UserWarning, match="Heartbeat"):  # ask() outside optimize(): no heartbeat, as intended
        trial = study.ask()  # trial 0, the queued base config: RUNNING, no parameters drawn yet
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    trial.set_user_attr("foundry.worker", f"{socket.gethostname()}:{dead}")
    result = tune(cfg, out=out, resume=True, progress=False)
    assert result.recovered == [0]
    retries = [r for r in result.rows if r["retry_of"] == 0]
    assert len(retries) == 1 and retries[0]["base_config"] and retries[0]["state"] == "COMPLETE"
    assert {path: retries[0][path] for path in SPACE} == {**BASE_PARAMS, "model.hidden": "[8]"}
    assert result.summary["base_config_value"] == retries[0]["value"]


# ------------------------------------------------------------------------------------- several workers
# Workers check the budget after each trial, so two finishing together may each start one more; the later
# one sees the budget full when it starts, and is recorded as a surplus trial that never trains and does
# not count (nor appear in trials.csv).
OVERSHOOT = (0,)


@pytest.mark.slow
def test_two_foundry_tune_processes_share_one_study_and_its_budget(tmp_path):
    """Two `foundry tune --resume` workers on one storage split the study's n_trials between them. The study
    is created first (as the first worker would), so both start together: see the next test for two workers
    racing to create it."""
    from modelfoundry.tune.study import open_storage, open_study, quiet_optuna

    raw = tuned({"n_trials": 6, "pruner": "none"},
                training={"epochs": SLOW_EPOCHS // 4, "device": "cpu"})
    cfg = write_config(tmp_path, raw)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    quiet_optuna()
    open_study(load_config(raw), open_storage(url), "tiny", resume=False, seed=0)  # see the race test below
    procs = [foundry_process("tune", cfg, "--storage", url, "--resume", "--out", tmp_path / out, "--no-progress")
             for out in ("a", "b")]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    trials = [t for t in study_of(url).trials if not t.user_attrs.get("foundry.surplus")]
    done = counted(trials)
    assert len(done) == len(trials) and len(trials) - 6 in OVERSHOOT, [
        (t.number, t.state.name, t.user_attrs.get("foundry.worker")) for t in trials]
    assert len({t.user_attrs["foundry.worker"] for t in done}) == 2  # both processes ran trials
    assert [t.number for t in trials if t.user_attrs.get("foundry.base")] == [0]
    for out in ("a", "b"):  # each worker reports the whole study
        assert len(read_trials(tmp_path / out)) == len(trials) and (tmp_path / out / "best.yaml").is_file()
        assert not (tmp_path / out / "study.db").exists()


RACE = """
import sys, time
from modelfoundry.config import load_config
from modelfoundry.tune.study import open_storage, open_study
config = load_config(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[3]) - time.time()))  # both processes open the storage at the same moment
open_study(config, open_storage(sys.argv[2]), "tiny", resume=True, seed=0)
"""


@pytest.mark.slow
def test_two_workers_starting_together_on_a_fresh_storage_create_one_study(tmp_path):
    cfg = write_config(tmp_path, tuned({"n_trials": 6}))
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    start = time.time() + 4  # after both have imported optuna and pydantic
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(cfg), url, str(start)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert [t.state.name for t in study_of(url).trials] == ["WAITING"]  # the base point, queued once


@pytest.mark.slow
def test_n_jobs_runs_worker_processes_on_one_study(tmp_path):
    from modelfoundry.api.tuning import tune

    cfg = tuned({"n_trials": 4, "pruner": "none"}, training={"epochs": SLOW_EPOCHS // 4, "device": "cpu"})
    result = tune(cfg, n_jobs=2, out=tmp_path / "out", progress=False)
    assert len(result.rows) - 4 in OVERSHOOT and [r["number"] for r in result.rows] == list(range(len(result.rows)))
    assert {r["state"] for r in result.rows} == {"COMPLETE"}
    assert len({r["worker"] for r in result.rows}) == 2
    assert result.summary["best"] is not None and (tmp_path / "out/best.yaml").is_file()


# --------------------------------------------------------------------------------- failures and pruning
GRID = {"space": {"training.precision": {"type": "categorical", "choices": ["fp32", "fp16"]},
                  "model.hidden": {"type": "categorical", "choices": [[8], [4]]}}, "sampler": "grid", "pruner": "none"}


def test_a_crashing_trial_is_recorded_as_failed_and_the_grid_goes_on(tmp_path):
    """fp16 needs CUDA: on the CPU those grid points fail at training time, the others complete. The grid
    sampler ends the study once every point ran (4 here, well under the default n_trials of 20)."""
    cfg = write_config(tmp_path, tiny(training={"epochs": 2, "device": "cpu"}, tune=GRID))
    result = foundry("tune", cfg, "--out", tmp_path / "out", "--no-progress")
    assert result.exit_code == 0, result.output
    rows = read_trials(tmp_path / "out")
    assert sorted((r["training.precision"], r["model.hidden"]) for r in rows) == [
        ("fp16", "[4]"), ("fp16", "[8]"), ("fp32", "[4]"), ("fp32", "[8]")]
    for r in rows:
        if r["training.precision"] == "fp16":
            assert r["state"] == "FAIL" and r["value"] == "" and "fp16" in r["error"] and "ConfigError" in r["error"]
            assert squeezed(f"trial {r['number']} failed: ConfigError: training.precision is fp16") in squeezed(
                result.output)
        else:
            assert r["state"] == "COMPLETE" and r["error"] == ""
    assert json.loads((tmp_path / "out/summary.json").read_text())["states"]["FAIL"] == 2
    assert load_config(tmp_path / "out/best.yaml").training.precision == "fp32"


def test_resuming_a_finished_grid_runs_no_more_trials(tmp_path):
    from modelfoundry.api.tuning import tune

    cfg = tiny(training={"epochs": 1, "device": "cpu"}, tune=GRID)
    tune(cfg, out=tmp_path / "out", progress=False)
    again = tune(cfg, out=tmp_path / "out", resume=True, progress=False)
    assert len(again.rows) == 4


def test_the_median_pruner_stops_hopeless_trials_early(tmp_path):
    """Deterministic: the random sampler is seeded by the config's seed and CPU training is deterministic,
    so the same trials are pruned on every run."""
    from modelfoundry.api.tuning import tune

    epochs = 8
    cfg = tiny(training={"epochs": epochs, "device": "cpu"}, tune={
        "space": {"training.optimizer.lr": {"type": "float", "low": 1.0e-5, "high": 1.0e-1, "log": True}},
        "n_trials": 8, "sampler": "random", "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 2}})
    result = tune(cfg, out=tmp_path / "out", progress=False)
    trials = study_of(tmp_path / "out").trials
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert len(trials) == 8 and pruned, [(t.number, t.state.name, t.params) for t in trials]
    for t in trials:  # every epoch run was reported to the pruner
        ran = max(t.intermediate_values)
        assert sorted(t.intermediate_values) == list(range(1, ran + 1))
        assert ran < epochs if t.state.name == "PRUNED" else ran == epochs
        assert ran >= 2  # n_warmup_steps: the epochs every trial runs before it can be pruned
    rows = {r["number"]: r for r in result.rows}
    assert all(rows[t.number]["epochs"] == max(t.intermediate_values) for t in trials)
    assert result.summary["states"]["PRUNED"] == len(pruned)


# -------------------------------------------------------------------------------------------- tracking
@pytest.mark.slow  # a few seconds: the full suite runs it
def test_a_study_is_logged_as_one_parent_run_with_a_nested_run_per_trial(tmp_path):
    from modelfoundry.api.tuning import tune
    from modelfoundry.registry import client

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = tuned({"n_trials": 3}, tracking={"enabled": True, "uri": uri, "artifacts": str(tmp_path / "mlartifacts")})
    first = tune(cfg, out=tmp_path / "out", progress=False)
    second = tune(cfg, n_trials=5, out=tmp_path / "out", resume=True, progress=False)
    assert first.extras["tracking"]["trials_logged"] == 3 and second.extras["tracking"]["trials_logged"] == 2
    assert first.extras["tracking"]["run_id"] == second.extras["tracking"]["run_id"]

    mlf = client(uri)
    experiment = mlf.get_experiment_by_name("tiny").experiment_id
    runs = mlf.search_runs([experiment], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_id == first.extras["tracking"]["run_id"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted(int(r.data.tags["foundry.trial"]) for r in children) == list(range(5))  # no duplicates
    best = second.summary["best"]
    assert parents[0].data.metrics["best_val_loss"] == pytest.approx(best["value"])
    assert parents[0].data.tags["foundry.best_trial"] == str(best["number"])
    trial0 = next(r for r in children if r.data.tags["foundry.trial"] == "0")
    assert trial0.data.params["training.optimizer.lr"] == "0.001" and trial0.data.params["model.hidden"] == "[8]"
    assert trial0.data.metrics["val_loss"] == pytest.approx(second.rows[0]["value"])


# ---------------------------------------------------------------------------------------- CLI output
def test_foundry_tune_prints_the_summary_and_the_next_command(tmp_path):
    cfg = write_config(tmp_path, tuned({"n_trials": 2}, training={"epochs": 2}))
    result = foundry("tune", cfg, "--out", tmp_path / "out", "--no-progress")
    assert result.exit_code == 0, result.output
    text = result.output
    assert "Study tiny" in text and "2 (2 complete, 0 pruned, 0 failed)" in text
    assert "config as written" in text and "(trial 0)" in text
    assert any(line.lstrip("│ ").startswith("best ") and "val_loss" in line for line in text.splitlines())
    assert "Top trials" in text and "training.optimizer.lr" in text
    assert squeezed(f"Next: `foundry run {tmp_path / 'out' / 'best.yaml'}` trains the best config.") in squeezed(text)


@pytest.mark.parametrize("tune_section, named", [
    ({"space": SPACE, "sampler": "tpx"}, "tune.sampler.name"),
    ({"space": {"training.optimzer.lr": LR}}, "tune.space.training.optimzer.lr"),
])
def test_a_broken_tune_section_is_a_clean_error_before_anything_is_written(tmp_path, tune_section, named):
    cfg = write_config(tmp_path, tiny(tune=tune_section))
    result = foundry("tune", cfg, "--out", tmp_path / "out", "--no-progress")
    assert result.exit_code == 2, result.output
    assert named in result.output and "Did you mean" in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)  # typer.Exit(2), no crash
    assert not (tmp_path / "out").exists()


def test_a_storage_url_with_a_password_is_redacted_in_the_error(tmp_path):
    cfg = write_config(tmp_path, tuned({"n_trials": 1}))
    result = foundry("tune", cfg, "--out", tmp_path / "out", "--storage", "postgresql://ops:hunter2@127.0.0.1:1/optuna")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "hunter2" not in result.output and "postgresql://ops:***@127.0.0.1:1/optuna" in squeezed(result.output)
