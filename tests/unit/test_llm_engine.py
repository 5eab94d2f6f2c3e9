"""The continuous-batching engine (serve/generation.py) on tiny random Llama and GPT-2 models."""

import time

import pytest
import torch

from modelfoundry.errors import Overloaded
from modelfoundry.models.generation import SamplingParams, generate
from modelfoundry.models.llm import load_base_language_model
from modelfoundry.serve.generation import GenerationEngine, GenerationFailed, kv_cache_bytes_per_token

PROMPTS = ["hello world, this is", "The capital of France is Paris. The capital of Italy", "What",
           "Classify the sentiment of this text: I loved the film"]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def lm(request, tiny_llm, tiny_gpt2):
    return load_base_language_model(str(tiny_llm if request.param == "llama" else tiny_gpt2))


def ids_of(lm, text):
    return lm.tokenizer(text)["input_ids"]


def alone(lm, prompt, params):
    return "".join(generate(lm, prompt, params))


@pytest.fixture
def engine(lm):
    engine = GenerationEngine(lm, max_streams=3, queue_timeout_ms=30_000).start()
    yield engine
    engine.stop()


@pytest.mark.parametrize("params", [SamplingParams(max_new_tokens=12),
                                    SamplingParams(max_new_tokens=12, temperature=1.0, top_k=50, seed=7),
                                    SamplingParams(max_new_tokens=12, repetition_penalty=1.5)])
def test_batched_text_equals_alone_with_joins_and_leaves(lm, engine, params):
    """4 prompts of different lengths and budgets on 3 streams: the 4th joins when one leaves, a 5th joins
    mid-decode; every text equals the same request run alone."""
    budgets = [12, 5, 9, 7]
    requests = [(ids_of(lm, p), SamplingParams(**{**params.__dict__, "max_new_tokens": b}))
                for p, b in zip(PROMPTS, budgets)]
    streams = [engine.submit(p, sp) for p, sp in requests]
    first = next(iter(streams[0]))  # stream 0 is decoding now: the next one joins a running batch
    late = engine.submit(ids_of(lm, "positive negative"), params)
    texts = [first + "".join(streams[0])] + [s.text() for s in streams[1:]]
    assert texts == [alone(lm, p, sp) for p, sp in requests]
    assert late.text() == alone(lm, ids_of(lm, "positive negative"), params)
    assert [s.completion_tokens for s in streams] == budgets and all(s.finish_reason == "length" for s in streams)
    assert engine.active == 0 and engine.queued == 0


def test_batched_greedy_ids_equal_alone(lm):
    """White box: the step's token ids, not only texts, equal single-stream greedy ids; trimming the padding
    after the longest row leaves changes nothing."""
    engine = GenerationEngine(lm, max_streams=4)
    params = SamplingParams(max_new_tokens=6)
    prompts = [ids_of(lm, p) for p in PROMPTS]
    streams = [engine.submit(p, params) for p in prompts]
    with torch.inference_mode():
        engine._join(engine._admit())
        decoded = {id(r.stream): r.text for r in engine._rows}  # each row's TextStream: the ids it took
        for _ in range(2):
            engine._step([r.stream for r in engine._rows])
        width = engine._batch.mask.shape[1]
        streams[1].cancel()  # the longest prompt leaves: its padding columns go
        engine._drop_cancelled()
        longest_left = max(len(p) for i, p in enumerate(prompts) if i != 1)
        assert engine._batch.mask.shape[1] == width - (len(prompts[1]) - longest_left)
        while engine._rows:
            engine._step([r.stream for r in engine._rows])
    for k in (0, 2, 3):
        reference = lm.model.generate(torch.tensor([prompts[k]]), max_new_tokens=6, do_sample=False,
                                      pad_token_id=lm.tokenizer.pad_token_id)[0, len(prompts[k]):].tolist()
        stop = [i for i, t in enumerate(reference) if t in engine.stop_ids]
        assert decoded[id(streams[k])].token_ids == reference[:stop[0] if stop else None]


def test_cancel_frees_the_slot_at_once(lm):
    engine = GenerationEngine(lm, max_streams=1, queue_timeout_ms=30_000).start()
    try:
        hung_up = engine.submit(ids_of(lm, "hello"), SamplingParams(max_new_tokens=200))
        next(iter(hung_up))
        hung_up.cancel()
        started = time.perf_counter()
        after = engine.submit(ids_of(lm, "What"), SamplingParams(max_new_tokens=3))
        assert after.text() is not None and after.completion_tokens == 3
        assert hung_up.completion_tokens < 200 and time.perf_counter() - started < 5
        assert engine.active == 0 and engine.queued == 0
    finally:
        engine.stop()


def test_a_request_cancelled_while_waiting_ends_without_running(lm):
    import threading

    engine = GenerationEngine(lm, max_streams=1, queue_timeout_ms=30_000).start()
    try:
        busy = engine.submit(ids_of(lm, "hello"), SamplingParams(max_new_tokens=20))
        next(iter(busy))
        waiting = engine.submit(ids_of(lm, "What"), SamplingParams(max_new_tokens=5))
        waiting.cancel()  # the client went away before it got a stream
        texts = []
        reader = threading.Thread(target=lambda: texts.append(waiting.text()))
        reader.start()
        busy.text()
        reader.join(10)
        assert texts == [""] and waiting.completion_tokens == 0 and engine.idle
    finally:
        engine.stop()


def test_full_queue_and_long_wait_answer_overloaded(lm):
    engine = GenerationEngine(lm, max_streams=1, max_queue_size=1, queue_timeout_ms=50).start()
    try:
        busy = engine.submit(ids_of(lm, "hello"), SamplingParams(max_new_tokens=200))
        next(iter(busy))
        waiting = engine.submit(ids_of(lm, "What"), SamplingParams(max_new_tokens=2))
        with pytest.raises(Overloaded, match="generations waiting") as full:
            engine.submit(ids_of(lm, "What"), SamplingParams(max_new_tokens=2))
        assert full.value.http_status == 503 and full.value.retry_after_s >= 1
        time.sleep(0.1)
        busy.cancel()
        with pytest.raises(Overloaded, match="waited"):
            waiting.text()
    finally:
        engine.stop()


def test_seeds_repeat_and_differ(lm, engine):
    prompt = ids_of(lm, "hello world")
    texts = [engine.submit(prompt, SamplingParams(max_new_tokens=16, temperature=1.0, seed=s)) for s in (1, 1, 2)]
    one, again, two = [s.text() for s in texts]
    assert one == again != two


def test_a_failing_step_fails_only_its_requests(lm, engine, monkeypatch):
    real = engine.lm.model

    class Broken:
        def __getattr__(self, name):
            return getattr(real, name)

        def __call__(self, *args, **kwargs):
            engine.lm.model = real  # fails once
            raise RuntimeError("boom")

    engine.lm.model = Broken()
    failed = engine.submit(ids_of(lm, "hello"), SamplingParams(max_new_tokens=4))
    with pytest.raises(GenerationFailed, match="boom") as error:
        failed.text()
    assert error.value.http_status == 503
    ok = engine.submit(ids_of(lm, "hello"), SamplingParams(max_new_tokens=4))
    assert ok.text() == alone(lm, ids_of(lm, "hello"), SamplingParams(max_new_tokens=4))


def test_kv_cache_bytes_per_token_matches_a_real_cache(lm, tiny_llm):
    from transformers import DynamicCache

    cache = DynamicCache(config=lm.model.config)
    with torch.inference_mode():
        lm.model(input_ids=torch.tensor([list(range(3, 13))]), cache=cache, use_cache=True)
    held = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert kv_cache_bytes_per_token(lm.model) == held // 10
    half = load_base_language_model(str(tiny_llm), "bfloat16")
    assert kv_cache_bytes_per_token(half.model) * 2 == kv_cache_bytes_per_token(
        load_base_language_model(str(tiny_llm)).model)


def test_bfloat16_weights_serve(tiny_llm):
    lm = load_base_language_model(str(tiny_llm), "bfloat16")
    engine = GenerationEngine(lm, max_streams=2).start()
    try:
        streams = [engine.submit(ids_of(lm, p), SamplingParams(max_new_tokens=5)) for p in PROMPTS[:2]]
        assert [s.text() is not None and s.completion_tokens for s in streams] == [5, 5]
    finally:
        engine.stop()


def test_requests_arriving_together_are_prefilled_together(lm, monkeypatch):
    from modelfoundry.serve import generation

    sizes, prefill = [], generation.BatchCache.prefill
    monkeypatch.setattr(generation.BatchCache, "prefill", staticmethod(
        lambda model, prompts, pad_id: sizes.append(len(prompts)) or prefill(model, prompts, pad_id)))
    engine = GenerationEngine(lm, max_streams=4, gather_ms=500).start()
    try:
        streams = [engine.submit(ids_of(lm, p), SamplingParams(max_new_tokens=3)) for p in PROMPTS[:3]]
        assert [s.text() is not None and s.completion_tokens for s in streams] == [3, 3, 3]
        assert sizes == [3]  # one prefill for the three (without gathering, the first would go alone)
    finally:
        engine.stop()
