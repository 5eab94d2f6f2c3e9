"""ServedModel.run_batch on fake backends: one call per batch, warnings per batch, hot-switch re-checks."""

import asyncio

import numpy as np
import pytest

from modelfoundry.data.input_schema import InputSchema
from modelfoundry.errors import DataError
from modelfoundry.serve.runner import ServedModel, prepare
from modelfoundry.serve.store import LoadedModel


def numeric(column, mean=0.0):
    return {"name": column, "column": column, "kind": "numeric", "missing": "median", "fill": mean, "clip": None,
            "scale": {"method": "standard", "mean": mean, "scale": 1.0}, "range": [mean - 1, mean + 1], "width": 1}


def desc(*features):
    return {"format": 2, "kind": "tabular", "columns": [f["column"] for f in features],
            "feature_names": [f["name"] for f in features], "input_shape": [len(features)], "features": list(features)}


class SumBackend:
    """'Probabilities' [sum of the row's inputs, number of inputs]; records every call's row count."""

    task, labels, platform = "classification", [0, 1], "fake"

    def __init__(self, description):
        self.desc, self.columns, self.calls = description, description["columns"], []

    def predict_inputs(self, inputs):
        X = inputs["numeric"]
        self.calls.append(len(X))
        return np.column_stack([X.sum(axis=1), np.full(len(X), X.shape[1])]).astype(np.float64)


def loaded(version, description):
    model = LoadedModel("m", version, None, SumBackend(description))
    model.schema = InputSchema(description)
    return model


def test_one_model_call_per_batch_and_warnings_split_per_request():
    counted = {}
    served = ServedModel(lambda counts: counted.update(counts))
    served.current = loaded("1", desc(numeric("a"), numeric("b")))

    async def main():
        jobs = [await prepare(served.current, lambda s, r=r: s.from_records(r), len(r))
                for r in ([{"a": 0.5, "b": 0.5}], [{"a": 9.0, "b": None}, {"a": 0.0, "b": 0.0}])]
        return await served.run_batch(jobs)

    (first, second), model = asyncio.run(main())
    assert model.backend.calls == [3]  # the two requests' three rows in one call
    assert first.output[:, 0].tolist() == [1.0] and first.warnings is None  # its rows are clean
    assert second.output[:, 0].tolist() == [9.0, 0.0]
    assert [{w["kind"] for w in row} for row in second.warnings] == [{"out_of_range", "imputed"}, set()]
    assert counted == {("a", "out_of_range"): 1, ("b", "imputed"): 1}


def test_a_request_checked_for_the_old_version_is_checked_again_after_a_switch():
    served = ServedModel()
    served.current = loaded("1", desc(numeric("a"), numeric("b")))

    async def main():
        old = await prepare(served.current, lambda s: s.from_records([{"a": 1.0, "b": 2.0}]), 1)
        lacking = await prepare(served.current, lambda s: s.from_records([{"a": 1.0, "b": 2.0}]), 1)
        served.current = loaded("2", desc(numeric("a", mean=1.0)))  # the alias moved: fewer inputs
        answers, model = await served.run_batch([old])
        served.current = loaded("3", desc(numeric("a"), numeric("c")))  # needs a column the request lacks
        failed, _ = await served.run_batch([lacking])
        return answers, model, failed

    (answer,), model, (error,) = asyncio.run(main())
    assert model.version == "2" and answer.output.tolist() == [[0.0, 1.0]]  # one input, scaled for v2
    assert isinstance(error, DataError) and "'c'" in error.message


def test_an_unexpected_conversion_failure_is_a_4xx_for_that_request():
    served = ServedModel()
    served.current = loaded("1", desc(numeric("a")))

    def broken(schema):
        raise KeyError("surprise")

    with pytest.raises(DataError) as err:
        asyncio.run(prepare(served.current, broken, 1))
    assert err.value.http_status == 422 and err.value.hint
