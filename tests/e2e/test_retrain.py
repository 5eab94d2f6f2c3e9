"""foundry retrain on real data: breast_cancer in two halves (v1 trained on the first, retrained with the second,
warm and full), the gate's decision in the alias history, a forced refusal, a forced promotion rolled back, a dry
run, and a shadow that follows the challenger alias."""

from __future__ import annotations

import json
import re
import time

import pandas as pd
import pytest
from typer.testing import CliRunner

from modelfoundry.api.retraining import retrain
from modelfoundry.monitor.champion import gate
from modelfoundry.api.training import run
from modelfoundry.cli import app
from modelfoundry.config import load_config
from modelfoundry.data.sources import load_source
from modelfoundry.storage import read_json
from tests.conftest import tiny_config

runner = CliRunner()


def champion_config(tmp, name, source, uri, lr=1e-3, epochs=8):
    return load_config(tiny_config(
        name=name, data={"source": str(source), "target": "target"}, model={"name": "mlp", "hidden": [16]},
        training={"epochs": epochs, "batch_size": 32, "early_stopping": None, "optimizer": {"lr": lr}},
        evaluation={"plots": False, "metrics": ["accuracy", "f1_macro", "roc_auc"]},
        tracking={"enabled": True, "uri": uri, "artifacts": str(tmp / "mlartifacts")}, output={"dir": str(tmp / "runs")}))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """breast_cancer split in two halves (file order); v1 of 'bc' trained on the first, promoted to production."""
    from modelfoundry.registry import promote

    tmp = tmp_path_factory.mktemp("retrain")
    frame = load_source("sklearn:breast_cancer")
    half = len(frame) // 2
    frame.iloc[:half].to_csv(tmp / "first.csv", index=False)
    frame.iloc[half:].to_csv(tmp / "second.csv", index=False)
    uri = f"sqlite:///{tmp / 'foundry.db'}"
    run(champion_config(tmp, "bc", tmp / "first.csv", uri), run_dir=tmp / "v1", progress=False)
    promote("bc", "1", "production", "first half", uri)
    return {"tmp": tmp, "uri": uri, "second": tmp / "second.csv", "half": half, "rows": len(frame)}


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def aliases(uri, name):
    from modelfoundry.registry import show

    return show(name, uri)["aliases"]


def check_recorded(result, uri, name, before, margin=0.0, tolerance=0.01):
    """The challenger is a new version with its lineage; the challenger alias moved to it; the alias moved to it
    only if the gate passed, and the history says so with the numbers."""
    from modelfoundry.registry import history, show

    again = gate(result.holdout["champion"], result.holdout["challenger"], result.metric,
                 [c.metric for c in result.decision.checks[1:]], margin, tolerance)
    assert again.promote == result.decision.promote  # the decision follows from the holdout numbers
    version = result.challenger_version
    info = show(f"{name}/{version}", uri)
    assert info["tags"]["foundry.parent_version"] == result.champion["version"]
    tag = json.loads(info["tags"]["foundry.retrain"])
    assert tag["mode"] == result.mode and tag["promote"] == result.decision.promote
    assert tag["data_sha256"] == read_json(result.run_dir / "data.json")["fingerprint"]["sha256"]
    now = aliases(uri, name)
    assert now["challenger"] == version
    assert now["production"] == (version if result.decision.promote else before)
    last = history(name, uri)[-1]
    assert (last["alias"], last["to"], last["from"]) == ("production", version, before)
    assert last["action"] == ("promote" if result.decision.promote else "refuse")
    champion_value = result.holdout["champion"][result.metric]
    assert f"{result.metric} {result.holdout['challenger'][result.metric]:.4f} vs {champion_value:.4f}" in last["reason"]


@pytest.mark.slow
def test_warm_retrain_on_the_second_half(store):
    from modelfoundry.api.evaluation import evaluate

    uri = store["uri"]
    result = retrain("bc@production", store["second"], mode="warm", uri=uri)
    holdout = round((store["rows"] - store["half"]) * 0.3)
    assert result.rows == {"holdout": holdout, "train": store["rows"] - store["half"] - holdout}
    assert result.champion["version"] == "1" and result.challenger_version == "2"
    check_recorded(result, uri, "bc", "1")
    champion_pre, challenger_pre = (read_json(d / "preprocess.json") for d in (store["tmp"] / "v1", result.run_dir))
    assert challenger_pre == champion_pre  # warm: the champion's preprocessing, unchanged
    config = load_config(result.run_dir / "config.yaml")
    assert config.training.optimizer.lr == pytest.approx(1e-4) and config.training.epochs == 8 // 3
    assert evaluate(result.run_dir).metrics == pytest.approx(result.test_metrics)  # a run like any: rebuilt
    from modelfoundry.monitor.profile import load_reference

    reference = load_reference(result.run_dir)  # the monitor reference profile: the new rows (train + val)
    split = read_json(result.run_dir / "data.json")["split"]
    assert reference is not None and reference.rows == split["train"] + split["val"]
    record = read_json(result.run_dir / "retrain.json")
    assert record["holdout_metrics"] == result.holdout and record["challenger_version"] == "2"


@pytest.mark.slow
def test_full_retrain_through_the_cli_and_the_history(store):
    uri = store["uri"]
    before = aliases(uri, "bc")["production"]
    output = cli("retrain", "bc@production", "--data", store["second"], "--mode", "full", "--epochs", 6, "--uri", uri,
                 "--no-progress")
    assert "full retrain" in output and "Decision: " in output and "accuracy *" in output
    run_dir = re.search(r"Challenger run: (\S+)", output)[1]
    record = read_json(f"{run_dir}/retrain.json")
    data = pd.read_parquet(f"{run_dir}/retrain-data.parquet")
    assert len(data) == store["half"] + record["rows"]["train"]  # the reference (first half) + the new rows
    assert record["mode"] == "full" and record["champion"]["version"] == before
    now = aliases(uri, "bc")
    assert now["challenger"] == record["challenger_version"]
    assert now["production"] == (record["challenger_version"] if record["promote"] else before)
    history = cli("registry", "history", "bc", "--uri", uri)
    assert ("refuse" if not record["promote"] else "promote") in history and "retrain (full)" in history


@pytest.mark.slow
def test_a_gate_forced_to_refuse_leaves_the_alias_and_rollback_unmoved(store):
    from modelfoundry.registry import history

    uri = store["uri"]
    before = aliases(uri, "bc")["production"]
    result = retrain("bc", store["second"], mode="warm", margin=1.0, epochs=1, uri=uri)  # no metric gains 1.0
    assert not result.decision.promote and result.decision.reason.startswith("refused: ")
    check_recorded(result, uri, "bc", before, margin=1.0)
    last = history("bc", uri)[-1]
    assert last["action"] == "refuse" and "margin 1" in last["reason"]
    output = cli("registry", "history", "bc", "--uri", uri)
    assert f"{result.challenger_version} (refused)" in output


@pytest.mark.slow
def test_a_promotion_can_be_rolled_back(store):
    """A champion trained on shuffled labels loses to a warm challenger trained on the real ones."""
    tmp, uri = store["tmp"], store["uri"]
    noisy = pd.read_csv(tmp / "first.csv")
    noisy["target"] = noisy["target"].sample(frac=1.0, random_state=0).to_numpy()
    noisy.to_csv(tmp / "noisy.csv", index=False)
    run(champion_config(tmp, "noisy", tmp / "noisy.csv", uri, lr=1e-2), run_dir=tmp / "noisy-v1", progress=False)
    cli("registry", "promote", "noisy", "1", "--uri", uri)
    result = retrain("noisy@production", store["second"], mode="warm", epochs=15, tolerance=1.0, uri=uri)
    assert result.decision.promote, result.decision.reason
    assert aliases(uri, "noisy")["production"] == "2"
    output = cli("registry", "rollback", "noisy", "--uri", uri)
    assert "v2 -> v1" in output and aliases(uri, "noisy")["production"] == "1"


@pytest.mark.slow
def test_a_dry_run_registers_and_moves_nothing(store):
    from modelfoundry.registry import show

    uri = store["uri"]
    versions, before = len(show("bc", uri)["versions"]), aliases(uri, "bc")
    result = retrain("bc@production", store["second"], epochs=1, dry_run=True, uri=uri)
    assert result.challenger_version is None and result.moves == []
    assert len(show("bc", uri)["versions"]) == versions and aliases(uri, "bc") == before
    assert read_json(result.run_dir / "retrain.json")["dry_run"] is True


@pytest.mark.slow
def test_the_shadow_follows_the_challenger_alias(store):
    from fastapi.testclient import TestClient

    from modelfoundry.config import ServeConfig
    from modelfoundry.monitor.shadow import Shadow
    from modelfoundry.registry import promote
    from modelfoundry.serve.app import create_app
    from modelfoundry.serve.store import RunDirStore

    uri = store["uri"]
    shadow = Shadow("bc@challenger", uri, ServeConfig(backend="torch", poll_s=0.05))
    rows = pd.read_csv(store["second"]).drop(columns="target").head(20)
    body = {"records": rows.to_dict(orient="records")}
    first = aliases(uri, "bc")["challenger"]
    with TestClient(create_app(ServeConfig(backend="torch"), RunDirStore(store["tmp"] / "v1"),
                               extensions=[shadow])) as client:
        client.post("/predict", json=body)
        deadline = time.monotonic() + 20
        while shadow.agreement_now() is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert shadow.model.version == first
        promote("bc", "1", "challenger", "shadow the champion itself", uri)
        time.sleep(0.1)
        client.post("/predict", json=body)
        while shadow.model.version != "1":
            assert time.monotonic() < deadline, "the shadow did not follow its alias"
            time.sleep(0.02)
            client.post("/predict", json=body)
        assert shadow.agreement_now() == 1.0  # the champion shadowing itself: every row agrees


def test_new_data_without_the_champions_columns_is_refused(tmp_path):
    cfg = load_config(tiny_config(output={"dir": str(tmp_path / "runs")}))
    run(cfg, run_dir=tmp_path / "iris", progress=False)
    frame = load_source("sklearn:iris").drop(columns=["petal width (cm)"])
    frame.to_csv(tmp_path / "new.csv", index=False)
    result = runner.invoke(app, ["retrain", str(tmp_path / "iris"), "--data", str(tmp_path / "new.csv")])
    assert result.exit_code != 0 and "petal width (cm)" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing trained


@pytest.mark.slow
def test_a_run_directory_champion_is_compared_but_nothing_is_promoted(tmp_path):
    """iris is sorted by class: its last rows hold one class, so roc_auc cannot be judged there (shown, not used)."""
    cfg = load_config(tiny_config(output={"dir": str(tmp_path / "runs")}))
    run(cfg, run_dir=tmp_path / "iris", progress=False)
    load_source("sklearn:iris").to_csv(tmp_path / "new.csv", index=False)
    result = retrain(tmp_path / "iris", tmp_path / "new.csv", mode="warm", epochs=1)
    assert result.champion["version"] is None and result.challenger_version is None and result.moves == []
    checks = {c.metric: c for c in result.decision.checks}
    assert checks["accuracy"].primary and checks["accuracy"].passed is not None
    assert checks["roc_auc"].passed is None and "roc_auc" not in result.holdout["champion"]
    assert result.rows == {"holdout": 45, "train": 105}
    output = cli("retrain", tmp_path / "iris", "--data", tmp_path / "new.csv", "--epochs", 1, "--no-progress")
    assert "no alias moved" in output and "roc_auc" in output
