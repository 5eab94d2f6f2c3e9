"""The KV cache of a batch of generations that join and leave between decoding steps (generation.py).

    layers    per layer: keys, values (B, kv_heads, T, head_dim), rows left-padded with zeros
    mask      (B, T) 1 where a row has a real token; a row's next position is its count of ones
    last      (B,) the token each row feeds into the next step

Joining prefills the new prompts together (left-padded) into a BatchCache of their own, then `merge`
left-pads both to one width and concatenates them along the batch. Leaving is `keep` (index_select on
the batch), which also trims the columns that are padding in every remaining row. Rows never see each
other: the mask hides the padding and positions count only real tokens, so a row's logits are the ones
it would get alone. A layer keeps spare columns (`GrowingLayer`), so a step writes one token's keys and
values in place instead of copying the whole cache (`torch.cat`) in every layer.
"""

from __future__ import annotations

from typing import Any

# imported by the language-model server only (create_app imports it lazily): torch and transformers are loaded
import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

SPARE_COLUMNS = 64  # room added when a layer's buffer is (re)built: one rebuild per 64 steps at most


def kv_cache_bytes_per_token(model: Any) -> int:
    """Bytes the KV cache holds per token of one stream: layers x (keys + values) x kv heads x head dim x
    the weights' element size (the pre-flight estimate multiplies it by streams and context)."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or (getattr(cfg, "hidden_size", None) or cfg.n_embd) // heads
    element = next(model.parameters()).element_size()
    return int(layers * 2 * kv_heads * head_dim * element)


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are views of buffers with spare columns. Whenever `keys` was
    replaced from outside (a merge, a leave, a trim), the next update rebuilds the buffers."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length, new = (self.keys.shape[-2] if self.keys.dim() == 4 else 0), key_states.shape[-2]
        if self.keys is not getattr(self, "_view", None) or length + new > self._key_buffer.shape[-2]:
            self._key_buffer = _with_room(self.keys, key_states, length + new)
            self._value_buffer = _with_room(self.values, value_states, length + new)
        self._key_buffer[:, :, length:length + new] = key_states
        self._value_buffer[:, :, length:length + new] = value_states
        self.keys = self._view = self._key_buffer[:, :, :length + new]
        self.values = self._value_buffer[:, :, :length + new]
        return self.keys, self.values


def transpose_linear_weights(model: Any) -> None:
    """Store each linear layer's weight transposed in memory (same values and shape, strides swapped), so that
    F.linear runs the plain (non-transposed) float32 GEMM, which MKL does faster for the few rows of a decoding
    step (8 streams of SmolLM2-135M, one core: 112 ms a step instead of 121; identical logits). Idempotent."""
    if next(model.parameters()).dtype != torch.float32:
        return
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.weight.is_contiguous():
                module.weight.data = module.weight.data.t().contiguous().t()


def _with_room(held: torch.Tensor, new: torch.Tensor, length: int) -> torch.Tensor:
    """A (B, heads, length + SPARE_COLUMNS, dim) buffer starting with `held` (if it has any columns)."""
    buffer = torch.empty(*new.shape[:2], length + SPARE_COLUMNS, new.shape[-1], dtype=new.dtype, device=new.device)
    if held.dim() == 4 and held.shape[-2]:
        buffer[:, :, :held.shape[-2]] = held
    return buffer


class BatchCache:
    """The cache, mask and next tokens of the running rows (see the module docstring)."""

    def __init__(self, cache: Any, mask: torch.Tensor, last: torch.Tensor):
        self.cache, self.mask, self.last = cache, mask, last

    @classmethod
    def prefill(cls, model: Any, prompts: list[list[int]], pad_id: int) -> tuple[BatchCache, torch.Tensor]:
        """The prompts run together, left-padded: their BatchCache and the (b, V) logits of their next token."""
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])  # (b, L)
        mask = (torch.tensor([width - len(p) for p in prompts])[:, None] <= torch.arange(width)[None]).long()
        cache = DynamicCache(config=model.config)
        cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
        logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp_(min=0),
                       cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        return cls(cache, mask, mask.new_zeros(len(prompts))), logits

    def step(self, model: Any) -> torch.Tensor:
        """One token for every row (`last`): the (B, V) logits of the next."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.mask), 1)], dim=1)  # (B, T + 1)
        return model(input_ids=self.last[:, None], attention_mask=self.mask,
                     position_ids=self.mask.sum(1, keepdim=True) - 1, cache=self.cache, use_cache=True).logits[:, -1]

    def merge(self, other: BatchCache) -> None:
        """`other`'s rows after these: both left-padded to one width, then concatenated along the batch."""
        old, new = self.mask.shape[1], other.mask.shape[1]
        width = max(old, new)
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([F.pad(mine.keys, (0, 0, width - old, 0)),
                                   F.pad(theirs.keys, (0, 0, width - new, 0))])
            mine.values = torch.cat([F.pad(mine.values, (0, 0, width - old, 0)),
                                     F.pad(theirs.values, (0, 0, width - new, 0))])
        self.mask = torch.cat([F.pad(self.mask, (width - old, 0)), F.pad(other.mask, (width - new, 0))])
        self.last = torch.cat([self.last, other.last])

    def keep(self, rows: list[int]) -> None:
        """Only `rows` stay; the columns that are padding in all of them go."""
        index = torch.tensor(rows)
        self.mask, self.last = self.mask[index], self.last[index]
        start = int(self.mask.any(0).long().argmax())  # the first column some row uses
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index, :, start:], layer.values[index, :, start:]
