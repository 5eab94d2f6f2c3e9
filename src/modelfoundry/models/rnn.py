"""Recurrent models for sequences: `lstm` and `gru` over token ids (an embedding first) or a float `series`.

Two paths compute the same function with the same weights:
- training runs one fused multi-layer `nn.LSTM`/`nn.GRU` over *packed* sequences (lengths from the
  attention mask), so no step is spent on padding;
- evaluation (and ONNX export) runs each layer and direction on the padded batch. A forward direction never
  sees the right padding before a real token; the backward direction runs forward over each row reversed
  *within its length* (a gather), so it starts at the last real token too, and its outputs are reversed back.
  Only aten rnn ops, gathers and masks remain, which both ONNX exporters take, with a dynamic batch and length.

Pooling (`last`, `mean`, `max`) reads real steps only, so a padded row gives what the row alone gives.
This module holds the configs and the builder; torch is imported inside, so validating a config never loads it.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from modelfoundry.config.base import Section
from modelfoundry.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from modelfoundry.artifacts.inputs import InputSpec

TOKEN_INPUTS = ["tokens", "attention_mask"]


class _RNNKeys(Section):
    embedding_dim: int = Field(32, gt=0)  # token inputs: the width of each token's embedding
    hidden: int = Field(64, gt=0)  # the state width of each direction
    layers: int = Field(1, gt=0)
    bidirectional: bool = False
    dropout: float = Field(0.0, ge=0, lt=1)  # between recurrent layers, and in the head
    pooling: Literal["last", "mean", "max"] = "last"  # over the real (unpadded) steps
    head: list[Annotated[int, Field(gt=0)]] = []  # widths of the dense layers before the output layer


class LSTMConfig(_RNNKeys):
    name: Literal["lstm"]


class GRUConfig(_RNNKeys):
    name: Literal["gru"]


def build_rnn(config: LSTMConfig | GRUConfig, inputs: InputSpec, n_outputs: int) -> nn.Module:
    """An LSTM or GRU from its config over `tokens` (+ `attention_mask`) or a `series`, with any float side
    inputs (numeric columns) concatenated to the pooled sequence before the dense head."""
    from modelfoundry.models.combine import build_head, combined, split_inputs

    mine, side, side_width = split_inputs(inputs, sequence_inputs(inputs, config.name), config.name,
                                          "token ids or a time series")
    tokens = mine[0] == "tokens"
    if tokens and not inputs["tokens"].vocab_size:
        raise ConfigError(f"model {config.name} needs the vocabulary size of its 'tokens' input, but the data's "
                          f"input spec has none ({inputs!r}).", "Prepare the text with data.features.<column>: "
                          "{type: text}, which records it.")
    if not tokens and len(inputs["series"].shape) != 2:
        raise ConfigError(f"model {config.name} takes a series of shape [steps, values], but the data gives "
                          f"{list(inputs['series'].shape)}.", "Build the windows with data.time_series.")
    n_in = config.embedding_dim if tokens else inputs["series"].shape[1]
    encoder = RNNEncoder(config.name, n_in, config.hidden, config.layers, config.bidirectional, config.dropout,
                         config.pooling, inputs["tokens"].vocab_size if tokens else None, config.embedding_dim)
    width = encoder.width + side_width
    return combined(inputs, encoder, mine, side, width, build_head(width, config.head, n_outputs, config.dropout))


def sequence_inputs(inputs: InputSpec, model: str) -> list[str]:
    """The encoder inputs a sequence model reads from `inputs`: token ids (and their mask), else a series."""
    if "tokens" in inputs.names:
        return TOKEN_INPUTS
    if "series" in inputs.names:
        return ["series"]
    raise ConfigError(f"model {model} needs token ids (a text column) or a time series, but the data gives "
                      f"{inputs!r}.", "Declare a text column with data.features.<column>: {type: text}, set "
                      "data.time_series, or pick a model for these inputs (e.g. mlp).")


@functools.cache
def _encoder_class() -> type:
    import torch
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    class RNNEncoder(nn.Module):
        """(tokens (B, T), attention_mask (B, T)) or (series (B, T, F)) -> (B, width) pooled states."""

        padding_invariant = True  # packed / length-aware: padding past a row's length changes nothing

        def __init__(self, kind: str, n_in: int, hidden: int, layers: int, bidirectional: bool, dropout: float,
                     pooling: str, vocab_size: int | None, embedding_dim: int):
            super().__init__()
            self.kind, self.pooling, self.layers = kind, pooling, layers
            self.directions = 2 if bidirectional else 1
            self.width = hidden * self.directions
            self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0) if vocab_size else None
            rnn = nn.LSTM if kind == "lstm" else nn.GRU
            self.rnn = rnn(n_in, hidden, layers, batch_first=True, bidirectional=bidirectional,
                           dropout=dropout if layers > 1 else 0.0)

        def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
            steps = x.shape[1]
            if attention_mask is None:  # a series: every step is real
                lengths = torch.full((x.shape[0],), steps, dtype=torch.long, device=x.device)
            else:  # right padding; an empty row keeps its first step, so every row has a state
                lengths = attention_mask.long().sum(dim=1).clamp(min=1)
            x = self.embedding(x) if self.embedding is not None else x.float()  # (B, T, E) or (B, T, F)
            out = self._packed(x, lengths) if self.training else self._padded(x, lengths)  # (B, T, D*H)
            return pool(out, lengths, self.pooling, self.directions)  # (B, D*H)

        def _packed(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.rnn(packed)
            return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]

        def _padded(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            """The packed computation on the padded batch, layer by layer and direction by direction."""
            steps = torch.arange(x.shape[1], device=x.device).unsqueeze(0)  # (1, T)
            last = (lengths - 1).unsqueeze(1)  # (B, 1)
            flip = torch.where(steps <= last, last - steps, steps)  # (B, T): reverses each row's real steps
            for layer in range(self.layers):
                if layer and self.training and self.rnn.dropout:
                    x = nn.functional.dropout(x, self.rnn.dropout)
                outs = [self._direction(x, layer, "")]
                if self.directions == 2:
                    outs.append(_gather(self._direction(_gather(x, flip), layer, "_reverse"), flip))
                x = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]  # (B, T, D*H)
            return x

        def _direction(self, x: torch.Tensor, layer: int, suffix: str) -> torch.Tensor:
            """One layer, one direction, run forward over x (B, T, n) -> (B, T, H)."""
            names = [f"{w}_l{layer}{suffix}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            weights = [getattr(self.rnn, n) for n in names]
            h0 = x.new_zeros(1, x.shape[0], self.rnn.hidden_size)
            if self.kind == "lstm":
                return torch.lstm(x, (h0, h0), weights, True, 1, 0.0, False, False, True)[0]
            return torch.gru(x, h0, weights, True, 1, 0.0, False, False, True)[0]

    return RNNEncoder


def _gather(x: Any, index: Any) -> Any:
    """x (B, T, C) with its steps taken in the order `index` (B, T)."""
    return x.gather(1, index.unsqueeze(2).expand(-1, -1, x.shape[2]))


def pool(out: Any, lengths: Any, how: str, directions: int = 1) -> Any:
    """(B, T, C) outputs -> (B, C) over each row's first `lengths` steps: `mean`, `max`, or `last` (the final
    state of each direction: a forward one at the last real step, a backward one at step 0)."""
    import torch

    steps = torch.arange(out.shape[1], device=out.device).unsqueeze(0)  # (1, T)
    real = (steps < lengths.unsqueeze(1)).unsqueeze(2)  # (B, T, 1)
    if how == "mean":
        return (out * real).sum(dim=1) / lengths.unsqueeze(1).to(out.dtype)
    if how == "max":
        return out.masked_fill(~real, torch.finfo(out.dtype).min).amax(dim=1)
    final = _gather(out, (lengths - 1).unsqueeze(1))[:, 0]  # (B, C): each row's last real step
    if directions == 1:
        return final
    half = out.shape[2] // 2
    return torch.cat([final[:, :half], out[:, 0, half:]], dim=1)


def RNNEncoder(*args: Any) -> nn.Module:  # noqa: N802 - builds the module class on first use (torch inside)
    return _encoder_class()(*args)
