"""One ONNX graph for an ensemble whose members read the same preprocessed inputs: every member's graph, its
names prefixed `m<k>_`, fed from the shared graph inputs, and the combination on top.

    numeric ──┬─ m0_<member 0's graph> ─ m0_probabilities ─┐
              └─ m1_<member 1's graph> ─ m1_probabilities ─┴─ combination ─ probabilities (or prediction)

The output is what a single model's export gives: "probabilities" (B, K) for classification, "prediction"
(B, 1) for regression, standardised with the ensemble's own target (that of its first member), so the
served path, `foundry predict` and evaluation read it unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelfoundry.ensemble.combine import VOTE_TIE, Combination
from modelfoundry.errors import ExportError


def ensemble_graph(graphs: list[Path], combination: Combination, out: Path, n_outputs: int,
                   scales: list[tuple[float, float]] | None = None) -> None:
    """Write the ensemble's graph to `out`.

    Args:
        graphs: each member's exported model.onnx, all with the same graph inputs.
        combination: how the members' outputs combine.
        out: the model.onnx to write.
        n_outputs: the members' output width (K classes, or 1).
        scales: regression only: each member's target (mean, std), the ensemble's own first; a member's graph
            gives standardised values, value = output * std + mean.
    """
    import onnx
    from onnx import helper

    members = [onnx.load(str(p)) for p in graphs]
    opset = max(_opset(m) for m in members)
    members = [_at_opset(m, opset) for m in members]
    inputs = list(members[0].graph.input)
    names = [i.name for i in inputs]
    for k, m in enumerate(members[1:], start=1):
        if [i.name for i in m.graph.input] != names:
            raise ExportError(f"Member {k + 1}'s graph takes inputs {[i.name for i in m.graph.input]}, member 1's "
                              f"{names}; one ensemble graph needs the same inputs.",
                              "Ensemble models trained on the same data config.")
    nodes, initializers, functions, outputs = [], [], [], []
    for k, m in enumerate(members):
        prefixed = onnx.compose.add_prefix(m, f"m{k}_")
        nodes += [helper.make_node("Identity", [n], [f"m{k}_{n}"], name=f"m{k}_feed_{n}") for n in names]
        nodes += list(prefixed.graph.node)
        initializers += list(prefixed.graph.initializer)
        functions += list(prefixed.functions)
        outputs.append(prefixed.graph.output[0].name)
    top, top_inits, output = _combination_nodes(combination, outputs, scales, n_outputs)
    for i, node in enumerate(top):
        node.name = f"ens_{i}_{node.op_type}"
    graph = helper.make_graph(nodes + top, "ensemble", inputs, [output], initializers + top_inits)
    model = helper.make_model(graph, opset_imports=_opsets(members), functions=functions,
                              producer_name="modelfoundry-ensemble")
    model.ir_version = max(m.ir_version for m in members)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def _combination_nodes(c: Combination, outputs: list[str], scales: list[tuple[float, float]] | None,
                       k: int) -> tuple[list[Any], list[Any], Any]:
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value: Any, dtype: Any = np.float32) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    nodes: list[Any] = []
    inits: list[Any] = []
    if c.task != "classification":
        a, b = (np.asarray(c.coef, dtype=np.float64)[:, 0], c.intercept[0]) if c.method == "stack" else \
            (np.asarray(c.weights, dtype=np.float64), 0.0)
        means, stds = np.array([s[0] for s in scales]), np.array([s[1] for s in scales])
        # sum_k a_k (s_k std_k + mean_k) + b, standardised again with the ensemble's (first member's) target
        gain, bias = a * stds / stds[0], (float(a @ means) + b - means[0]) / stds[0]
        nodes += [helper.make_node("Concat", outputs, ["ens_stacked"], axis=1),
                  helper.make_node("MatMul", ["ens_stacked", const("ens_gain", gain.reshape(-1, 1))], ["ens_sum"]),
                  helper.make_node("Add", ["ens_sum", const("ens_bias", [bias])], ["prediction"])]
        return nodes, inits, helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["batch", 1])
    if c.method == "stack":
        nodes += [helper.make_node("Concat", outputs, ["ens_stacked"], axis=1),
                  helper.make_node("MatMul", ["ens_stacked", const("ens_coef", c.coef)], ["ens_logits0"]),
                  helper.make_node("Add", ["ens_logits0", const("ens_intercept", c.intercept)], ["ens_logits"]),
                  helper.make_node("Softmax", ["ens_logits"], ["probabilities"], axis=1)]
    else:
        weighted = []
        for i, (name, w) in enumerate(zip(outputs, c.weights)):
            nodes.append(helper.make_node("Mul", [name, const(f"ens_w{i}", w)], [f"ens_weighted{i}"]))
            weighted.append(f"ens_weighted{i}")
        mean = "probabilities" if c.method == "average" else "ens_mean"
        nodes.append(helper.make_node("Sum", weighted, [mean]))
        if c.method == "vote":
            nodes += _vote_nodes(c, outputs, k, const)
    return nodes, inits, helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", k])


def _vote_nodes(c: Combination, outputs: list[str], k: int, const: Any) -> list[Any]:
    """(votes + VOTE_TIE * mean) / (1 + VOTE_TIE): each member's argmax one-hot, weighted, summed."""
    from onnx import helper

    nodes, votes = [], []
    depth, values = const("ens_depth", k, np.int64), const("ens_onehot", [0.0, 1.0])
    for i, (name, w) in enumerate(zip(outputs, c.weights)):
        nodes += [helper.make_node("ArgMax", [name], [f"ens_arg{i}"], axis=1, keepdims=0),
                  helper.make_node("OneHot", [f"ens_arg{i}", depth, values], [f"ens_hot{i}"], axis=-1),
                  helper.make_node("Mul", [f"ens_hot{i}", f"ens_w{i}"], [f"ens_vote{i}"])]
        votes.append(f"ens_vote{i}")
    nodes += [helper.make_node("Sum", votes, ["ens_votes"]),
              helper.make_node("Mul", ["ens_mean", const("ens_tie", VOTE_TIE)], ["ens_tied"]),
              helper.make_node("Add", ["ens_votes", "ens_tied"], ["ens_mixed"]),
              helper.make_node("Mul", ["ens_mixed", const("ens_norm", 1.0 / (1.0 + VOTE_TIE))], ["probabilities"])]
    return nodes


def _opset(model: Any) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _at_opset(model: Any, opset: int) -> Any:
    if _opset(model) == opset:
        return model
    from onnx import version_converter

    return version_converter.convert_version(model, opset)


def _opsets(members: list[Any]) -> list[Any]:
    """Every domain the members import, each at its highest version (the default domain is the same in all)."""
    from onnx import helper

    found: dict[str, int] = {}
    for m in members:
        for o in m.opset_import:
            found[o.domain] = max(found.get(o.domain, 0), o.version)
    return [helper.make_opsetid(domain, version) for domain, version in found.items()]
