"""The champion-challenger gate (monitor/champion.py): better by the margin on the gate metric, no worse than the
tolerance on the others, whichever way each metric points; and the pieces that feed it (the recent holdout, the
column check, the gate's metrics)."""

from __future__ import annotations

import types

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfoundry.monitor.champion import check_columns, check_holdout, gate, gate_metrics, split_recent
from modelfoundry.config import load_config
from modelfoundry.errors import ConfigError, DataError
from tests.conftest import tiny_config


def test_a_challenger_better_by_the_margin_and_within_tolerance_is_promoted():
    decision = gate({"accuracy": 0.90, "f1_macro": 0.88}, {"accuracy": 0.93, "f1_macro": 0.875}, "accuracy",
                    ["f1_macro"], margin=0.02, tolerance=0.01)
    assert decision.promote
    assert [c.passed for c in decision.checks] == [True, True]
    assert decision.reason.startswith("promoted: accuracy 0.9300 vs 0.9000 (0.0300 better, margin 0.02)")
    assert "f1_macro within tolerance 0.01" in decision.reason


def test_margin_reached_exactly_passes_despite_float_noise():
    assert gate({"accuracy": 0.95}, {"accuracy": 0.96}, "accuracy", [], margin=0.01, tolerance=0.0).promote
    assert not gate({"accuracy": 0.95}, {"accuracy": 0.959}, "accuracy", [], margin=0.01, tolerance=0.0).promote


def test_a_tie_is_never_promoted():
    decision = gate({"accuracy": 0.9, "f1_macro": 0.8}, {"accuracy": 0.9, "f1_macro": 0.9}, "accuracy",
                    ["f1_macro"], margin=0.0, tolerance=0.01)
    assert not decision.promote
    assert decision.reason == "refused: accuracy 0.9000 vs 0.9000 (equal, must be better)"


@pytest.mark.parametrize("metric", ["log_loss", "rmse", "mae"])
def test_lower_is_better_metrics_count_a_drop_as_a_gain(metric):
    better = gate({metric: 0.50}, {metric: 0.40}, metric, [], margin=0.05, tolerance=0.0)
    worse = gate({metric: 0.40}, {metric: 0.50}, metric, [], margin=0.0, tolerance=0.0)
    assert better.promote and better.checks[0].gain == pytest.approx(0.10)
    assert f"{metric} 0.4000 vs 0.5000 (0.1000 better, margin 0.05)" in better.reason
    assert not worse.promote and worse.checks[0].gain == pytest.approx(-0.10)


def test_a_worse_other_metric_beyond_tolerance_refuses_and_is_named():
    decision = gate({"accuracy": 0.90, "f1_macro": 0.90, "log_loss": 0.30},
                    {"accuracy": 0.95, "f1_macro": 0.89, "log_loss": 0.45}, "accuracy", ["f1_macro", "log_loss"],
                    margin=0.0, tolerance=0.02)
    assert not decision.promote
    assert [c.passed for c in decision.checks] == [True, True, False]  # log_loss rose by 0.15: worse
    assert "log_loss 0.4500 vs 0.3000 (0.1500 worse, tolerance 0.02)" in decision.reason
    assert "f1_macro" not in decision.reason  # only what failed is named


def test_a_metric_one_model_lacks_is_shown_but_not_judged():
    decision = gate({"accuracy": 0.8, "roc_auc": 0.9}, {"accuracy": 0.9}, "accuracy", ["roc_auc"], 0.0, 0.0)
    assert decision.promote and decision.checks[1].passed is None


def test_the_gate_metric_must_be_computable():
    with pytest.raises(DataError, match="roc_auc could not be computed"):
        gate({"accuracy": 0.8}, {"accuracy": 0.9}, "roc_auc", ["accuracy"], 0.0, 0.0)


scores = st.floats(0, 1, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(a=scores, b=scores, c=scores, d=scores, margin=st.floats(0, 0.2), tolerance=st.floats(0, 0.2),
       metric=st.sampled_from(["accuracy", "log_loss"]))
def test_two_models_never_both_beat_each_other(a, b, c, d, margin, tolerance, metric):
    other = "f1_macro" if metric == "accuracy" else "accuracy"
    first, second = {metric: a, other: c}, {metric: b, other: d}
    forward = gate(first, second, metric, [other], margin, tolerance)
    backward = gate(second, first, metric, [other], margin, tolerance)
    assert not (forward.promote and backward.promote)
    lower = metric == "log_loss"
    if forward.promote:  # promotion implies strictly better on the gate metric
        assert (b < a) if lower else (b > a)


def test_the_holdout_is_the_last_rows_of_the_file():
    frame = pd.DataFrame({"x": range(100), "target": [i % 2 for i in range(100)]})
    frame.loc[95, "target"] = None  # unlabelled: dropped before the split
    train, recent = split_recent(frame, 0.3, "target", "new.csv")
    assert len(recent) == 30 and len(train) == 69
    assert recent["x"].tolist() == [x for x in range(66, 100) if x != 95][-30:]
    assert train["x"].max() < recent["x"].min()


@settings(max_examples=100, deadline=None)
@given(labels=st.lists(st.sampled_from([0, 1, None]), min_size=30, max_size=200), share=st.floats(0.05, 0.95))
def test_the_holdout_is_always_the_latest_labelled_rows(labels, share):
    frame = pd.DataFrame({"order": range(len(labels)), "target": labels})
    labelled = frame[frame["target"].notna()]
    try:
        train, recent = split_recent(frame, share, "target", "new.csv")
    except DataError:
        n = round(len(labelled) * share)
        assert n < 10 or len(labelled) - n < 20  # refused only when too few rows remain on a side
        return
    assert len(train) + len(recent) == len(labelled) and recent["target"].notna().all()
    assert train["order"].tolist() + recent["order"].tolist() == labelled["order"].tolist()  # in file order
    assert len(recent) == round(len(labelled) * share)


def test_too_few_rows_for_a_holdout_is_refused():
    frame = pd.DataFrame({"x": range(25), "target": [0, 1] * 12 + [0]})
    with pytest.raises(DataError, match="25 labelled rows.*8 to compare on"):
        split_recent(frame, 0.3, "target", "new.csv")


def test_roc_auc_needs_two_classes_in_the_holdout():
    one_class = pd.DataFrame({"target": [1] * 12})
    with pytest.raises(DataError, match="only class '1'.*roc_auc"):
        check_holdout(one_class, "target", "roc_auc", "new.csv")
    check_holdout(one_class, "target", "accuracy", "new.csv")  # accuracy needs one class only


def saved_model(**sections):
    config = load_config(tiny_config(**sections))
    record = types.SimpleNamespace(target="target")
    return types.SimpleNamespace(config=config, task="classification", record=record,
                                 preprocessor=types.SimpleNamespace(columns=["a", "b", "c"]))


def test_missing_columns_are_named():
    with pytest.raises(DataError, match="lacks 2 column.*: b, target"):
        check_columns(saved_model(), pd.DataFrame({"a": [1], "c": [2]}), "new.csv")


def test_the_gate_metrics_default_to_the_headline_list():
    assert gate_metrics(saved_model(), None) == ("accuracy", ["f1_macro", "roc_auc"])
    listed = saved_model(evaluation={"metrics": ["f1_macro", "log_loss", "accuracy"]})
    assert gate_metrics(listed, None) == ("f1_macro", ["log_loss", "accuracy"])
    assert gate_metrics(listed, "accuracy") == ("accuracy", ["f1_macro", "log_loss"])
    with pytest.raises(ConfigError, match="rmse does not apply to a classification model"):
        gate_metrics(listed, "rmse")


def test_a_refusal_in_the_alias_history_is_not_a_move_rollback_replays():
    from modelfoundry.registry import _alias_stack

    def entry(action, to, alias="production"):
        return {"alias": alias, "action": action, "to": to}

    entries = [entry("promote", "1"), entry("refuse", "2"), entry("promote", "2", "challenger"), entry("promote", "3"),
               entry("refuse", "4")]
    assert _alias_stack(entries, "production") == ["1", "3"]  # rollback from 3 goes to 1, never to a refused 2 or 4
