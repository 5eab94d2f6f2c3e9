"""The compression guard: each metric with its own tolerance, calibration measures, and how results read."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from modelfoundry.compress.guard import (Guard, brier_score, expected_calibration_error, failure_text, guards, judge,
                                         measure)
from modelfoundry.compress.report import ratio_words
from modelfoundry.compress.search import closest_failing
from modelfoundry.config import CompressConfig, GuardRule
from modelfoundry.errors import ConfigError


def test_a_much_worse_log_loss_fails_although_accuracy_is_unchanged():
    """The case from the issue: same accuracy, log_loss 0.013 -> 0.173."""
    rules = guards("classification", "accuracy", 0.01, None)
    assert [g.metric for g in rules] == ["accuracy", "log_loss", "ece"]
    original = {"accuracy": 0.99, "log_loss": 0.013, "ece": 0.01}
    checks = judge(rules, {"accuracy": 0.99, "log_loss": 0.173, "ece": 0.012}, original)
    assert [c["passed"] for c in checks] == [True, False, True]
    assert checks[1]["worse_by"] == pytest.approx(0.16) and checks[1]["allowed"] == pytest.approx(0.02 + 0.2 * 0.013)
    assert failure_text(checks[1]) == "log_loss 0.1730 vs 0.0130 (+0.1600 worse, allowed 0.0226)"


def test_direction_and_tolerances():
    assert Guard("accuracy", max_worse=0.01).check(0.985, 0.99)["passed"]  # 0.005 lower
    assert not Guard("accuracy", max_worse=0.01).check(0.97, 0.99)["passed"]
    assert Guard("accuracy", max_worse=0.01).check(1.0, 0.99)["worse_by"] == pytest.approx(-0.01)  # better
    assert Guard("rmse", max_worse_rel=0.05).check(10.4, 10.0)["passed"]  # 4% higher
    assert not Guard("rmse", max_worse_rel=0.05).check(10.6, 10.0)["passed"]
    assert Guard("rmse", max_worse_rel=0.05).check(9.0, 10.0)["passed"]  # lower error is better
    assert Guard("accuracy").check(0.99, 0.99)["passed"]  # zero tolerance: equal passes
    assert not Guard("log_loss", max_worse=1.0).check(float("nan"), 0.1)["passed"]  # not computable: fails
    assert Guard("mape", max_worse=0.0).check(None, None)["passed"]  # undefined for both: not judged


def test_guards_refuse_the_primary_metric_twice_and_metrics_of_another_task():
    with pytest.raises(ConfigError, match="max_drop"):
        guards("classification", "accuracy", 0.01, {"accuracy": GuardRule(max_worse=0.02)})
    with pytest.raises(ConfigError, match="rmse does not apply"):
        guards("classification", "accuracy", 0.01, {"rmse": GuardRule(max_worse=0.02)})
    assert [g.metric for g in guards("classification", "accuracy", 0.01, {})] == ["accuracy"]
    regression = guards("regression", "rmse", 0.5, None)  # the primary is not guarded twice by the defaults
    assert [(g.metric, g.max_worse, g.max_worse_rel) for g in regression] == [("rmse", 0.5, 0.0), ("mae", 0.0, 0.05)]


def test_the_schema_names_an_unknown_guard_metric():
    with pytest.raises(ValueError, match="Did you mean 'log_loss'"):
        CompressConfig(guard={"logloss": {"max_worse": 0.1}})
    with pytest.raises(ValueError):
        CompressConfig(guard={"log_loss": {"max_worse": -1}})
    with pytest.raises(ValueError):
        CompressConfig(guard={"log_loss": {"tolerance": 0.1}})  # extra keys are refused


def test_calibration_measures():
    y = np.array([0, 1, 0, 1])
    perfect = np.eye(2)[y]
    assert expected_calibration_error(y, perfect) == pytest.approx(0.0)
    assert brier_score(y, perfect) == pytest.approx(0.0)
    overconfident = np.array([[0.99, 0.01]] * 4)  # says class 0 at 99%, right half the time
    assert expected_calibration_error(y, overconfident) == pytest.approx(0.49)
    assert brier_score(y, overconfident) == pytest.approx((2 * 2 * 0.01 ** 2 + 2 * 2 * 0.99 ** 2) / 4)
    values = measure("classification", y, overconfident, lambda v: v, ["accuracy", "log_loss", "ece", "brier"])
    assert values["accuracy"] == 0.5 and values["ece"] == pytest.approx(0.49) and values["log_loss"] > 2


def test_regression_metrics_are_measured_in_target_units():
    y = np.array([0.0, 1.0, -1.0])  # standardised; the target is 10 * value + 100
    values = measure("regression", y, np.array([0.1, 1.0, -1.0]), lambda v: 10 * v + 100, ["rmse", "mae"])
    assert values["mae"] == pytest.approx(1.0 / 3) and values["rmse"] == pytest.approx(np.sqrt(1.0 / 3))


def test_the_closest_failing_variant_fails_fewest_guards_then_loses_least():
    def entry(name, drop, failed):
        return {"name": name, "metric": 0.9, "servable": True, "passed_guard": False, "failed_guards": failed,
                "guard": [{"metric": "accuracy", "worse_by": drop}]}
    entries = [entry("two", 0.0, ["log_loss", "ece"]), entry("far", 0.2, ["accuracy"]),
               entry("near", 0.05, ["accuracy"])]
    assert closest_failing(entries)["name"] == "near"
    assert closest_failing([]) is None


def test_a_speedup_below_one_reads_as_a_slowdown():
    assert ratio_words(0.97, "faster", "slower") == "1.03x slower"
    assert ratio_words(2.5, "faster", "slower") == "2.50x faster"
    assert ratio_words(1 / 0.5, "smaller", "larger") == "2.00x smaller"
    assert ratio_words(1.002, "faster", "slower") == "1.00x (no change)"


def test_the_summary_calls_a_slower_chosen_variant_slower(capsys, tmp_path):
    from modelfoundry.cli.render import print_compress_summary as _print_compress_summary

    base = {"runtime": "onnxruntime", "metric": 0.95, "metric_delta": 0.0, "latency_b1_ms": 0.1,
            "latency_b64_ms": 1.0, "speedup_b1": 1.0, "speedup_b64": 1.0, "size_bytes": 20_000, "params": 100,
            "servable": True, "passed_guard": True, "failed_guards": [], "error": None}
    chosen = {**base, "name": "ort_int8_dynamic", "latency_b1_ms": 0.103, "speedup_b1": 0.97, "speedup_b64": 2.0,
              "size_ratio": 0.5, "agreement": 1.0}
    result = SimpleNamespace(original={**base, "name": "original"}, variants=[chosen], chosen=chosen, metric="accuracy",
                             max_drop=0.01, guard=guards("classification", "accuracy", 0.01, None),
                             model_dir=tmp_path / "model", test_metrics={"accuracy": 0.95}, extras={},
                             report=tmp_path / "report.json", out_dir=tmp_path, wall_s=1.0)
    _print_compress_summary(result)
    text = " ".join(capsys.readouterr().out.split())
    assert "1.03x slower at batch 1" in text and "2.00x faster at batch 64" in text and "2.00x smaller" in text
    assert "0.97x faster" not in text
    assert "log_loss ≤ 0.02 + 20% higher" in text  # the guard's rules are in the table title


def test_the_refusal_names_the_variants_within_the_guard_rather_than_the_closest_failing_one():
    from types import SimpleNamespace

    from modelfoundry.api.compression import refusal

    failing = {"name": "ort_int8_static_qdq", "guard": [{"metric": "rmse", "passed": False, "value": 2.0,
                                                         "original": 1.0, "worse_by": 1.0, "allowed": 0.1}]}
    variants = [{"name": "ort_int8_dynamic", "passed_guard": True, "servable": True},
                {"name": "ort_fp16", "passed_guard": True, "servable": False}, {**failing, "passed_guard": False,
                                                                                "servable": True}]
    result = SimpleNamespace(chosen=None, best_failing=failing, variants=variants, report="report.md")
    message = str(refusal(result))
    assert "ort_int8_dynamic" in message and "neither faster nor smaller" in message
    assert "ort_int8_static_qdq" not in message and "ort_fp16" not in message
    only_failing = SimpleNamespace(chosen=None, best_failing=failing, variants=variants[2:], report="report.md")
    assert "the closest, ort_int8_static_qdq, fails the rmse guard" in str(refusal(only_failing))
    assert refusal(SimpleNamespace(chosen={"name": "x"})) is None
