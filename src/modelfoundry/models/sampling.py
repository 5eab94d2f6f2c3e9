"""Picking the next token: sampling parameters (checked, with their ranges) and `next_tokens`, which handles a
batch of rows with different settings at once - greedy, temperature, top-k, top-p, repetition penalty, and a
per-request seed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelfoundry.errors import ConfigError

if TYPE_CHECKING:
    import torch

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
        check_int("max_new_tokens", self.max_new_tokens, 1, limit,
                   "" if max_new_tokens_limit is None else f" (this server's limit is {limit})")
        for name in ("temperature", "top_p", "repetition_penalty"):
            _check_float(name, getattr(self, name))
        check_int("top_k", self.top_k, *_RANGES["top_k"][:2])
        if self.seed is not None:
            check_int("seed", self.seed, 0, MAX_SEED)
        stops = self.stop
        if isinstance(stops, str) or not isinstance(stops, (tuple, list)) \
                or not all(isinstance(s, str) for s in stops):
            raise ConfigError(f"The 'stop' parameter must be a list of strings. Got {stops!r} instead.")
        if len(stops) > MAX_STOP_STRINGS or any(not 1 <= len(s) <= MAX_STOP_CHARS for s in stops):
            raise ConfigError(f"The 'stop' parameter must hold at most {MAX_STOP_STRINGS} strings of 1 to "
                              f"{MAX_STOP_CHARS} characters. Got {list(stops)!r} instead.")
        return self


def check_int(name: str, value: Any, low: int, high: int, note: str = "") -> None:
    """A ConfigError unless `value` is an integer (not a bool) in [low, high]; `note` follows the range."""
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


def seeded_generator(seed: int | None) -> torch.Generator | None:
    """A CPU generator seeded with `seed`, or None (the global one)."""
    import torch

    return None if seed is None else torch.Generator().manual_seed(seed)
