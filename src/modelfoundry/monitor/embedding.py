"""Embedding statistics for models with an encoder (text inputs): what the raw columns cannot show.

A text model's inputs are token ids; their lengths and frequencies (columns.py) catch a change of vocabulary or
length, not a change of meaning. The model's own representation does: the input of its output layer (the last
linear layer with one output per class or value - the pooled, fine-tuned sentence embedding of a pretrained
encoder, the last hidden layer of an LSTM or transformer). The reference keeps, for it, the Mahalanobis scorer of
ood.py fitted on the training rows' embeddings (at most MAX_ROWS, a seeded sample) and calibrated on the validation
rows, and the profile of the validation rows' scores. Drift is then one numeric column, EMBEDDING: each row's
distance from the training embeddings, tested against the validation rows' distances like any numeric column
(KS, or Wasserstein on large windows).

Computing embeddings needs the PyTorch model, so `foundry monitor` (offline, and on the request log) tests this
column; the server's ONNX graph gives only the outputs, so the server does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from modelfoundry.monitor.ood import MahalanobisScorer
from modelfoundry.monitor.profile import ColumnProfile, profile_column

if TYPE_CHECKING:
    from torch import nn

EMBEDDING = "__embedding__"
MAX_ROWS = 2000  # training rows embedded for the reference: a forward pass each (a pretrained encoder: ~10 ms/row)
CHUNK = 32  # rows per forward pass: small enough that inference keeps the rows in order


@dataclass
class EmbeddingProfile:
    """The reference of a model's embeddings: where they come from, the scorer, the validation rows' scores."""

    layer: str  # the module whose input is the embedding
    dim: int
    scorer: MahalanobisScorer
    scores: ColumnProfile  # EMBEDDING: the validation rows' distances

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "dim": self.dim, "scorer": self.scorer.to_json(), "scores": self.scores.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EmbeddingProfile:
        return cls(str(data["layer"]), int(data["dim"]), MahalanobisScorer.from_json(data["scorer"]),
                   ColumnProfile.from_json(data["scores"]))


def has_encoder(desc: dict[str, Any]) -> bool:
    """Whether a model reads text (token ids): the models whose embeddings are profiled."""
    return "text" in desc


def output_layer(model: nn.Module, n_outputs: int) -> tuple[str, nn.Module]:
    """The model's output layer: its last nn.Linear with `n_outputs` outputs (LoRA's own small linear layers and
    hidden layers have other widths)."""
    from torch import nn

    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == n_outputs]
    if not found:
        raise ValueError(f"no linear layer with {n_outputs} outputs")
    return found[-1]


def embeddings(model: nn.Module, inputs: Mapping[str, np.ndarray], n_outputs: int) -> np.ndarray:
    """(N, D) float64: the input of the model's output layer for each row."""
    from modelfoundry.artifacts.inputs import rows_of, take
    from modelfoundry.models.inference import model_outputs

    _, layer = output_layer(model, n_outputs)
    captured: list[np.ndarray] = []
    handle = layer.register_forward_pre_hook(lambda module, args: captured.append(
        args[0].detach().float().reshape(args[0].shape[0], -1).cpu().numpy()))
    try:
        for start in range(0, rows_of(inputs), CHUNK):
            model_outputs(model, take(inputs, slice(start, start + CHUNK)))
    finally:
        handle.remove()
    return np.concatenate(captured).astype(np.float64) if captured else np.empty((0, 0))


def build_embedding_profile(model: nn.Module, train: Mapping[str, np.ndarray], val: Mapping[str, np.ndarray],
                            n_outputs: int, false_alarm_rate: float, seed: int = 0) -> EmbeddingProfile:
    """The embedding reference: the scorer fitted on (at most MAX_ROWS of) the training rows' embeddings and
    calibrated on the validation rows', and the profile of the validation rows' scores."""
    from modelfoundry.artifacts.inputs import rows_of, take

    n = rows_of(train)
    if n > MAX_ROWS:
        train = take(train, np.sort(np.random.default_rng(seed).choice(n, MAX_ROWS, replace=False)))
    fitted = embeddings(model, train, n_outputs)
    held = embeddings(model, val, n_outputs)
    scorer = MahalanobisScorer().fit(fitted).calibrate(held, false_alarm_rate)
    name, _ = output_layer(model, n_outputs)
    return EmbeddingProfile(name, int(fitted.shape[1]), scorer, profile_column(EMBEDDING, "numeric", scorer.score(held)))


def embedding_scores(model: nn.Module, profile: EmbeddingProfile, inputs: Mapping[str, np.ndarray],
                     n_outputs: int) -> np.ndarray:
    """(N,) each row's distance from the training embeddings (the values of column EMBEDDING)."""
    return profile.scorer.score(embeddings(model, inputs, n_outputs))
