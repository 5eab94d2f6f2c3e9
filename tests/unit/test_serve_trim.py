"""The server cuts each batch of texts to its longest real text (models that declare padding_invariant), on the
ONNX and the torch backend alike, and answers exactly what it answers on the full padded length."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import tiny_config
from tests.unit.test_text_data import reviews

MAX_LENGTH = 48  # the reviews are ~14 tokens: most of every batch is padding
pytestmark = pytest.mark.slow  # a training run and an ONNX export: ~8 s


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A tiny transformer over a review column (plus its numeric columns), exported to ONNX."""
    from modelfoundry.api import run
    from modelfoundry.export import export_onnx

    tmp = tmp_path_factory.mktemp("trim")
    frame = reviews(120)
    frame["review"] = [t if i % 3 else " ".join([t] * 3) for i, t in enumerate(frame["review"])]  # uneven lengths
    frame.to_csv(tmp / "r.csv", index=False)
    config = tiny_config(name="trim", data={"source": str(tmp / "r.csv"), "text": {"max_length": MAX_LENGTH}},
                         model={"name": "transformer", "d_model": 16, "heads": 2, "ff": 32, "layers": 1,
                                "max_length": 64, "pooling": "mean"},
                         training={"epochs": 1, "batch_size": 32})
    config["model"] = {k: v for k, v in config["model"].items() if k != "hidden"}
    run(config, run_dir=tmp / "run", progress=False)
    export_onnx(tmp / "run")
    return tmp / "run", frame


def _requests(frame: pd.DataFrame) -> list[pd.DataFrame]:
    """Short texts (the model also saw three times longer ones), an empty one and emoji, in requests of 1-4 rows."""
    rows = frame.drop(columns=["target"]).iloc[[1, 2, 4, 5, 7, 8, 10, 11, 13]].copy()
    rows.loc[rows.index[2], "review"] = ""
    rows.loc[rows.index[4], "review"] = "great 😀 food"
    return [rows.iloc[0:1], rows.iloc[1:4], rows.iloc[4:5], rows.iloc[5:9]]


def _served(backend, requests: list[pd.DataFrame]) -> list[np.ndarray]:
    """The requests through the server's batcher, concurrently: one model call for all of them."""
    from modelfoundry.data.input_schema import InputSchema
    from modelfoundry.serve.batching import DynamicBatcher
    from modelfoundry.serve.runner import ServedModel, prepare
    from modelfoundry.serve.store import LoadedModel

    schema = InputSchema(backend.desc)
    served = ServedModel()
    served.current = LoadedModel("trim", "run", None, backend, schema=schema)

    async def main():
        served.batcher = DynamicBatcher(served.run_batch, max_batch_size=64, max_latency_ms=50, max_queue_size=16,
                                        queue_timeout_ms=5000)
        served.batcher.start()
        try:
            jobs = [await prepare(served.current, lambda s, r=r: s.from_records(r.to_dict("records")), len(r)) for r in requests]
            answers = await asyncio.gather(*(served.predict(job) for job in jobs))
        finally:
            await served.batcher.stop()
        return [answer.output for answer, _ in answers]

    return asyncio.run(main())


def test_onnx_backend_cuts_batches_to_the_longest_text_and_answers_the_same(text_run):
    from modelfoundry.serve.backends import OnnxBackend

    run_dir, frame = text_run
    record = json.loads((run_dir / "model" / "onnx" / "export.json").read_text())
    assert record["padding_invariant"] is True
    backend = OnnxBackend(run_dir / "model" / "onnx")
    assert backend.predictor.trim is not None
    widths = []
    backend.predictor.session = _Spy(backend.predictor.session, widths)
    requests = _requests(frame)
    trimmed = _served(backend, requests)
    longest = max(_longest(backend, r) for r in requests)
    steps = next(i for i in record["inputs"] if i["name"] == "tokens")["shape"][1]  # the data's padded length
    assert widths == [longest] and longest < steps  # one batch, run at its longest text, not the padded length
    backend.predictor.trim = None
    widths.clear()
    full = _served(backend, requests)
    assert widths == [steps]
    for cut, whole in zip(trimmed, full):
        np.testing.assert_allclose(cut, whole, rtol=0, atol=1e-5)


def test_torch_backend_cuts_batches_to_the_longest_text_and_answers_the_same(text_run):
    from modelfoundry.serve.backends import TorchBackend

    run_dir, frame = text_run
    backend = TorchBackend(run_dir)
    model = backend.saved.model
    assert model.padding_invariant
    widths = []
    handle = model.register_forward_pre_hook(lambda _, args: widths.append(args[model_tokens(backend)].shape[1]))
    requests = _requests(frame)
    trimmed = _served(backend, requests)
    steps = backend.saved.record.input_spec["tokens"].shape[0]  # the data's padded length
    assert len(widths) == 1 and widths[0] < steps
    model.padding_invariant = False  # the instance attribute shadows the class's: no trim
    widths.clear()
    full = _served(backend, requests)
    handle.remove()
    assert widths == [steps]
    for cut, whole in zip(trimmed, full):
        np.testing.assert_allclose(cut, whole, rtol=0, atol=1e-5)


def model_tokens(backend) -> int:
    return list(backend.saved.record.input_spec.names).index("tokens")


def _longest(backend, rows: pd.DataFrame) -> int:
    from modelfoundry.data.portable import apply_portable

    mask = apply_portable(backend.desc, rows, "the test")["attention_mask"]
    return int(mask.sum(1).max())


class _Spy:
    """An ONNX Runtime session that records the steps of each call's token feed."""

    def __init__(self, session, widths: list[int]):
        self.session, self.widths = session, widths

    def run(self, outputs, feed):
        self.widths.append(feed["tokens"].shape[1])
        return self.session.run(outputs, feed)

    def __getattr__(self, name):
        return getattr(self.session, name)
