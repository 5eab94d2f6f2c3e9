"""Ensemble maths on hand-made outputs, the combined ONNX graph against it, and members refused clearly."""

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from modelfoundry.ensemble.combine import VOTE_TIE, Combination, combine, member_weights
from modelfoundry.ensemble.members import Member, check_members
from modelfoundry.errors import ConfigError, DataError

P1 = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]])
P2 = np.array([[0.6, 0.4], [0.7, 0.3], [0.45, 0.55]])
P3 = np.array([[0.2, 0.8], [0.8, 0.2], [0.1, 0.9]])


def test_average_is_the_weighted_mean_of_probabilities():
    out = combine("average", "classification", member_weights([3, 1], 2, "average")).apply([P1, P2])
    np.testing.assert_allclose(out, 0.75 * P1 + 0.25 * P2)
    equal = combine("average", "classification", member_weights(None, 3, "average")).apply([P1, P2, P3])
    np.testing.assert_allclose(equal, (P1 + P2 + P3) / 3)


def test_vote_takes_the_majority_and_breaks_ties_by_mean_probability():
    out = combine("vote", "classification", member_weights(None, 3, "vote")).apply([P1, P2, P3])
    # row 0: votes 0,0,1 -> 0; row 1: votes 1,0,0 -> 0 although P1 is confident; row 2: 1,1,1 -> 1
    assert out.argmax(1).tolist() == [0, 0, 1]
    np.testing.assert_allclose(out.sum(1), 1.0)
    np.testing.assert_allclose(out[1], (np.array([2 / 3, 1 / 3]) + VOTE_TIE * (P1[1] + P2[1] + P3[1]) / 3)
                               / (1 + VOTE_TIE))
    tie = combine("vote", "classification", [0.5, 0.5]).apply([np.array([[0.55, 0.45]]), np.array([[0.1, 0.9]])])
    assert tie.argmax(1).tolist() == [1]  # one vote each: the mean probability (0.325, 0.675) decides


def test_regression_average_and_stack():
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([3.0, 2.0, 5.0, 4.0])
    np.testing.assert_allclose(combine("average", "regression", [0.5, 0.5]).apply([a, b]), [2, 2, 4, 4])
    truth = 0.25 * a + 0.75 * b + 1.0  # a meta-model can recover (ridge shrinks it a little)
    stack = combine("stack", "regression", [0.5, 0.5], [a, b], truth)
    assert np.abs(stack.apply([a, b]) - truth).max() < 0.5
    assert stack.coef[1][0] > stack.coef[0][0]


def test_stack_learns_to_trust_the_informative_member():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    good = np.eye(3)[y] * 0.7 + 0.1  # right most of the time
    noise = rng.dirichlet(np.ones(3), 300)  # knows nothing
    stack = combine("stack", "classification", [0.5, 0.5], [noise, good], y)
    out = stack.apply([noise, good])
    assert (out.argmax(1) == y).mean() == 1.0 and np.allclose(out.sum(1), 1.0)
    coef = np.abs(np.asarray(stack.coef))
    assert coef[3:].sum() > 3 * coef[:3].sum()  # the good member's coefficients dominate


def test_stack_binary_and_an_absent_class_keep_every_column():
    y = np.array([0, 2, 0, 2, 0, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]] * 3)
    stack = combine("stack", "classification", [0.5, 0.5], [probs, probs], y)
    out = stack.apply([probs, probs])
    assert out.shape == (6, 3) and out[:, 1].max() < 1e-6 and out.argmax(1).tolist() == y.tolist()
    restored = Combination.from_json(stack.to_json())
    np.testing.assert_allclose(restored.apply([probs, probs]), out)


@pytest.mark.parametrize("weights, n, method, match", [
    ([1.0], 2, "average", "1 weight"), ([1.0, -1.0], 2, "average", "non-negative"), ([0, 0], 2, "vote", "not all 0"),
    ([0.5, 0.5], 2, "stack", "stacking fits its own")])
def test_bad_weights_are_refused(weights, n, method, match):
    with pytest.raises(ConfigError, match=match):
        member_weights(weights, n, method)


def test_unknown_method_vote_on_regression_and_stack_without_validation_are_refused():
    with pytest.raises(ConfigError, match="Unknown --method 'mean'"):
        combine("mean", "classification", [0.5, 0.5])
    with pytest.raises(ConfigError, match="needs classifiers"):
        combine("vote", "regression", [0.5, 0.5])
    with pytest.raises(DataError, match="validation split"):
        combine("stack", "classification", [0.5, 0.5], [P1[:0], P2[:0]], np.array([], dtype=int))
    with pytest.raises(DataError, match="two classes"):
        combine("stack", "classification", [0.5, 0.5], [P1, P2], np.array([1, 1, 1]))


def _member(ref, task="classification", labels=("0", "1"), target="target", kind="tabular"):
    record = SimpleNamespace(task=task, target=target)
    saved = SimpleNamespace(record=record, labels=list(labels), preprocessor=SimpleNamespace(desc={"kind": kind}))
    return Member(ref, saved)


@pytest.mark.parametrize("other, match", [
    (_member("b/1", labels=("no", "yes")), r"Member 2 \(b/1\) has labels \['no', 'yes'\], member 1 \(a/1\)"),
    (_member("b/1", task="regression"), r"Member 2 \(b/1\) has task 'regression'"),
    (_member("b/1", target="label"), r"target column 'label'")])
def test_mismatched_members_are_refused_naming_the_member(other, match):
    with pytest.raises(ConfigError, match=match):
        check_members([_member("a/1"), other])


def test_one_member_and_a_time_series_are_refused():
    with pytest.raises(ConfigError, match="at least two members"):
        check_members([_member("a/1")])
    with pytest.raises(ConfigError, match="time series"):
        check_members([_member("a/1", task="regression", kind="time_series"), _member("a/2", task="regression")])


def _graph(path, weight):
    """A tiny member graph: numeric (B, 3) -> Softmax(numeric @ W) (B, 2), or MatMul only for regression."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    last = "probabilities" if weight.shape[1] == 2 else "prediction"
    nodes = [helper.make_node("MatMul", ["numeric", "W"], ["z" if last == "probabilities" else last])]
    if last == "probabilities":
        nodes.append(helper.make_node("Softmax", ["z"], [last], axis=1))
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("numeric", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info(last, TensorProto.FLOAT, ["batch", weight.shape[1]])],
                              [numpy_helper.from_array(weight.astype(np.float32), "W")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17 + len(str(path)) % 2)]), str(path))
    return path


@pytest.mark.parametrize("method", ["average", "vote", "stack"])
def test_one_graph_equals_the_python_combination(tmp_path, method):
    from modelfoundry.ensemble.graph import ensemble_graph
    from modelfoundry.models.onnx_graph import ort_session

    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    weights = [rng.normal(size=(3, 2)) for _ in range(3)]
    paths = [_graph(tmp_path / f"m{i}{'x' * i}.onnx", w) for i, w in enumerate(weights)]
    session_out = [ort_session(p).run(None, {"numeric": x})[0].astype(np.float64) for p in paths]
    y = (x[:, 0] > 0).astype(int)
    c = combine(method, "classification", member_weights([1, 2, 3], 3, method) if method != "stack" else [1 / 3] * 3,
                session_out, y)
    ensemble_graph(paths, c, tmp_path / "ensemble.onnx", 2)
    got = ort_session(tmp_path / "ensemble.onnx").run(None, {"numeric": x})[0]
    np.testing.assert_allclose(got, c.apply(session_out), atol=1e-5)


def test_regression_graph_rescales_each_members_target(tmp_path):
    from modelfoundry.ensemble.graph import ensemble_graph
    from modelfoundry.models.onnx_graph import ort_session

    x = np.random.default_rng(2).normal(size=(20, 3)).astype(np.float32)
    paths = [_graph(tmp_path / f"r{i}.onnx", np.full((3, 1), i + 1.0)) for i in range(2)]
    scales = [(10.0, 2.0), (-5.0, 4.0)]  # each member's target (mean, std)
    std_out = [ort_session(p).run(None, {"numeric": x})[0][:, 0].astype(np.float64) for p in paths]
    values = [s * sd + m for s, (m, sd) in zip(std_out, scales)]
    for c in (combine("average", "regression", [0.3, 0.7]),
              combine("stack", "regression", [0.5, 0.5], values, values[0] * 0.5 + values[1] * 0.2 + 3)):
        ensemble_graph(paths, c, tmp_path / "ens.onnx", 1, scales)
        got = ort_session(tmp_path / "ens.onnx").run(None, {"numeric": x})[0][:, 0] * 2.0 + 10.0  # member 1's target
        np.testing.assert_allclose(got, c.apply(values), rtol=1e-5, atol=1e-4)


probabilities = arrays(np.float64, (5, 3), elements=st.floats(0.01, 1.0)).map(lambda a: a / a.sum(1, keepdims=True))


@settings(max_examples=40, deadline=None)
@given(st.lists(probabilities, min_size=2, max_size=4), st.sampled_from(["average", "vote"]))
def test_combined_outputs_are_probabilities_and_vote_follows_the_majority(members, method):
    c = combine(method, "classification", member_weights(None, len(members), method))
    out = c.apply(members)
    np.testing.assert_allclose(out.sum(1), 1.0)
    assert (out >= 0).all()
    if method == "vote":
        counts = sum(np.eye(3)[m.argmax(1)] for m in members)
        winners = out.argmax(1)
        assert (counts[np.arange(5), winners] == counts.max(1)).all()  # a class with the most votes wins


def test_cli_refuses_weights_that_are_not_numbers():
    from typer.testing import CliRunner

    from modelfoundry.cli import app

    result = CliRunner().invoke(app, ["ensemble", "a/1", "a/2", "--weights", "0.6,heavy"])
    assert result.exit_code != 0 and "--weights must be comma-separated numbers" in result.output
