"""The runner hands extensions only the rows that got an answer, and builds nothing without extensions."""

import asyncio

import numpy as np

from modelfoundry.data.input_schema import InputSchema
from modelfoundry.errors import FoundryError
from modelfoundry.serve.runner import Answer, ServedModel, prepare
from modelfoundry.serve.store import LoadedModel
from tests.unit.test_serve_runner import desc, numeric


class NanAboveBackend:
    """'Probabilities' [sum, 1]; NaN for a row whose sum is over 100 (a broken model on those rows)."""

    task, labels, platform = "classification", [0, 1], "fake"

    def __init__(self, description):
        self.desc, self.columns = description, description["columns"]

    def predict_inputs(self, inputs):
        X = inputs["numeric"]
        total = X.sum(axis=1).astype(np.float64)
        return np.column_stack([np.where(total > 100, np.nan, total), np.ones(len(X))])


class Publisher:
    def __init__(self):
        self.calls, self.ids = [], []

    def publish(self, model, rows, outputs, warnings, requests, ids=(), offsets=()):
        self.calls.append((model, rows, outputs, warnings, list(requests)))
        self.ids.append((tuple(ids), tuple(offsets)))


def served_with(publisher):
    description = desc(numeric("a"), numeric("b"))
    served = ServedModel()
    served.current = LoadedModel("m", "7", "live", NanAboveBackend(description))
    served.current.schema = InputSchema(description)
    served.extensions = publisher
    return served


def run_jobs(served, requests):
    async def main():
        jobs = [await prepare(served.current, lambda s, r=r: s.from_records(r), len(r)) for r in requests]
        return await served.run_batch(jobs)
    return asyncio.run(main())[0]


def test_only_answered_rows_reach_the_extensions():
    publisher = Publisher()
    served = served_with(publisher)
    answers = run_jobs(served, [[{"a": 0.5, "b": 0.25}], [{"a": 500.0, "b": 0.0}],
                                [{"a": 0.5, "b": None}, {"a": 0.0, "b": 1.0}]])
    assert isinstance(answers[0], Answer) and isinstance(answers[1], FoundryError) and isinstance(answers[2], Answer)
    (model, rows, outputs, warnings, requests), = publisher.calls
    assert model is served.current and requests == [1, 2]  # the broken request's row is left out
    np.testing.assert_array_equal(rows.numeric, [[0.5, 0.25], [0.5, np.nan], [0.0, 1.0]])
    assert outputs[:, 0].tolist() == [0.75, 0.5, 1.0] and len(rows.inputs["numeric"]) == 3  # b imputed with its mean, 0
    assert [{w["kind"] for w in row} for row in warnings] == [set(), {"imputed"}, set()]


def test_a_clean_batch_has_no_warnings_and_a_batch_nobody_got_is_not_published():
    publisher = Publisher()
    served = served_with(publisher)
    run_jobs(served, [[{"a": 1.0, "b": 0.5}]])
    assert publisher.calls[0][3] is None and publisher.calls[0][4] == [1]
    run_jobs(served, [[{"a": 500.0, "b": 0.0}]])
    assert len(publisher.calls) == 1


def test_route_of_names_the_monitor_routes():
    from modelfoundry.serve.metrics import route_of

    assert route_of("/feedback") == "/feedback"
    assert route_of("/v2/models/digits/monitor") == "/v2/models/{name}/monitor"
    assert route_of("/v2/models/digits/infer") == "/v2/models/{name}/infer"
    assert route_of("/v2/models/digits") == route_of("/v2/models/monitor") == "/v2/models/{name}"


def test_request_ids_and_offsets_travel_with_the_jobs():
    publisher = Publisher()
    served = served_with(publisher)

    async def main():
        one = await prepare(served.current, lambda s: s.from_records([{"a": 1.0, "b": 0.5}] * 3), 3, "abc")
        two = await prepare(served.current, lambda s: s.from_records([{"a": 1.0, "b": 0.5}]), 1)
        return await served.run_batch([one[1:3], two])
    asyncio.run(main())
    assert publisher.ids == [(("abc", None), (1, 0))]  # the slice starts at row 1 of its request
