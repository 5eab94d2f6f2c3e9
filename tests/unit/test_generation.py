"""Generation core (models/generation.py): sampling, streaming detokenization, the decoding loops."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelfoundry.errors import ConfigError
from modelfoundry.models.generation import (
    SamplingParams,
    TextStream,
    generate,
    generate_batch,
    next_tokens,
)


@pytest.fixture(scope="module")
def lm(tiny_llm):
    from modelfoundry.models.llm import load_base_language_model

    return load_base_language_model(str(tiny_llm))


@pytest.fixture(scope="module")
def prompts(lm):
    texts = ["hello world", "The capital of France is", "What is two plus two? Four. Translate to French: cat",
             "positive", "Classify the sentiment of this text: I loved the film"]
    return [_ids(lm, t) for t in texts] + [lm.prompt_ids([{"role": "user", "content": "hello"}])]


def _text(lm, prompt, **params):
    return "".join(generate(lm, prompt, SamplingParams(**params)))


def _ids(lm, text):
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


def _push_all(stream, ids):
    return [stream.push(i) for i in ids]


# --- sampling --------------------------------------------------------------------------------------------

def test_greedy_is_deterministic_and_respects_max_new_tokens(lm, prompts):
    first = generate_batch(lm, prompts[:1], SamplingParams(max_new_tokens=7))[0]
    assert first.finish_reason == "length" and len(first.token_ids) == 7
    assert first.prompt_tokens == len(prompts[0])
    assert _text(lm, prompts[0], max_new_tokens=7) == first.text == _text(lm, prompts[0], max_new_tokens=7)
    assert first.text == lm.tokenizer.decode(first.token_ids, skip_special_tokens=True)


def test_same_seed_same_text_other_seed_other_text(lm, prompts):
    sample = {"max_new_tokens": 20, "temperature": 1.0}
    a = _text(lm, prompts[1], seed=7, **sample)
    assert a == _text(lm, prompts[1], seed=7, **sample)
    assert a != _text(lm, prompts[1], seed=8, **sample)
    assert a != _text(lm, prompts[1], max_new_tokens=20)  # a random model's sample is not its greedy answer


def test_top_k_one_and_tiny_top_p_are_greedy(lm, prompts):
    greedy = _text(lm, prompts[2], max_new_tokens=20)
    assert _text(lm, prompts[2], max_new_tokens=20, temperature=1.5, top_k=1, seed=1) == greedy
    assert _text(lm, prompts[2], max_new_tokens=20, temperature=1.5, top_p=1e-6, seed=1) == greedy


def test_next_tokens_rows_with_different_settings():
    import torch

    logits = torch.tensor([[0.0, 5.0, 1.0, 4.9], [3.0, 0.0, 0.0, 2.0], [0.0, 0.0, 9.0, 0.0]])
    rows = [SamplingParams(), SamplingParams(temperature=2.0, top_k=1), SamplingParams(temperature=1.0, top_p=0.01)]
    empty = [torch.empty(0, dtype=torch.long)] * 3
    assert next_tokens(logits, rows, empty, [None, torch.Generator(), None]).tolist() == [1, 0, 2]
    # top_k=2 at a high temperature only ever picks the two best
    drawn = {int(next_tokens(logits[:1], [SamplingParams(temperature=2.0, top_k=2)], empty[:1],
                             [torch.Generator().manual_seed(s)])[0]) for s in range(40)}
    assert drawn == {1, 3}


def test_repetition_penalty_lowers_seen_tokens():
    import torch

    logits = torch.tensor([[2.0, -1.0, 1.75, 0.5]])
    seen = [torch.tensor([0, 1])]
    penalty = SamplingParams(repetition_penalty=2.0)
    assert next_tokens(logits, [SamplingParams()], seen, [None]).tolist() == [0]
    assert next_tokens(logits, [penalty], seen, [None]).tolist() == [2]  # 2.0 / 2 = 1.0 < 1.75
    from modelfoundry.models.generation import apply_repetition_penalty

    row = logits[0].clone()
    apply_repetition_penalty(row, seen[0], 2.0)
    assert row.tolist() == [1.0, -2.0, 1.75, 0.5]  # positive divided, negative multiplied, others untouched
    assert row.softmax(-1)[0] < logits[0].softmax(-1)[0] and row.softmax(-1)[1] < logits[0].softmax(-1)[1]


def test_repetition_penalty_breaks_a_greedy_loop(lm, prompts):
    looping = generate_batch(lm, prompts[:1], SamplingParams(max_new_tokens=12))[0].token_ids
    assert len(set(looping)) < len(looping)  # the random model repeats itself
    varied = generate_batch(lm, prompts[:1], SamplingParams(max_new_tokens=12, repetition_penalty=2.0))[0]
    assert len(set(varied.token_ids)) > len(set(looping))


# --- streaming text ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("stop", ["tiny", "o wor", "d, th", "is a t"])
def test_stop_strings_cut_and_never_leak(lm, stop):
    text = "hello world, this is a tiny"
    stream = TextStream(lm.tokenizer, stop=(stop, "zzz"))
    pieces = _push_all(stream, _ids(lm, text))
    assert stream.finished and stream.finish_reason == "stop"
    assert "".join(pieces) == stream.text == text[:text.index(stop)]
    assert stream.flush() == ""


def test_held_text_is_released_when_no_stop_string_follows(lm):
    text = "hello world, this is a tiny"
    stream = TextStream(lm.tokenizer, stop=("worlds", "tiny!"))
    pieces = _push_all(stream, _ids(lm, text))
    assert not stream.finished and "".join(pieces) == text[:-len("tiny")]
    assert stream.flush() == "tiny" and stream.text == text and stream.finish_reason == "length"


def test_stop_id_ends_the_stream(lm):
    eos = lm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    stream = TextStream(lm.tokenizer, stop=("tiny!",), stop_ids=[eos])
    ids = _ids(lm, "a tiny")
    pieces = _push_all(stream, [*ids, eos, *ids])
    assert "".join(pieces) == "a tiny" and stream.finish_reason == "stop" and stream.token_ids == ids


def test_multibyte_characters_come_out_whole(lm):
    text = "café 日本 🎉 ok"
    ids = _ids(lm, text)
    assert len(ids) > len(text)  # the characters are split across byte-level tokens
    stream = TextStream(lm.tokenizer)
    pieces = [p for p in _push_all(stream, ids) if p]
    assert "".join(pieces) + stream.flush() == text
    assert not any("\ufffd" in p for p in pieces)


# --- loops ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("params", [
    SamplingParams(max_new_tokens=9),
    SamplingParams(max_new_tokens=9, temperature=1.0, seed=3, stop=("5",)),  # some rows stop, at different steps
    SamplingParams(max_new_tokens=9, temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.3, seed=5),
])
def test_generate_batch_equals_generate(lm, prompts, params):
    batch = generate_batch(lm, prompts, params, batch_size=2)
    for prompt, result in zip(prompts, batch):
        assert result.text == "".join(generate(lm, prompt, params))
    assert len({g.finish_reason for g in batch}) == 2 or params.stop == ()


def test_generate_batch_equals_generate_gpt2(tiny_gpt2):
    from modelfoundry.models.llm import load_base_language_model

    gpt2 = load_base_language_model(str(tiny_gpt2))
    prompts = [_ids(gpt2, t) for t in ("hello", "The capital of France is Paris. The", "positive negative")]
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=11)
    for prompt, result in zip(prompts, generate_batch(gpt2, prompts, params, batch_size=3)):
        assert result.text == "".join(generate(gpt2, prompt, params))


def test_prompt_limits(lm):
    with pytest.raises(ConfigError, match="empty"):
        list(generate(lm, [], SamplingParams()))
    with pytest.raises(ConfigError, match=r"300 tokens.*at most 256"):
        generate(lm, [5] * 300, SamplingParams())
    with pytest.raises(ConfigError, match="256"):
        generate_batch(lm, [[5], [5] * 256], SamplingParams())
    near = generate_batch(lm, [[5] * 253], SamplingParams(max_new_tokens=50))[0]
    assert len(near.token_ids) <= 3


# --- parameter checks ---------------------------------------------------------------------------------------

ANY_VALUE = st.one_of(st.integers(-10**20, 10**20), st.floats(allow_nan=True, allow_infinity=True),
                      st.booleans(), st.none(), st.text(max_size=3))
RANGES = {"max_new_tokens": (1, 1000, int), "temperature": (0.0, 2.0, float), "top_k": (0, 100_000, int),
          "top_p": (0.0, 1.0, float), "repetition_penalty": (0.0, 10.0, float), "seed": (0, 2**63 - 1, int)}


def _valid(name, value):
    low, high, kind = RANGES[name]
    if name == "seed" and value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        return False
    if not math.isfinite(value):
        return False
    if name in ("top_p", "repetition_penalty"):
        return low < value <= high
    return low <= value <= high


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(RANGES)), value=ANY_VALUE)
def test_check_accepts_valid_and_refuses_invalid_values(name, value):
    params = SamplingParams(**{name: value})
    if _valid(name, value):
        assert params.check(max_new_tokens_limit=1000) is params
    else:
        with pytest.raises(ConfigError) as info:
            params.check(max_new_tokens_limit=1000)
        assert f"'{name}'" in info.value.message and "Got" in info.value.message


def test_check_messages():
    with pytest.raises(ConfigError, match=r"The 'temperature' parameter must be a number in \[0, 2\]. Got 5"):
        SamplingParams(temperature=5).check()
    with pytest.raises(ConfigError, match="limit is 64"):
        SamplingParams(max_new_tokens=65).check(max_new_tokens_limit=64)
    with pytest.raises(ConfigError, match="'stop'"):
        SamplingParams(stop=("a", "b", "c", "d", "e")).check()
    with pytest.raises(ConfigError, match="'stop'"):
        SamplingParams(stop="abc").check()  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'stop'"):
        SamplingParams(stop=("",)).check()
    assert SamplingParams(stop=("\n\n", "x" * 128)).check()


@pytest.mark.slow
def test_real_model_knows_the_capital_of_france():
    from modelfoundry.models.llm import load_base_language_model

    real = load_base_language_model("smollm2-135m")
    prompt = real.prompt_ids([{"role": "user", "content": "What is the capital of France?"}])
    answer = "".join(generate(real, prompt, SamplingParams(max_new_tokens=40)))
    assert "Paris" in answer
