"""Embedding statistics (monitor/embedding.py): the input of the model's output layer, its reference, and the
EMBEDDING column's drift test - on a small model whose representation is known."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from modelfoundry.config.monitor import DriftConfig
from modelfoundry.monitor.drift import compare
from modelfoundry.monitor.embedding import (EMBEDDING, EmbeddingProfile, build_embedding_profile, embedding_scores,
                                            embeddings, output_layer)
from modelfoundry.monitor.profile import Reference


class Net(nn.Module):
    """numeric (N, 6) -> hidden (N, 4) -> 3 classes; a LoRA-like side layer with 3 outputs comes first."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.side = nn.Linear(6, 3)  # also 3 outputs, but not the output layer
        self.hidden = nn.Sequential(nn.Linear(6, 4), nn.Tanh())
        self.head = nn.Linear(4, 3)

    def forward(self, numeric):
        return self.head(self.hidden(numeric)) + 0 * self.side(numeric)


def test_the_embedding_is_the_input_of_the_last_layer_with_one_output_per_class_in_row_order():
    model = Net().eval()
    assert output_layer(model, 3)[0] == "head"
    x = np.random.default_rng(0).normal(size=(100, 6)).astype(np.float32)  # > one chunk: order must hold
    got = embeddings(model, {"numeric": x}, 3)
    with torch.no_grad():
        expected = model.hidden(torch.from_numpy(x)).numpy()
    assert got.shape == (100, 4) and np.allclose(got, expected, atol=1e-6)
    with pytest.raises(ValueError, match="no linear layer with 5 outputs"):
        output_layer(model, 5)


def test_held_out_rows_do_not_drift_and_shifted_rows_do():
    model, rng = Net().eval(), np.random.default_rng(1)
    train, val, held = (rng.normal(size=(n, 6)).astype(np.float32) for n in (1500, 400, 300))
    profile = build_embedding_profile(model, {"numeric": train}, {"numeric": val}, 3, false_alarm_rate=0.01)
    profile = EmbeddingProfile.from_json(json.loads(json.dumps(profile.to_json())))  # as reference.json holds it
    reference = Reference("classification", [0, 1, 2], 1900, {}, None, {}, None, profile)
    config = DriftConfig()
    same = compare(reference, {EMBEDDING: embedding_scores(model, profile, {"numeric": held}, 3)}, config, 300)
    shifted = held + np.float32(1.5) * np.sign(held)  # pushed outwards: the hidden layer's tanh saturates
    moved = compare(reference, {EMBEDDING: embedding_scores(model, profile, {"numeric": shifted}, 3)}, config, 300)
    assert same.columns[0].test == "ks" and not same.columns[0].drifted
    assert moved.columns[0].drifted and moved.columns[0].p_value < 1e-6
    assert profile.scorer.flag(embeddings(model, {"numeric": val}, 3)).mean() <= 0.02  # calibrated on val
