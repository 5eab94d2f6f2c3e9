"""`foundry ensemble` end to end: two registered versions of breast_cancer combined, registered with lineage,
its one ONNX graph equal to the Python combination, and served answers equal to the offline ensemble."""

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from modelfoundry.cli import app
from modelfoundry.config import load_config
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow  # two registered trainings (~30 s on 2 shared cores)
runner = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A registry holding bc/1 and bc/2: other seeds and widths, the same data split (data.split.seed)."""
    from modelfoundry.api.training import run

    tmp = tmp_path_factory.mktemp("ensemble")
    uri = f"sqlite:///{tmp / 'foundry.db'}"
    tracking = {"enabled": True, "uri": uri, "artifacts": str(tmp / "mlartifacts")}
    for i, (seed, hidden) in enumerate([(0, [16]), (1, [8, 8])]):
        cfg = load_config(tiny_config(name="bc", seed=seed, tracking=tracking, model={"name": "mlp", "hidden": hidden},
                                      data={"source": "sklearn:breast_cancer", "split": {"seed": 0}},
                                      training={"epochs": 4}))
        run(cfg, run_dir=tmp / f"run{i}", progress=False)
    return {"uri": uri, "tmp": tmp}


@pytest.fixture(scope="module")
def built(store):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", store["uri"])
        result = runner.invoke(app, ["ensemble", "bc/1", "bc/2", "--method", "average", "-o",
                                     str(store["tmp"] / "ens")])
    assert result.exit_code == 0, result.output
    return {"output": result.output, "dir": store["tmp"] / "ens"}


def _offline(ens_dir):
    """The members' test outputs combined in Python, from ensemble.json, on the test split's raw rows."""
    from modelfoundry.api.evaluation import reload_splits
    from modelfoundry.ensemble.combine import Combination
    from modelfoundry.models.inference import predict_outputs
    from modelfoundry.rundir import load_model

    record = json.loads((ens_dir / "ensemble.json").read_text())
    members = [load_model(m["run_dir"]) for m in record["members"]]
    splits = reload_splits(members[0])
    outputs = [predict_outputs(m.model, splits["X"]["test"], m.task) for m in members]
    return Combination.from_json(record["combination"]).apply(outputs), members[0]


def test_table_shows_the_ensemble_its_members_and_the_baselines(built):
    out = built["output"]
    for row in ("ensemble", "bc/1", "bc/2", "baseline (dummy)", "baseline (linear)"):
        assert row in out
    report = (built["dir"] / "eval" / "report.md").read_text()
    assert "## Ensemble and members" in report and "| bc/2 |" in report
    members = json.loads((built["dir"] / "eval" / "members.json").read_text())
    metrics = json.loads((built["dir"] / "eval" / "metrics.json").read_text())
    assert [m["ref"] for m in members] == ["bc/1", "bc/2"] and "baseline_linear_accuracy" in metrics
    assert metrics["accuracy"] >= min(m["metrics"]["accuracy"] for m in members)
    reference = json.loads((built["dir"] / "model" / "reference.json").read_text())  # for serve --monitor
    assert reference["task"] == "classification" and reference["rows"] > 0


def test_registered_with_its_members_as_lineage(built, store):
    from modelfoundry.registry import show

    info = show("bc-ensemble/1", store["uri"])
    assert json.loads(info["tags"]["foundry.ensemble_members"]) == ["bc/1", "bc/2"]
    assert info["tags"]["foundry.ensemble_method"] == "average"
    assert info["metrics"]["accuracy"] == pytest.approx(
        json.loads((built["dir"] / "eval" / "metrics.json").read_text())["accuracy"])


def test_one_onnx_graph_equals_the_python_combination(built):
    import onnx

    from modelfoundry.api.evaluation import reload_splits
    from modelfoundry.models.inference import predict_outputs
    from modelfoundry.rundir import load_model

    graph = onnx.load(str(built["dir"] / "model" / "onnx" / "model.onnx"))
    assert [i.name for i in graph.graph.input] == ["numeric"] and len(graph.graph.output) == 1
    assert {n.name.split("_")[0] for n in graph.graph.node} >= {"m0", "m1", "ens"}
    expected, first = _offline(built["dir"])
    ensemble = load_model(built["dir"])  # runtime onnx: the graph, through the usual loader
    got = predict_outputs(ensemble.model, reload_splits(first)["X"]["test"], "classification")
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_served_answers_equal_the_offline_ensemble(built, monkeypatch):
    from modelfoundry.artifacts.records import DataRecord
    from modelfoundry.config import ServeConfig
    from modelfoundry.data.prepare import rebuild_splits
    from modelfoundry.serve.app import create_app
    from modelfoundry.serve.store import RunDirStore

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    expected, first = _offline(built["dir"])
    raw = rebuild_splits(first.config.data, first.config.seed, DataRecord.read(first.run_dir / "data.json").sha256,
                         first.run_dir)["test"].drop(columns="target")
    with TestClient(create_app(ServeConfig(max_records=500), RunDirStore(built["dir"]))) as client:
        body = client.post("/predict", json={"records": raw.to_dict(orient="records")}).json()
    np.testing.assert_allclose(np.asarray(body["probabilities"]), expected, atol=1e-4)
    assert body["model"] == "bc-ensemble"


def test_stack_and_a_member_on_other_rows_is_refused(store, tmp_path):
    """Stacking through the API on the run directories; a member with another split seed is refused by name."""
    from modelfoundry.api.ensembles import ensemble
    from modelfoundry.api.training import run
    from modelfoundry.errors import DataError

    stacked = ensemble([store["tmp"] / "run0", store["tmp"] / "run1"], method="stack", out=tmp_path / "stack",
                       register=False)
    assert stacked.combination["coef"] and stacked.parity["max_abs_diff"] < 1e-4
    cfg = load_config(tiny_config(name="bc", data={"source": "sklearn:breast_cancer", "split": {"seed": 7}},
                                  training={"epochs": 1}))
    other = run(cfg, run_dir=tmp_path / "other", progress=False).run_dir
    with pytest.raises(DataError, match=r"(?s)Member 2 \(.*other\) was trained on other rows.*--data FILE"):
        ensemble([store["tmp"] / "run0", other], register=False, out=tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_members_with_other_preprocessing_are_served_as_a_group(store, tmp_path, monkeypatch):
    """An MLP on standard-scaled features and one on min-max scaled ones: no shared graph input, so a served
    group, whose answers (TestClient) equal the members' own predictions combined."""
    from modelfoundry.api.ensembles import ensemble
    from modelfoundry.api.training import run
    from modelfoundry.artifacts.records import DataRecord
    from modelfoundry.config import ServeConfig
    from modelfoundry.data.prepare import rebuild_splits
    from modelfoundry.errors import RunDirError
    from modelfoundry.models.inference import predict_outputs
    from modelfoundry.rundir import load_model
    from modelfoundry.serve.app import create_app
    from modelfoundry.serve.store import RunDirStore

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(tiny_config(name="bc", seed=3, model={"name": "mlp", "hidden": [12]}, training={"epochs": 3},
                                  data={"source": "sklearn:breast_cancer", "split": {"seed": 0},
                                        "features": {"*": {"scale": "minmax"}}}))
    other = run(cfg, run_dir=tmp_path / "minmax", progress=False).run_dir
    result = ensemble([store["tmp"] / "run0", other], method="vote", weights=[0.7, 0.3], out=tmp_path / "group",
                      register=False)
    assert result.parity["served_as"] == "group"
    members = [load_model(store["tmp"] / "run0"), load_model(other)]
    raw = rebuild_splits(members[0].config.data, members[0].config.seed,
                         DataRecord.read(members[0].run_dir / "data.json").sha256, members[0].run_dir)["test"]
    outputs = [predict_outputs(m.model, m.preprocessor.transform(raw), m.task) for m in members]
    from modelfoundry.ensemble.combine import Combination

    expected = Combination.from_json(result.combination).apply(outputs)
    with TestClient(create_app(ServeConfig(max_records=500), RunDirStore(tmp_path / "group"))) as client:
        body = client.post("/predict", json={"records": raw.drop(columns="target").to_dict(orient="records")}).json()
    np.testing.assert_allclose(np.asarray(body["probabilities"]), expected, atol=1e-4)
    with pytest.raises(RunDirError, match="served group"):
        load_model(tmp_path / "group")


def test_a_labelled_file_replaces_the_test_split(store, tmp_path):
    """--data: evaluated on the file's rows (no baselines: there is no training split to fit them on)."""
    from modelfoundry.api.ensembles import ensemble
    from modelfoundry.data.sources import load_source

    load_source("sklearn:breast_cancer").head(60).to_csv(tmp_path / "rows.csv", index=False)
    result = ensemble([store["tmp"] / "run0", store["tmp"] / "run1"], data=tmp_path / "rows.csv",
                      out=tmp_path / "file", register=False)
    assert result.evaluated_on == "rows.csv" and result.parity["rows_checked"] == 60
    assert not any(k.startswith("baseline_") for k in result.metrics)
    assert all(len(m["metrics"]) and "accuracy" in m["metrics"] for m in result.members)


def test_snapshot_ensemble_of_one_runs_last_epochs(tmp_path, monkeypatch):
    from modelfoundry.api.ensembles import ensemble
    from modelfoundry.api.training import run
    from modelfoundry.errors import ConfigError

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(tiny_config(name="bc", data={"source": "sklearn:breast_cancer"},
                                  training={"epochs": 4, "optimizer": {"lr": 0.05}, "average": {"snapshots": 3}}))
    run_dir = run(cfg, run_dir=tmp_path / "run", progress=False).run_dir
    result = runner.invoke(app, ["ensemble", str(run_dir), "--snapshots", "3", "-o", str(tmp_path / "snap")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "snap" / "ensemble.json").read_text())
    assert [m["ref"] for m in record["members"]] == [f"{run_dir}@epoch-{e}" for e in (2, 3, 4)]
    assert {m["run_dir"] for m in record["members"]} == {str(run_dir.resolve())}
    assert record["parity"]["max_abs_diff"] < 1e-4 and "bc-snapshots" in (tmp_path / "snap" / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="needs at least two"):
        ensemble([tmp_path / "snap"], snapshots=2, register=False)
