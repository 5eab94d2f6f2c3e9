"""The decision threshold: the vectorised tuner, the positive class, the saved record and the evaluation at it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfoundry.artifacts.records import ModelRecord, ThresholdRecord, decide_classes
from modelfoundry.config import EvaluationConfig
from modelfoundry.config.evaluation import ThresholdConfig
from modelfoundry.errors import ConfigError, RunDirError
from modelfoundry.evaluate.threshold import positive_index, threshold_record, tune_threshold

# 3 positives, 5 negatives: every positive is above every negative only from 0.35 down to 0.31
POSITIVE = np.array([1, 0, 1, 1, 0, 0, 0, 0], dtype=bool)
PROBA = np.array([0.9, 0.6, 0.4, 0.35, 0.3, 0.2, 0.1, 0.05])


def at(threshold: float, positive: np.ndarray = POSITIVE, proba: np.ndarray = PROBA) -> dict[str, float]:
    """The metrics of the rule P >= threshold, counted directly (balanced accuracy: the mean recall of the
    classes present, as scikit-learn's)."""
    pred = proba >= threshold
    tp, fp = float((pred & positive).sum()), float((pred & ~positive).sum())
    n_pos, n_neg = float(positive.sum()), float((~positive).sum())
    recalls = [r for r, n in ((tp / n_pos if n_pos else 0, n_pos), ((n_neg - fp) / n_neg if n_neg else 0, n_neg)) if n]
    return {"f1": 2 * tp / (tp + fp + n_pos) if tp + fp + n_pos else 0.0, "balanced_accuracy": float(np.mean(recalls)),
            "precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / n_pos if n_pos else 0.0}


def test_f1_and_balanced_accuracy_find_the_known_best_threshold():
    tuned = tune_threshold(POSITIVE, PROBA, "f1")
    # at 0.35: tp 3, fp 1 -> F1 6/7; at 0.5 only one positive is found (F1 0.4)
    assert tuned.value == 0.35 and tuned.validation == pytest.approx(6 / 7) and tuned.at_default == pytest.approx(0.4)
    balanced = tune_threshold(POSITIVE, PROBA, "balanced_accuracy")
    assert balanced.value == 0.35 and balanced.validation == pytest.approx((1 + 4 / 5) / 2)


def test_recall_at_precision_respects_the_floor_and_says_when_none_reaches_it():
    tuned = tune_threshold(POSITIVE, PROBA, "recall_at_precision", min_value=0.75)
    assert tuned.value == 0.35 and tuned.validation == 1.0 and tuned.reached  # precision 3/4 there
    strict = tune_threshold(POSITIVE, PROBA, "recall_at_precision", min_value=0.9)
    assert strict.value == 0.9 and strict.validation == pytest.approx(1 / 3) and strict.reached  # only the top row
    inverted = ~POSITIVE  # the top row is now a negative: precision 1.0 is out of reach
    missed = tune_threshold(inverted, PROBA, "recall_at_precision", min_value=1.0)
    assert not missed.reached and at(missed.value, inverted)["precision"] == max(
        at(t, inverted)["precision"] for t in PROBA)  # the closest to the floor


def test_precision_at_recall_is_the_best_precision_above_the_recall_floor():
    tuned = tune_threshold(POSITIVE, PROBA, "precision_at_recall", min_value=0.6)
    assert tuned.value == 0.35 and tuned.validation == pytest.approx(3 / 4)  # 0.4 also has recall 2/3 >= 0.6,
    assert at(0.4)["precision"] == pytest.approx(2 / 3)  # but less precision
    assert tune_threshold(POSITIVE, PROBA, "precision_at_recall", min_value=0.3).value == 0.9  # the top row alone


@settings(max_examples=60, deadline=None)
@given(data=st.lists(st.tuples(st.booleans(), st.floats(0, 1, allow_nan=False)), min_size=1, max_size=60),
       metric=st.sampled_from(["f1", "balanced_accuracy", "recall_at_precision", "precision_at_recall"]),
       floor=st.floats(0.05, 1.0))
def test_random_probabilities_give_a_threshold_in_0_1_never_worse_than_0_5(data, metric, floor):
    positive = np.array([d[0] for d in data])
    proba = np.array([d[1] for d in data])
    tuned = tune_threshold(positive, proba, metric, floor)
    assert 0 <= tuned.value <= 1
    mine, default = at(tuned.value, positive, proba), at(0.5, positive, proba)
    name = {"recall_at_precision": "recall", "precision_at_recall": "precision"}.get(metric, metric)
    assert tuned.validation == pytest.approx(mine[name], abs=1e-12)  # the reported value is real
    assert tuned.at_default == pytest.approx(default[name], abs=1e-12)
    if metric in ("f1", "balanced_accuracy"):
        assert mine[name] >= default[name] - 1e-12
        best = max(at(t, positive, proba)[name] for t in np.append(proba, 0.5))  # brute force
        assert mine[name] == pytest.approx(best)
    elif metric in ("recall_at_precision", "precision_at_recall"):
        other = "precision" if metric == "recall_at_precision" else "recall"
        meets = [t for t in np.append(proba, 0.5) if at(t, positive, proba)[other] >= floor - 1e-12]
        assert tuned.reached == bool(meets)
        if meets:  # the best among the thresholds meeting the floor, and at least as good as 0.5 when 0.5 does
            assert mine[other] >= floor - 1e-12
            assert mine[name] == pytest.approx(max(at(t, positive, proba)[name] for t in meets))


def test_the_positive_class_is_the_configured_label_or_the_rarer_one():
    counts = np.array([30, 70])
    assert positive_index(ThresholdConfig(metric="f1"), [0, 1], counts, "target") == 0
    assert positive_index(ThresholdConfig(metric="f1", positive=1), [0, 1], counts, "target") == 1
    assert positive_index(ThresholdConfig(metric="f1", positive="yes"), ["no", "yes"], counts, "t") == 1
    assert positive_index(ThresholdConfig(metric="f1", positive=True), [False, True], counts, "t") == 1
    with pytest.raises(ConfigError, match="'maybe' is not a class of target 't'") as error:
        positive_index(ThresholdConfig(metric="f1", positive="maybe"), ["no", "yes"], counts, "t")
    assert "['no', 'yes']" in error.value.message
    with pytest.raises(ConfigError, match="has 3 classes") as error:
        positive_index(ThresholdConfig(metric="f1"), ["a", "b", "c"], np.array([1, 2, 3]), "species")
    assert "Remove evaluation.threshold" in error.value.hint


def test_the_record_is_what_model_json_carries_and_decides_as_tuned():
    record = threshold_record(ThresholdConfig(metric="f1"), ["benign", "malignant"], np.array([80, 20]),
                              np.where(POSITIVE, 1, 0), np.column_stack([1 - PROBA, PROBA]), "diagnosis")
    assert record["positive"] == "malignant" and record["positive_index"] == 1 and record["value"] == 0.35
    assert record["validation"] == pytest.approx(6 / 7) and record["validation_at_0.5"] == pytest.approx(0.4)
    json.dumps(record)  # plain JSON
    proba = np.array([[0.5, 0.5], [0.64, 0.36], [0.66, 0.34], [0.9, 0.1]])
    np.testing.assert_array_equal(decide_classes(proba, record), [1, 1, 0, 0])
    np.testing.assert_array_equal(decide_classes(proba, None), [0, 0, 0, 0])  # argmax
    first = {**record, "positive_index": 0, "value": 0.8}  # the positive class first: P(class 0) >= 0.8
    np.testing.assert_array_equal(decide_classes(proba, first), [1, 1, 1, 0])
    spec = {"name": "m", "task": "classification", "n_outputs": 2, "input_shape": [3], "threshold": record}
    assert ModelRecord.from_json(spec).decision.value == 0.35


@pytest.mark.parametrize("bad", [{"value": 1.5, "positive_index": 0}, {"value": 0.3, "positive_index": 2},
                                 {"value": "high", "positive_index": 0}, {"positive_index": 0}])
def test_a_malformed_threshold_in_model_json_is_a_run_dir_error(bad):
    spec = {"name": "m", "task": "classification", "n_outputs": 2, "input_shape": [3], "threshold": bad}
    with pytest.raises(RunDirError, match="threshold"):
        ModelRecord.from_json(spec, "runs/x/model/model.json")
    with pytest.raises(RunDirError):
        ThresholdRecord.from_json(bad).decide(np.zeros((1, 2)))


def test_the_evaluation_takes_class_metrics_at_the_threshold_and_reports_both(tmp_path):
    from types import SimpleNamespace

    from modelfoundry.evaluate.evaluation import evaluate_outputs

    y = np.where(POSITIVE, 1, 0)
    output = np.column_stack([1 - PROBA, PROBA])
    record = {"value": 0.35, "positive": 1, "positive_index": 1, "metric": "f1", "min_value": 0.9,
              "validation": 0.9, "validation_at_0.5": 0.5, "reached": True}
    encoder = SimpleNamespace(classes_=[0, 1])
    common = dict(task="classification", y_true=y, output=output, rows=np.arange(8), target_encoder=encoder,
                  cfg=EvaluationConfig(plots=False))
    tuned = evaluate_outputs(**common, out_dir=tmp_path / "tuned", threshold=record)
    plain = evaluate_outputs(**common, out_dir=tmp_path / "plain")
    assert tuned["f1_positive"] == pytest.approx(6 / 7) and tuned["recall_positive"] == 1.0
    assert tuned["accuracy"] == pytest.approx(7 / 8) and plain["accuracy"] == pytest.approx(5 / 8)
    assert tuned["roc_auc"] == plain["roc_auc"] and tuned["log_loss"] == plain["log_loss"]  # threshold-free
    assert tuned["decision_threshold"] == 0.35 and "decision_threshold" not in plain
    report = (tmp_path / "tuned" / "report.md").read_text()
    assert "## Decision threshold" in report and "| recall_positive | 0.3333 | 1.0000 |" in report
    assert report.index("## Decision threshold") < report.index("## All metrics")
    matrix = json.loads((tmp_path / "tuned" / "confusion_matrix.json").read_text())["matrix"]
    assert matrix == [[4, 1], [0, 3]]  # the confusion matrix of the decisions made
    wrong = json.loads((tmp_path / "tuned" / "errors.json").read_text())
    assert [(e["row"], e["predicted"]) for e in wrong] == [(1, "1")]  # the one row wrong at the threshold
    assert len(json.loads((tmp_path / "plain" / "errors.json").read_text())) == 3
