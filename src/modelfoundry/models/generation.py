"""Text generation with a causal language model: sampling, streaming detokenization, decoding loops.

`generate` streams one answer (prefill once, then one token per step with the KV cache); `generate_batch`
answers many prompts greedily or by sampling in left-padded batches (the evaluation uses it). Both pick
tokens with `next_tokens`, which handles a batch of rows with different settings at once, and turn ids
into text with `TextStream`, which never emits half a UTF-8 character nor any part of a stop string.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelfoundry.errors import ConfigError
from modelfoundry.models.sampling import (  # re-exported: generation's public names
    SamplingParams,
    apply_repetition_penalty,
    check_int,
    next_tokens,
    seeded_generator,
)

__all__ = ["Generation", "SamplingParams", "TextStream", "apply_repetition_penalty", "check_prompt", "generate",
           "generate_batch", "next_tokens", "seeded_generator"]

if TYPE_CHECKING:
    import torch

    from modelfoundry.models.llm import LanguageModel


class TextStream:
    """Incremental detokenizer with stop handling, one per sequence.

    `push(id)` returns the text that is safe to show now: bytes of a UTF-8 character split across tokens,
    and text that could be the start of a stop string, are held back. After a stop id or a stop string,
    `finished` is True and `finish_reason` is "stop"; text from the stop string on is never emitted.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str] = (), stop_ids: Sequence[int] = ()):
        backend = getattr(tokenizer, "backend_tokenizer", None)  # the Rust tokenizer: ~10x less overhead
        self._decode = (lambda ids: backend.decode(ids, skip_special_tokens=True)) if backend is not None \
            else (lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
        self.stop = tuple(stop)
        self.stop_ids = frozenset(int(i) for i in stop_ids)
        self.token_ids: list[int] = []
        self.text = ""
        self.finished = False
        self.finish_reason: str | None = None
        self._prefix = 0  # token_ids[_prefix:_read] decode to text already taken
        self._read = 0
        self._pending = ""  # decoded text not emitted yet (a possible start of a stop string)

    def push(self, token_id: int) -> str:
        """Take one generated id; returns the new text safe to emit."""
        if self.finished:
            return ""
        if token_id in self.stop_ids:
            self.finished, self.finish_reason = True, "stop"
            return self._emit(self._pending)
        self.token_ids.append(token_id)
        ids = self.token_ids
        before = self._decode(ids[self._prefix:self._read])
        now = self._decode(ids[self._prefix:])
        if len(now) <= len(before) or now.endswith("\ufffd"):  # nothing new, or a character's bytes incomplete
            return ""
        self._prefix, self._read = self._read, len(ids)
        return self._take(now[len(before):])

    def flush(self) -> str:
        """At the end (length limit): everything held back."""
        if self.finished:
            return ""
        tail = self._decode(self.token_ids[self._prefix:])[len(self._decode(self.token_ids[self._prefix:self._read])):]
        self._prefix = self._read = len(self.token_ids)
        text = self._take(tail)
        if not self.finished:
            self.finished, self.finish_reason = True, "length"
            text += self._emit(self._pending)
        return text

    def _take(self, new: str) -> str:
        pending = self._pending + new
        cut = min((i for i in (pending.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.finished, self.finish_reason = True, "stop"
            return self._emit(pending[:cut])
        hold = max((n for s in self.stop for n in range(min(len(s) - 1, len(pending)), 0, -1)
                    if pending.endswith(s[:n])), default=0)
        self._pending = pending[len(pending) - hold:]
        return self._emit(pending[:len(pending) - hold])

    def _emit(self, text: str) -> str:
        if self.finished:
            self._pending = ""
        self.text += text
        return text


@dataclass
class Generation:
    """One finished answer."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int


def check_prompt(lm: LanguageModel, prompt_ids: Sequence[int]) -> int:
    """The number of new tokens the context leaves after `prompt_ids`; a ConfigError if it leaves none."""
    if len(prompt_ids) == 0:
        raise ConfigError("The prompt is empty: there is nothing to continue from.", "Give a prompt.")
    room = lm.context_length - len(prompt_ids)
    if room <= 0:
        raise ConfigError(f"The prompt has {len(prompt_ids)} tokens; model {lm.name} reads at most "
                          f"{lm.context_length} (prompt and answer together).",
                          "Shorten the prompt (or the conversation).")
    return room


def generate(lm: LanguageModel, prompt_ids: list[int], params: SamplingParams) -> Iterator[str]:
    """Stream the text pieces of one answer.

    Prefill once (logits of the last position only), then one token per step with the KV cache. Stops at
    a stop id or stop string, at max_new_tokens, or where the context is full.

    Raises:
        ConfigError: bad params, an empty prompt, or a prompt that fills the context.
    """
    params.check()
    budget = min(params.max_new_tokens, check_prompt(lm, prompt_ids))
    return _stream(lm, list(prompt_ids), params, budget)


def _stream(lm: LanguageModel, prompt_ids: list[int], params: SamplingParams, budget: int) -> Iterator[str]:
    import torch

    stream = TextStream(lm.tokenizer, params.stop, lm.stop_ids())
    generator = seeded_generator(params.seed)
    device = lm.model.device
    with torch.inference_mode():  # tensors only; the mode is entered again around each model call
        seen = torch.empty(len(prompt_ids) + budget, dtype=torch.long, device=device)
        seen[:len(prompt_ids)] = torch.tensor(prompt_ids)
    length = len(prompt_ids)
    cache = _new_cache(lm)
    logits = _forward(lm, seen[None, :length], cache)
    for step in range(budget):
        with torch.inference_mode():
            token = _pick(logits, params, seen[:length], generator)
        piece = stream.push(int(token))
        if piece:
            yield piece  # outside inference mode: the caller's code runs between pieces
        if stream.finished:
            return
        if step + 1 == budget:
            break
        with torch.inference_mode():
            seen[length] = token
            length += 1
            logits = _forward(lm, seen[None, length - 1:length], cache)
    tail = stream.flush()
    if tail:
        yield tail


def _new_cache(lm: LanguageModel) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=lm.model.config)


def _forward(lm: LanguageModel, ids: torch.Tensor, cache: Any, **kwargs: Any) -> torch.Tensor:
    """The (B, V) logits of the last position after `ids`, appending to `cache`."""
    import torch

    with torch.inference_mode():
        kwargs[_cache_argument(type(lm.model))] = cache
        return lm.model(input_ids=ids, use_cache=True, logits_to_keep=1, **kwargs).logits[:, -1]


@functools.cache
def _cache_argument(model_class: type) -> str:
    """`cache` (transformers >= 5.x) or `past_key_values` (earlier 5.x), as the model's forward names it."""
    import inspect

    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def _pick(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor,
          generator: torch.Generator | None) -> torch.Tensor:
    if params.temperature == 0 and params.repetition_penalty == 1.0:
        return logits[0].argmax()
    return next_tokens(logits, [params], [seen], [generator])[0]


def generate_batch(lm: LanguageModel, prompts: list[list[int]], params: SamplingParams,
                   batch_size: int = 16) -> list[Generation]:
    """Answers for many prompts, in the input order.

    Prompts are sorted by length and run in left-padded batches with the KV cache; rows that finish are
    dropped from their batch (and its cache), so they stop costing compute. Greedy answers equal
    `generate`'s for each prompt.

    Raises:
        ConfigError: bad params or batch_size, an empty prompt, or a prompt that fills the context.
    """
    params.check()
    check_int("batch_size", batch_size, 1, 4096)
    rooms = [check_prompt(lm, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        budgets = [min(params.max_new_tokens, rooms[i]) for i in chunk]
        for i, generation in zip(chunk, _run_batch(lm, [prompts[i] for i in chunk], params, budgets)):
            results[i] = generation
    return results  # type: ignore[return-value]


def _run_batch(lm: LanguageModel, prompts: list[list[int]], params: SamplingParams,
               budgets: list[int]) -> list[Generation]:
    import torch

    with torch.inference_mode():
        return _decode_batch(lm, prompts, params, budgets)


def _decode_batch(lm: LanguageModel, prompts: list[list[int]], params: SamplingParams,
                  budgets: list[int]) -> list[Generation]:
    import torch

    device = lm.model.device
    width = max(len(p) for p in prompts)
    pad = lm.tokenizer.pad_token_id or 0
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)  # (B, T)
    starts = torch.tensor([width - len(p) for p in prompts], device=device)
    mask = (torch.arange(width, device=device)[None] >= starts[:, None]).long()  # left padding
    positions = (mask.cumsum(-1) - 1).clamp_(min=0)
    streams = [TextStream(lm.tokenizer, params.stop, lm.stop_ids()) for _ in prompts]
    seen = [torch.tensor(p, device=device) for p in prompts]
    generators = [seeded_generator(params.seed) for _ in prompts]
    live = list(range(len(prompts)))  # rows still generating, in the cache's order
    cache = _new_cache(lm)
    logits = _forward(lm, ids, cache, attention_mask=mask, position_ids=positions)
    for step in range(max(budgets)):
        tokens = next_tokens(logits, [params] * len(live), [seen[r] for r in live], [generators[r] for r in live])
        keep = []
        for j, (r, token) in enumerate(zip(live, tokens.tolist())):
            streams[r].push(token)
            if params.repetition_penalty != 1.0:
                seen[r] = torch.cat([seen[r], tokens[j:j + 1]])
            if not streams[r].finished and step + 1 >= budgets[r]:
                streams[r].flush()
            if not streams[r].finished:
                keep.append(j)
        if not keep:
            break
        if len(keep) < len(live):  # finished rows leave the batch and the cache
            live = [live[j] for j in keep]
            rows = torch.tensor(keep, device=device)
            cache.batch_select_indices(rows)
            tokens, mask, positions = tokens[rows], mask[rows], positions[rows]
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
        positions = positions[:, -1:] + 1
        logits = _forward(lm, tokens[:, None], cache, attention_mask=mask, position_ids=positions)
    return [Generation(s.text, s.token_ids, s.finish_reason or "length", len(p)) for s, p in zip(streams, prompts)]
