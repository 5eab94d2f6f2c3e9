"""Token-level changes to a batch of texts: delete, swap with the neighbour, mask, replace from the vocabulary.

Inputs are token ids and their attention mask, (B, T) or windowed (B, W, T) (each window is changed on its
own), padded on the right: a row's mask is ones then zeros. Only ordinary tokens change - a real token (mask 1)
that is not one of the tokenizer's special ones ([CLS], [SEP], padding, ...); special tokens keep their places
relative to each other, and the mask stays ones then zeros. Everything is vectorised over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenChanges:
    """Per-token chances and the ids they need (plain values; built from `data.augment.text`)."""

    delete: float
    swap: float
    mask: float
    replace: float
    unknown_id: int | None  # what a masked token becomes (the tokenizer's mask or unknown token)
    pad_id: int
    special: torch.Tensor  # (S,) int64 ids never changed, moved or emitted
    vocabulary: torch.Tensor  # (V,) int64 ordinary ids seen in the training split: what replacements draw from

    def to(self, device: torch.device) -> TokenChanges:
        if self.special.device == device:
            return self
        return TokenChanges(self.delete, self.swap, self.mask, self.replace, self.unknown_id, self.pad_id,
                            self.special.to(device), self.vocabulary.to(device))


def change_tokens(tokens: torch.Tensor, mask: torch.Tensor, changes: TokenChanges,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, mask) with the changes drawn from `generator` applied; the shapes are kept."""
    shape = tokens.shape
    t, m = tokens.reshape(-1, shape[-1]), mask.reshape(-1, shape[-1])  # (N, T): rows or windows
    changes = changes.to(t.device)
    ordinary = (m == 1) & ~torch.isin(t, changes.special)
    if changes.mask or changes.replace:
        t = _mask_or_replace(t, ordinary, changes, generator)
    if changes.swap:
        t = _swap(t, ordinary, changes.swap, generator)
    if changes.delete:
        t, m = _delete(t, m, ordinary, changes.delete, changes.pad_id, generator)
    return t.reshape(shape), m.reshape(shape)


def _mask_or_replace(t: torch.Tensor, ordinary: torch.Tensor, changes: TokenChanges,
                     generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(t.shape, generator=generator, device=t.device)  # one draw per token decides which (if any)
    if changes.mask and changes.unknown_id is not None:
        t = torch.where(ordinary & (u < changes.mask), changes.unknown_id, t)
    if changes.replace and len(changes.vocabulary):
        chosen = ordinary & (u >= changes.mask) & (u < changes.mask + changes.replace)
        picks = torch.randint(len(changes.vocabulary), t.shape, generator=generator, device=t.device)
        t = torch.where(chosen, changes.vocabulary[picks], t)
    return t


def _swap(t: torch.Tensor, ordinary: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Swap token i with i + 1 (both ordinary) with chance p; pairs never overlap (a pair starting where the
    previous one ends is dropped), so each token moves at most one place."""
    n, length = t.shape
    if length < 2:
        return t
    start = ordinary[:, :-1] & ordinary[:, 1:] & (torch.rand(n, length - 1, generator=generator, device=t.device) < p)
    start[:, 1:] &= ~start[:, :-1].clone()  # (N, T-1): i swaps with i+1; no two adjacent starts
    source = torch.arange(length, device=t.device).expand(n, length).clone()
    source[:, :-1] += start.long()  # position i reads i + 1
    source[:, 1:] -= start.long()  # position i + 1 reads i
    return torch.gather(t, 1, source)


def _delete(t: torch.Tensor, m: torch.Tensor, ordinary: torch.Tensor, p: float, pad_id: int,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop ordinary tokens with chance p (never every ordinary token of a row), shift the rest left and pad."""
    drop = ordinary & (torch.rand(t.shape, generator=generator, device=t.device) < p)
    emptied = (ordinary & ~drop).sum(1) == 0
    drop &= ~emptied[:, None]  # a row would lose all its words: it keeps them
    keep = (m == 1) & ~drop
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept tokens first, in their order
    kept = keep.sum(1, keepdim=True)
    new_mask = torch.arange(t.shape[1], device=t.device)[None, :] < kept  # (N, T)
    t = torch.where(new_mask, torch.gather(t, 1, order), pad_id)
    return t, new_mask.to(m.dtype)
