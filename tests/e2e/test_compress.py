"""`foundry compress`: variants measured and judged on the validation split, the chosen one saved as a model
that evaluate, predict, export and serve take, and the guard refusing when nothing is good enough."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from modelfoundry.api.compression import compress
from modelfoundry.api.evaluation import evaluate
from modelfoundry.api.exporting import export
from modelfoundry.api.prediction import predict
from modelfoundry.api.training import run
from modelfoundry.cli import app
from modelfoundry.config import load_config
from modelfoundry.data.sources import load_source
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow  # each test compresses a trained model: seconds to tens of seconds

runner = CliRunner()
ENTRY_KEYS = {"name", "metric", "metric_delta", "latency_b1_ms", "latency_b64_ms", "size_bytes", "params",
              "speedup_b1", "size_ratio", "passed_guard"}


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compress")
    cfg = load_config(tiny_config(name="bc", data={"source": "sklearn:breast_cancer"},
                                  model={"name": "mlp", "hidden": [64, 32], "batch_norm": True},
                                  training={"epochs": 12, "batch_size": 32, "num_threads": 1},
                                  compress={"repeats": 5, "finetune_epochs": 3, "keep": [0.5], "sparsity": [0.5],
                                            "distill": {"epochs": 8}}))
    run(cfg, run_dir=tmp / "run", progress=False)
    return tmp / "run"


@pytest.fixture(scope="module")
def result(parent, tmp_path_factory):
    """Size first: fp16 and int8 graphs are always smaller, so a variant is chosen whatever the timings."""
    out = tmp_path_factory.mktemp("out") / "c"
    return compress(str(parent), prefer="size", max_drop=0.05, out=out, progress=False,
                    variants=["ort_fp16", "ort_int8_dynamic", "prune_structured", "prune_unstructured", "distill",
                              "torch_int8_eager"])


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_report_has_every_variant_measured_and_judged(result):
    report = json.loads(result.report.read_text())
    assert set(report) >= {"original", "variants", "chosen"}
    names = [v["name"] for v in report["variants"]]
    assert {"ort_fp16", "ort_int8_dynamic", "prune_structured_keep0.5", "prune_unstructured_0.5", "distill"} <= set(names)
    for entry in report["variants"]:
        assert ENTRY_KEYS <= set(entry), entry["name"]
        if entry["error"] is None:
            assert entry["latency_b1_ms"] > 0 and entry["latency_b64_ms"] > 0 and entry["size_bytes"] > 0
            assert entry["metric_delta"] == pytest.approx(entry["metric"] - report["original"]["metric"])
            checks = {c["metric"]: c for c in entry["guard"]}
            assert list(checks) == ["accuracy", "log_loss", "ece"], entry["name"]  # primary first, then defaults
            original = report["original"]["metrics"]
            assert checks["accuracy"]["passed"] == (original["accuracy"] - entry["metric"] <= 0.05 + 1e-12)
            rise = entry["metrics"]["log_loss"] - original["log_loss"]
            assert checks["log_loss"]["passed"] == (rise <= 0.02 + 0.2 * original["log_loss"] + 1e-12)
            assert checks["ece"]["passed"] == (entry["metrics"]["ece"] - original["ece"] <= 0.03 + 1e-12)
            assert entry["passed_guard"] == all(c["passed"] for c in checks.values())
            assert entry["failed_guards"] == [name for name, c in checks.items() if not c["passed"]]
    assert report["guard"] == {"accuracy": {"max_worse": 0.05, "max_worse_rel": 0.0},
                               "log_loss": {"max_worse": 0.02, "max_worse_rel": 0.2},
                               "ece": {"max_worse": 0.03, "max_worse_rel": 0.0}}
    by_name = {v["name"]: v for v in report["variants"]}
    assert by_name["prune_structured_keep0.5"]["params"] < report["original"]["params"]  # really smaller
    assert by_name["distill"]["params"] < report["original"]["params"]
    assert by_name["ort_int8_dynamic"]["size_ratio"] < 0.6
    eager = next(v for v in report["variants"] if v["name"].startswith("torch_int8_eager"))
    assert eager["servable"] is False and "deprecated" in eager["name"]
    assert (result.out_dir / "scatter.png").stat().st_size > 1000


def test_the_chosen_variant_is_the_smallest_within_the_guard(result):
    eligible = [v for v in result.variants if v["passed_guard"] and v["servable"]]
    assert result.chosen is not None and result.chosen["name"] == min(eligible, key=lambda v: v["size_ratio"])["name"]
    assert result.model_dir.is_dir() and result.test_metrics["accuracy"] > 0.85


def test_the_chosen_model_works_with_evaluate_predict_export_and_serve(result, parent, tmp_path):
    from modelfoundry.config import ServeConfig
    from modelfoundry.serve.app import create_app
    from modelfoundry.serve.store import RunDirStore

    rows = load_source("sklearn:breast_cancer").drop(columns="target").head(40)
    rows.to_csv(tmp_path / "rows.csv", index=False)
    mine, theirs = predict(result.model_dir, tmp_path / "rows.csv"), predict(parent, tmp_path / "rows.csv")
    assert (mine["prediction"] == theirs["prediction"]).mean() >= 0.95  # predicts like the original
    assert evaluate(result.model_dir).metrics["accuracy"] == pytest.approx(result.test_metrics["accuracy"])
    exported = export(result.model_dir, tmp_path / "onnx")
    assert (tmp_path / "onnx" / "model.onnx").is_file() and exported.out_dir == tmp_path / "onnx"
    with TestClient(create_app(ServeConfig(), RunDirStore(result.model_dir))) as client:
        body = client.post("/predict", json={"records": rows.head(5).to_dict(orient="records")}).json()
    assert body["predictions"] == mine["prediction"].head(5).tolist()  # served as foundry predict predicts


def test_the_guard_refuses_and_leaves_the_original_untouched(parent, tmp_path):
    weights = digest(parent / "model" / "weights.pt")
    config = yaml.safe_load((parent / "config.yaml").read_text())
    config["compress"].update(sparsity=[0.99], finetune_epochs=0)
    (parent / "config.yaml").write_text(yaml.safe_dump(config))  # the run's own compress: section is used
    try:
        out = runner.invoke(app, ["compress", str(parent), "--only", "prune_unstructured", "--max-drop", "0",
                                  "--out", str(tmp_path / "c"), "--no-progress"])
    finally:
        config["compress"].update(sparsity=[0.5], finetune_epochs=3)
        (parent / "config.yaml").write_text(yaml.safe_dump(config))
    assert out.exit_code == 9, out.output
    assert "No compressed variant was kept" in out.output and "prune_unstructured_0.99" in out.output
    assert "Traceback" not in out.output
    assert digest(parent / "model" / "weights.pt") == weights
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    assert report["chosen"] is None and not (tmp_path / "c" / "model").exists()


def test_bad_options_are_refused_before_any_work(parent, tmp_path):
    out = runner.invoke(app, ["compress", str(parent), "--only", "int4", "--out", str(tmp_path / "c")])
    assert out.exit_code == 2 and "int4" in out.output and "Traceback" not in out.output
    out = runner.invoke(app, ["compress", str(parent), "--prefer", "speed"])
    assert out.exit_code == 2 and "latency" in out.output


def test_agreement_is_reported_for_every_measured_variant(result):
    measured = [entry for entry in result.variants if entry["error"] is None]
    assert len(measured) >= 5, [(e["name"], e["error"]) for e in result.variants]  # not vacuous: most were measured
    for entry in measured:
        assert entry["agreement"] is not None and 0.0 <= entry["agreement"] <= 1.0, entry["name"]


def test_predictions_of_an_onnx_variant_come_from_its_graph(result, tmp_path):
    """An int8/fp16 variant's model.json says runtime onnx, and evaluate/predict run that graph."""
    from modelfoundry.models.inference import predict_outputs
    from modelfoundry.models.onnx_graph import ort_session
    from modelfoundry.rundir import load_model

    spec = json.loads((result.model_dir / "model" / "model.json").read_text())
    # prefer=size: an fp16/int8 graph (alone or stacked on pruning) is smaller than any torch variant
    assert spec.get("runtime") == "onnx", (result.chosen["name"], spec)
    saved = load_model(result.model_dir)
    assert type(saved.model).__name__ == "OnnxGraph"
    assert not (result.model_dir / "model" / "weights.pt").exists()
    X = saved.record.input_spec.example(3, seed=0)  # the named inputs the parent was trained on
    assert list(X) == ["numeric"]
    proba = predict_outputs(saved.model, X, "classification")
    assert proba.shape == (3, 2) and np.allclose(proba.sum(1), 1.0, atol=1e-4)
    session = ort_session(result.model_dir / "model" / "onnx" / "model.onnx")
    graph = session.run(None, {node.name: X[node.name] for node in session.get_inputs()})[0]  # one input per name
    assert np.allclose(proba, graph, atol=1e-5)  # what predict returns is what the saved graph computes


def _paths(tree, key=""):
    """(key, value) for every string in report.json stored under a key naming a directory or run."""
    if isinstance(tree, dict):
        return [p for k, v in tree.items() for p in _paths(v, k)]
    if isinstance(tree, list):
        return [p for v in tree for p in _paths(v, key)]
    return [(key, tree)] if isinstance(tree, str) and (key.endswith("dir") or key.endswith("run")) else []


def test_every_path_in_the_report_exists_after_the_command(result):
    from pathlib import Path

    report = json.loads(result.report.read_text())
    paths = _paths(report)
    assert ("model_dir", str(result.model_dir.resolve())) in paths
    for key, value in paths:
        assert Path(value).is_absolute() and Path(value).exists(), (key, value)
    chosen = [v for v in report["variants"] if v["run_dir"] is not None]
    assert [v["name"] for v in chosen] == [report["chosen"]["name"]]  # the others' work folders are gone
    assert not (result.out_dir / ".work").exists()


def _with_compress_section(parent, section, args):
    """Run `foundry compress PARENT ARGS` with the run's own compress: section changed for the call."""
    config = yaml.safe_load((parent / "config.yaml").read_text())
    saved = dict(config["compress"])
    config["compress"].update(section)
    (parent / "config.yaml").write_text(yaml.safe_dump(config))
    try:
        return runner.invoke(app, ["compress", str(parent), *map(str, args), "--no-progress"])
    finally:
        config["compress"] = saved
        (parent / "config.yaml").write_text(yaml.safe_dump(config))


def test_a_variant_much_worse_on_log_loss_is_refused_though_its_accuracy_passes(parent, tmp_path):
    """A barely trained student keeps accuracy within a loose guard but its probabilities are far worse:
    the log_loss guard refuses it, and the message and table say which guard failed."""
    out = _with_compress_section(parent, {"distill": {"epochs": 1, "shrink": 0.25}},
                                 ["--only", "distill", "--max-drop", "1", "--prefer", "size", "--out", tmp_path / "c"])
    assert out.exit_code == 9, out.output
    text = " ".join(out.output.split())
    assert "the closest, distill, fails the log_loss" in text and "Traceback" not in out.output
    assert "FAIL log_loss" in text and re.search(r"log_loss \d\.\d{4} vs \d\.\d{4} \(\+\d\.\d{4} worse", text)
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    distilled = report["variants"][0]
    checks = {c["metric"]: c for c in distilled["guard"]}
    assert checks["accuracy"]["passed"] and not checks["log_loss"]["passed"]
    assert distilled["metrics"]["log_loss"] > 1.2 * report["original"]["metrics"]["log_loss"] + 0.02
    assert report["chosen"] is None and report["best_failing"]["name"] == "distill"
    assert "log_loss" in report["best_failing"]["failed_guards"]


def test_each_guard_has_its_own_configurable_tolerance(parent, tmp_path):
    """The same student passes once compress.guard allows its log_loss; an empty guard keeps only max_drop."""
    out = _with_compress_section(parent, {"distill": {"epochs": 1, "shrink": 0.25},
                                          "guard": {"log_loss": {"max_worse_rel": 100.0}}},
                                 ["--only", "distill", "--max-drop", "1", "--prefer", "size", "--out", tmp_path / "c"])
    assert out.exit_code == 0, out.output
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    assert report["chosen"]["name"] == "distill"
    assert [c["metric"] for c in report["chosen"]["guard"]] == ["accuracy", "log_loss"]  # no ece: not listed
    out = _with_compress_section(parent, {"guard": {"accuracy": {"max_worse": 0.1}}},
                                 ["--only", "distill", "--out", tmp_path / "d"])
    assert out.exit_code == 2 and "max_drop" in out.output and "Traceback" not in out.output
    out = _with_compress_section(parent, {"guard": {"rmse": {"max_worse": 0.1}}},
                                 ["--only", "distill", "--out", tmp_path / "e"])
    assert out.exit_code == 2 and "rmse does not apply" in " ".join(out.output.split())


def test_compressing_a_registered_model_tags_its_parent_version(tmp_path, monkeypatch):
    """By run directory or by reference, the compressed version records the version it came from."""
    from modelfoundry.registry import show

    uri = f"sqlite:///{tmp_path / 'foundry.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # the download cache of NAME/VERSION
    tracking = {"enabled": True, "uri": uri, "artifacts": str(tmp_path / "mlartifacts")}
    cfg = load_config(tiny_config(name="wide", tracking=tracking, model={"name": "mlp", "hidden": [256, 128]},
                                  compress={"repeats": 5}))
    first = run(cfg, run_dir=tmp_path / "run", progress=False)
    assert first.extras["registry"]["version"] == "1"
    options = {"prefer": "size", "max_drop": 1.0, "variants": ["ort_fp16"], "progress": False}
    by_dir = compress(tmp_path / "run", out=tmp_path / "c1", **options)  # fp16: always smaller
    by_ref = compress("wide/1", out=tmp_path / "c2", **options)
    for result in (by_dir, by_ref):
        version = result.extras["registry"]["version"]
        tags = show(f"wide/{version}", uri)["tags"]
        assert tags["foundry.parent_version"] == "1", (version, tags)
        assert json.loads(tags["foundry.compression"]) == {"method": "ort_fp16"}


def test_a_regression_model_is_guarded_on_its_errors_in_target_units(tmp_path):
    cfg = load_config(tiny_config(name="diab", data={"source": "sklearn:diabetes", "task": "regression"},
                                  model={"name": "mlp", "hidden": [256, 128]}, training={"epochs": 3},
                                  compress={"repeats": 5}))
    run(cfg, run_dir=tmp_path / "run", progress=False)
    result = compress(tmp_path / "run", prefer="size", max_drop=1.0, variants=["ort_fp16"], out=tmp_path / "c",
                      progress=False)
    fp16 = next(v for v in result.variants if v["name"] == "ort_fp16")
    assert [c["metric"] for c in fp16["guard"]] == ["r2", "rmse", "mae"]
    rmse = next(c for c in fp16["guard"] if c["metric"] == "rmse")
    assert rmse["original"] > 10  # diabetes progression is in the tens: target units, not standardised
    assert rmse["allowed"] == pytest.approx(0.05 * rmse["original"])
    assert rmse["passed"] == (rmse["value"] - rmse["original"] <= rmse["allowed"] + 1e-12)


def test_a_failed_search_leaves_no_output_folder_behind(parent, tmp_path, monkeypatch):
    import modelfoundry.compress.search as search_module

    def failing(bench, out_dir, on_step=None):
        (bench.work_dir / "original").mkdir(parents=True)  # some work was done when it failed
        raise RuntimeError("boom")

    monkeypatch.setattr(search_module, "search", failing)
    with pytest.raises(RuntimeError, match="boom"):
        compress(parent, out=tmp_path / "c", progress=False, variants=["ort_fp16"])
    assert not (tmp_path / "c").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made is kept, without the work folder
    with pytest.raises(RuntimeError, match="boom"):
        compress(parent, out=tmp_path / "mine", progress=False, variants=["ort_fp16"])
    assert (tmp_path / "mine").is_dir() and not (tmp_path / "mine" / ".work").exists()
