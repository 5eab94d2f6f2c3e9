"""Metrics against scikit-learn's definitions, baselines, error analysis and the eval directory."""

import json

import numpy as np
import pytest

from modelfoundry.config import EvaluationConfig
from modelfoundry.data.transform import TargetEncoder
from modelfoundry.evaluate.baselines import baseline_metrics
from modelfoundry.evaluate.evaluation import evaluate_outputs
from modelfoundry.evaluate.metrics import classification_metrics, regression_metrics
from modelfoundry.evaluate.report import confused_pairs, hardest_examples


def test_perfect_and_known_classification_metrics():
    y = np.array([0, 1, 2, 2])
    perfect = np.eye(3)[y] * 0.9 + 0.1 / 3
    m = classification_metrics(y, perfect, top_k=[2])
    assert m["accuracy"] == 1 and m["f1_macro"] == 1 and m["roc_auc"] == 1 and m["top_2_accuracy"] == 1
    wrong = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4], [0.1, 0.2, 0.7]])  # row 2 mispredicted
    m = classification_metrics(y, wrong, top_k=[2, 3])
    assert m["accuracy"] == 0.75 and m["top_2_accuracy"] == 1.0 and "top_3_accuracy" not in m
    assert m["recall_macro"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.6, 0.7, 0.4, 0.7])))


def test_binary_roc_auc_uses_the_positive_class():
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    assert classification_metrics(y, proba, [])["roc_auc"] == pytest.approx(0.75)


def test_roc_auc_with_two_of_three_classes_present_scores_the_two():
    """A split (a retrain holdout) holding 2 of 3 classes: ROC-AUC of the two, renormalised, not a crash."""
    y = np.array([0, 2, 0, 2])
    proba = np.array([[0.5, 0.4, 0.1], [0.2, 0.3, 0.5], [0.3, 0.6, 0.1], [0.1, 0.1, 0.8]])
    # class 2's renormalised score p2 / (p0 + p2): 0.167, 0.714, 0.25, 0.889 -> every class-2 row above every class-0 row
    assert classification_metrics(y, proba, [])["roc_auc"] == pytest.approx(1.0)
    proba[1] = [0.6, 0.3, 0.1]  # now one class-2 row scores 0.143, below both class-0 rows
    assert classification_metrics(y, proba, [])["roc_auc"] == pytest.approx(0.5)


def test_regression_metrics():
    m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert m["mae"] == pytest.approx(2 / 3) and m["rmse"] == pytest.approx(np.sqrt(4 / 3))
    assert m["r2"] == pytest.approx(1 - 4 / 2)


def test_error_analysis_lists_the_worst_rows():
    y = np.array([0, 1, 1])
    proba = np.array([[0.9, 0.1], [0.95, 0.05], [0.6, 0.4]])
    worst = hardest_examples("classification", y, proba, np.array([10, 11, 12]), ["a", "b"], 5)
    assert [w["row"] for w in worst] == [11, 12] and worst[0]["predicted"] == "a" and worst[0]["true"] == "b"
    cm = np.array([[5, 0, 3], [1, 4, 0], [0, 0, 2]])
    assert confused_pairs(cm, ["x", "y", "z"]) == [("x", "z", 3), ("y", "x", 1)]


def test_baselines_are_fitted_on_the_same_split():
    rng = np.random.default_rng(0)
    X = {s: {"numeric": rng.normal(size=(n, 3)).astype(np.float32)} for s, n in [("train", 200), ("test", 100)]}
    y = {s: (x["numeric"][:, 0] > 0).astype(np.int64) for s, x in X.items()}
    out = baseline_metrics("classification", X, y, 2, None, [])
    assert out["baseline_linear_accuracy"] > 0.9 and out["baseline_dummy_roc_auc"] == 0.5
    assert 0.35 < out["baseline_dummy_accuracy"] < 0.65
    # every float input is a feature of the linear baseline; token ids are not
    mixed = {s: {"image": x["numeric"][:, :1].reshape(-1, 1, 1, 1) * 0, "numeric": x["numeric"],
                 "tokens": np.zeros((len(x["numeric"]), 4), np.int64)} for s, x in X.items()}
    assert baseline_metrics("classification", mixed, y, 2, None, []) == pytest.approx(out, abs=1e-6)


def test_evaluation_writes_flat_metrics_plots_and_report(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 60)
    proba = rng.dirichlet(np.ones(3), 60)
    proba[np.arange(40), y[:40]] += 1  # the last 20 rows are guesses, some wrong
    proba /= proba.sum(1, keepdims=True)
    encoder = TargetEncoder("classification")
    encoder.classes_ = ["cat", "dog", "eel"]
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_accuracy": 0.5 + e / 20} for e in (1, 2, 3)]
    metrics = evaluate_outputs(task="classification", y_true=y, output=proba, rows=np.arange(60) + 100,
                               target_encoder=encoder, cfg=EvaluationConfig(), out_dir=tmp_path,
                               history=history, baselines={"baseline_linear_accuracy": 0.5})
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == metrics and all(isinstance(v, float) for v in on_disk.values())
    assert {"accuracy", "f1_macro", "roc_auc", "log_loss", "baseline_linear_accuracy"} <= set(on_disk)
    for name in ("curves.png", "confusion_matrix.png", "roc.png", "report.md", "errors.json"):
        assert (tmp_path / name).stat().st_size > 0
    report = (tmp_path / "report.md").read_text()
    assert "| accuracy | " in report and "0.5000" in report and "Hardest examples (test split)" in report
    assert sum(map(sum, json.loads((tmp_path / "confusion_matrix.json").read_text())["matrix"])) == 60
