"""A Transformer encoder from scratch for sequences: `transformer` over token ids (an embedding) or a float
`series` (a Linear projection to the model width).

Pre-norm encoder layers (LayerNorm -> self-attention -> residual, LayerNorm -> feed-forward -> residual) with
learned or sinusoidal positions. Padding (attention_mask 0) is masked out of every attention and of the
pooling, so a padded row gives what the row alone gives. Pooling is a learned CLS token prepended to the
sequence, or the mean over the real tokens. Attention is `scaled_dot_product_attention` with a boolean
mask, which both ONNX exporters take, with a dynamic batch and length.
This module holds the config and the builder; torch is imported inside, so validating a config never loads it.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, model_validator

from modelfoundry.config.base import Section
from modelfoundry.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from modelfoundry.artifacts.inputs import InputSpec


class TransformerConfig(Section):
    name: Literal["transformer"]
    d_model: int = Field(64, gt=0)  # the model width: embeddings, attention and the residual stream
    heads: int = Field(4, gt=0)  # attention heads; d_model must be a multiple of heads
    layers: int = Field(2, gt=0)  # encoder layers
    ff: int = Field(128, gt=0)  # the width of each layer's feed-forward block
    dropout: float = Field(0.1, ge=0, lt=1)  # in attention, after each block, and in the head
    positional: Literal["learned", "sinusoidal"] = "learned"
    max_length: int = Field(512, gt=0)  # learned positions: the longest sequence (CLS included) the model takes
    pooling: Literal["cls", "mean"] = "cls"
    head: list[Annotated[int, Field(gt=0)]] = []  # widths of the dense layers before the output layer

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TransformerConfig:
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of heads ({self.heads}), so each head "
                             f"gets d_model / heads dimensions; e.g. d_model: {-(-self.d_model // self.heads) * self.heads}")
        return self


def build_transformer(config: TransformerConfig, inputs: InputSpec, n_outputs: int) -> nn.Module:
    """A Transformer encoder from its config over `tokens` (+ `attention_mask`) or a `series`, with any float
    side inputs (numeric columns) concatenated to the pooled sequence before the dense head."""
    from modelfoundry.models.combine import build_head, combined, split_inputs
    from modelfoundry.models.rnn import sequence_inputs

    mine, side, side_width = split_inputs(inputs, sequence_inputs(inputs, "transformer"), "transformer",
                                          "token ids or a time series")
    field = inputs[mine[0]]
    tokens = field.name == "tokens"
    if tokens and not field.vocab_size:
        raise ConfigError(f"model transformer needs the vocabulary size of its 'tokens' input, but the data's "
                          f"input spec has none ({inputs!r}).", "Prepare the text with data.features.<column>: "
                          "{type: text}, which records it.")
    if not tokens and len(field.shape) != 2:
        raise ConfigError(f"model transformer takes a series of shape [steps, values], but the data gives "
                          f"{list(field.shape)}.", "Build the windows with data.time_series.")
    length = field.shape[0] + (config.pooling == "cls")
    if config.positional == "learned" and length > config.max_length:
        raise ConfigError(f"model.max_length is {config.max_length}, but the sequences have {field.shape[0]} steps"
                          f"{' plus the CLS token' if config.pooling == 'cls' else ''}.",
                          f"Set model.max_length: {length} or more (or positional: sinusoidal), or shorten the "
                          "sequences (data max_length / window).")
    encoder = _encoder_class()(config.d_model, config.heads, config.layers, config.ff, config.dropout,
                               config.positional, config.max_length, config.pooling,
                               field.vocab_size if tokens else None, None if tokens else field.shape[1])
    width = config.d_model + side_width
    return combined(inputs, encoder, mine, side, width, build_head(width, config.head, n_outputs, config.dropout))


@functools.cache
def _encoder_class() -> type:
    import math

    import torch
    from torch import nn
    from torch.nn import functional as F  # noqa: N812

    from modelfoundry.models.layers import masked_mean

    class EncoderLayer(nn.Module):
        """x + attention(norm(x)), then x + feed_forward(norm(x)); `keep` (B, 1, 1, T) says which keys to attend."""

        def __init__(self, d_model: int, heads: int, ff: int, dropout: float):
            super().__init__()
            self.heads, self.dropout = heads, dropout
            self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
            self.qkv, self.out = nn.Linear(d_model, 3 * d_model), nn.Linear(d_model, d_model)
            self.ff = nn.Sequential(nn.Linear(d_model, ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff, d_model))
            self.drop = nn.Dropout(dropout)

        def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
            B, T, C = x.shape
            q, k, v = self.qkv(self.norm1(x)).split(C, dim=2)  # (B, T, C) each
            q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, h, T, c)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep,
                                               dropout_p=self.dropout if self.training else 0.0)
            x = x + self.drop(self.out(y.transpose(1, 2).reshape(B, T, C)))
            return x + self.drop(self.ff(self.norm2(x)))

    class TransformerEncoder(nn.Module):
        """(tokens (B, T), attention_mask (B, T)) or (series (B, T, F)) -> (B, d_model)."""

        padding_invariant = True  # a padding mask in attention and pooling

        def __init__(self, d_model: int, heads: int, layers: int, ff: int, dropout: float, positional: str,
                     max_length: int, pooling: str, vocab_size: int | None, n_values: int | None):
            super().__init__()
            self.pooling, self.positional = pooling, positional
            self.embed = nn.Embedding(vocab_size, d_model, padding_idx=0) if vocab_size else nn.Linear(n_values, d_model)
            self.cls = nn.Parameter(torch.zeros(1, 1, d_model)) if pooling == "cls" else None
            self.positions = nn.Embedding(max_length, d_model) if positional == "learned" else None
            self.drop = nn.Dropout(dropout)
            self.layers = nn.ModuleList(EncoderLayer(d_model, heads, ff, dropout) for _ in range(layers))
            self.norm = nn.LayerNorm(d_model)
            nn.init.normal_(self.embed.weight, std=0.02)
            if self.positions is not None:
                nn.init.normal_(self.positions.weight, std=0.02)

        def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
            h = self.embed(x if x.dtype == torch.long else x.float())  # (B, T, C)
            real = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device) if attention_mask is None \
                else attention_mask != 0  # (B, T)
            if self.cls is not None:  # (B, 1 + T, C): the CLS token first, always attended
                h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1)
                real = torch.cat([real.new_ones(real.shape[0], 1), real], dim=1)
            else:  # an empty row keeps its first token, so every query has a key to attend
                real = torch.cat([real.new_ones(real.shape[0], 1), real[:, 1:]], dim=1)
            h = self.drop(h + self._positions(h))
            keep = real[:, None, None, :]  # (B, 1, 1, T): keys every query may attend
            for layer in self.layers:
                h = layer(h, keep)
            h = self.norm(h)
            if self.cls is not None:
                return h[:, 0]  # (B, C)
            return masked_mean(h, real)

        def _positions(self, h: torch.Tensor) -> torch.Tensor:  # (1, T, C)
            steps = torch.arange(h.shape[1], device=h.device)
            if self.positions is not None:
                return self.positions(steps).unsqueeze(0)
            C = h.shape[2]
            rates = torch.exp(torch.arange(0, C, 2, device=h.device, dtype=h.dtype) * (-math.log(10000.0) / C))
            angles = steps.to(h.dtype).unsqueeze(1) * rates  # (T, C/2)
            table = torch.stack([angles.sin(), angles.cos()], dim=2).flatten(1)[:, :C]  # sin, cos interleaved
            return table.unsqueeze(0)

    return TransformerEncoder
