"""Text generation with a causal language model: sampling, streaming detokenization, decoding loops.

`generate` streams one answer (prefill once, then one token per step with the KV cache); `generate_batch`
answers many prompts greedily or by sampling in left-padded batches (the evaluation uses it). Both pick
tokens with `next_tokens`, which handles a batch of rows with different settings at once, and turn ids
into text with `TextStream`, which never emits half a UTF-8 character nor any part of a stop string.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelfoundry.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from modelfoundry.models.llm import LanguageModel

MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 128
MAX_SEED = 2**63 - 1
# field -> (low, high, low inclusive, high inclusive)
_RANGES = {"temperature": (0.0, 2.0, True, True), "top_k": (0, 100_000, True, True),
           "top_p": (0.0, 1.0, False, True), "repetition_penalty": (0.0, 10.0, False, True)}


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens; the defaults are greedy decoding of at most 128 new tokens."""

    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # 1: off (the CTRL-paper penalty on tokens already in prompt+output)
    stop: tuple[str, ...] = ()  # stop strings (not included in the output)
    seed: int | None = None  # per-request seed: same seed, same text

    def check(self, max_new_tokens_limit: int | None = None) -> SamplingParams:
        """These parameters, checked.

        Args:
            max_new_tokens_limit: the most new tokens allowed (a server's limit), or None.

        Returns:
            self, when every field is in its range.

        Raises:
            ConfigError: naming the bad field, its value and the allowed range.
        """
        limit = MAX_SEED if max_new_tokens_limit is None else max_new_tokens_limit
        _check_int("max_new_tokens", self.max_new_tokens, 1, limit,
                   "" if max_new_tokens_limit is None else f" (this server's limit is {limit})")
        for name in ("temperature", "top_p", "repetition_penalty"):
            _check_float(name, getattr(self, name))
        _check_int("top_k", self.top_k, *_RANGES["top_k"][:2])
        if self.seed is not None:
            _check_int("seed", self.seed, 0, MAX_SEED)
        stops = self.stop
        if isinstance(stops, str) or not isinstance(stops, (tuple, list)) \
                or not all(isinstance(s, str) for s in stops):
            raise ConfigError(f"The 'stop' parameter must be a list of strings. Got {stops!r} instead.")
        if len(stops) > MAX_STOP_STRINGS or any(not 1 <= len(s) <= MAX_STOP_CHARS for s in stops):
            raise ConfigError(f"The 'stop' parameter must hold at most {MAX_STOP_STRINGS} strings of 1 to "
                              f"{MAX_STOP_CHARS} characters. Got {list(stops)!r} instead.")
        return self


def _check_int(name: str, value: Any, low: int, high: int, note: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"The '{name}' parameter must be an integer between {low} and {high}{note}. "
                          f"Got {value!r} instead.")


def _check_float(name: str, value: Any) -> None:
    low, high, low_in, high_in = _RANGES[name]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (low <= value if low_in else low < value) and (value <= high if high_in else value < high)
    if not ok:
        interval = f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
        raise ConfigError(f"The '{name}' parameter must be a number in {interval}. Got {value!r} instead.")


def next_tokens(logits: torch.Tensor, params: Sequence[SamplingParams], seen: Sequence[torch.Tensor],
                generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """The next token of each row.

    Args:
        logits: (B, V) scores of the next token.
        params: one SamplingParams per row.
        seen: per row, a 1-D LongTensor of the ids already in prompt + output (for repetition_penalty).
        generators: per row, a CPU torch.Generator (seeded requests) or None (the global generator).

    Returns:
        (B,) LongTensor of ids: argmax for greedy rows; sampling rows are done together, each drawing
        one uniform number from its own generator.
    """
    import torch

    logits = logits.float()
    penalised = [i for i, p in enumerate(params) if p.repetition_penalty != 1.0 and seen[i].numel()]
    if penalised:
        logits = logits.clone()
        for i in penalised:
            apply_repetition_penalty(logits[i], seen[i], params[i].repetition_penalty)
    chosen = logits.argmax(dim=-1)
    rows = [i for i, p in enumerate(params) if p.temperature > 0]
    if not rows:
        return chosen
    device = logits.device
    index = torch.tensor(rows, device=device)
    scaled = logits[index] / torch.tensor([[params[i].temperature] for i in rows], device=device)  # (R, V)
    top_k = [params[i].top_k for i in rows]
    top_p = [params[i].top_p for i in rows]
    order = None
    if any(top_k) or any(p < 1.0 for p in top_p):  # filter in sorted order, then sample there
        scaled, order = scaled.sort(dim=-1, descending=True)
        positions = torch.arange(scaled.shape[-1], device=device)
        k = torch.tensor([k or scaled.shape[-1] for k in top_k], device=device)
        scaled = scaled.masked_fill(positions >= k[:, None], -math.inf)
        probs = scaled.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # probability mass of the better tokens
        scaled = scaled.masked_fill(before > torch.tensor(top_p, device=device)[:, None], -math.inf)
    probs = scaled.softmax(dim=-1)
    cdf = probs.cumsum(dim=-1)
    uniform = torch.cat([torch.rand(1, generator=generators[i]) for i in rows]).to(device)
    picked = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None]).clamp_(max=cdf.shape[-1] - 1)
    if order is not None:
        picked = order.gather(1, picked)
    chosen[index] = picked[:, 0]
    return chosen


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> None:
    """In place on one row's (V,) logits: the scores of `seen` ids divided by `penalty` where positive,
    multiplied where negative (CTRL, Keskar et al. 2019), so a penalty > 1 makes them less likely."""
    scores = logits[seen]
    logits[seen] = scores.where(scores < 0, scores / penalty).where(scores >= 0, scores * penalty)


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


def seeded_generator(seed: int | None) -> torch.Generator | None:
    """A CPU generator seeded with `seed`, or None (the global one)."""
    import torch

    return None if seed is None else torch.Generator().manual_seed(seed)


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
    _check_int("batch_size", batch_size, 1, 4096)
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
