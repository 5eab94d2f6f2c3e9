"""The dynamic batcher: coalescing, the batch-size cap, a bounded queue, and queue timeouts."""

import asyncio

import numpy as np
import pandas as pd
import pytest

from modelfoundry.config import ServeConfig
from modelfoundry.serve.batching import DynamicBatcher as _DynamicBatcher
from modelfoundry.serve.batching import Overloaded


def DynamicBatcher(run, **limits):  # noqa: N802 - the batcher with the serve: section's defaults, some overridden
    defaults = ServeConfig()
    keys = ("max_batch_size", "max_latency_ms", "max_queue_size", "queue_timeout_ms")
    return _DynamicBatcher(run, **{k: limits.pop(k, getattr(defaults, k)) for k in keys}, **limits)


def frame(n, start=0):
    return pd.DataFrame({"x": np.arange(start, start + n, dtype=float)})


def recording_runner(calls, delay=0.0):
    async def run(frames):
        calls.append([len(f) for f in frames])
        await asyncio.sleep(delay)
        return [f["x"].to_numpy() * 2 for f in frames], "v1"
    return run


def test_concurrent_requests_are_coalesced_and_capped():
    calls = []

    async def main():
        batcher = DynamicBatcher(recording_runner(calls), max_batch_size=4, max_latency_ms=50)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(frame(1, i)) for i in range(10)),
                                       batcher.submit(frame(9, 100)))
        await batcher.stop()
        return results

    results = asyncio.run(main())
    for i, (out, tag) in enumerate(results[:10]):
        assert out.tolist() == [2.0 * i] and tag == "v1"  # every request gets its own rows back
    assert results[10][0].tolist() == [2.0 * x for x in range(100, 109)]  # a big request runs in slices
    assert all(sum(sizes) <= 4 for sizes in calls)  # a batch never exceeds max_batch_size
    assert len(calls) < 11 and max(sum(sizes) for sizes in calls) == 4  # and requests were coalesced


def test_a_full_queue_answers_overloaded_at_once():
    async def main():
        batcher = DynamicBatcher(recording_runner([], delay=0.3), max_batch_size=1, max_queue_size=2)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(frame(1)))
        await asyncio.sleep(0.05)  # the first is running; two more fill the queue
        waiting = [asyncio.ensure_future(batcher.submit(frame(1))) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as err:
            await batcher.submit(frame(1))
        await asyncio.gather(first, *waiting)
        await batcher.stop()
        return err.value

    err = asyncio.run(main())
    assert err.http_status == 503 and err.retry_after_s >= 1


def test_requests_that_waited_too_long_fail_instead_of_running_late():
    async def main():
        batcher = DynamicBatcher(recording_runner([], delay=0.2), max_batch_size=1, queue_timeout_ms=50)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(frame(1)) for _ in range(3)), return_exceptions=True)
        await batcher.stop()
        return results

    results = asyncio.run(main())
    assert not isinstance(results[0], Exception)
    assert all(isinstance(r, Overloaded) and "waited" in r.message for r in results[1:])


def test_a_failed_slot_fails_only_its_own_request():
    """The runner answers each request with its output or its own error; neighbours in the batch are unaffected."""
    calls = []

    async def run(frames):
        calls.append(len(frames))
        return [ValueError("bad rows") if f["x"].iloc[0] < 0 else f["x"].to_numpy() * 2 for f in frames], "v1"

    async def main():
        batcher = DynamicBatcher(run, max_batch_size=8, max_latency_ms=50)
        batcher.start()
        results = await asyncio.gather(batcher.submit(frame(1, 1)), batcher.submit(frame(1, -5)),
                                       batcher.submit(frame(1, 3)), return_exceptions=True)
        await batcher.stop()
        return results

    good, bad, other = asyncio.run(main())
    assert calls == [3]  # one shared batch
    assert good[0].tolist() == [2.0] and other[0].tolist() == [6.0]
    assert isinstance(bad, ValueError)


def test_a_large_checked_request_runs_in_slices_and_is_joined():
    from modelfoundry.serve.runner import Answer

    class Rows(list):  # a request type with len() and slicing, like a checked request
        def __getitem__(self, part):
            return Rows(super().__getitem__(part)) if isinstance(part, slice) else super().__getitem__(part)

    async def run(frames):
        sizes.append([len(f) for f in frames])
        return [Answer(np.array(f) * 2.0, [[{"row": v}] for v in f] if 5 in f else None) for f in frames], "v1"

    async def main():
        batcher = DynamicBatcher(run, max_batch_size=4)
        batcher.start()
        result = await batcher.submit(Rows(range(10)))
        await batcher.stop()
        return result

    sizes = []
    answer, tag = asyncio.run(main())
    assert sizes == [[4], [4], [2]] and answer.output.tolist() == [2.0 * v for v in range(10)]
    assert answer.warnings == [[], [], [], [], [{"row": 4}], [{"row": 5}], [{"row": 6}], [{"row": 7}], [], []]
