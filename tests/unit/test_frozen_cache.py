"""A frozen pretrained encoder runs once per split, not once per epoch: its pooled outputs are computed (and cached
on disk), and training steps only the head on them - the same head, trained the same way, as through the
encoder; exact under checkpoint/resume; a second run reads the features from the cache without the encoder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from tests.conftest import InterruptAfter
from tests.unit.test_pretrained import token_task
from tests.unit.test_pretrained_models import model_config, tiny_bert  # noqa: F401 - the module-scoped fixture


@pytest.fixture(scope="module")
def still_bert(tmp_path_factory, tiny_bert):  # noqa: F811
    """The tiny BERT with its dropout off: its outputs in training mode are its outputs in eval mode."""
    directory = tmp_path_factory.mktemp("still-bert")
    for path in tiny_bert.iterdir():
        shutil.copyfile(path, directory / path.name)
    config = json.loads((directory / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def task():
    """Texts with a numeric column beside them (a side input), train and val."""
    from modelfoundry.artifacts.inputs import InputField, InputSpec

    spec = InputSpec([InputField("numeric", "float32", (2,)), InputField("tokens", "int64", (12,), 200),
                      InputField("attention_mask", "int64", (12,))])
    X, y = {}, {}
    for split, rows, seed in (("train", 60, 0), ("val", 20, 1)):
        X[split], y[split] = token_task(rows, seed)
        X[split] = {"numeric": np.random.default_rng(seed).normal(size=(rows, 2)).astype(np.float32), **X[split]}
    return spec, X, y


def build(path, **model):
    from modelfoundry.models import build_model

    spec, _, _ = task()
    torch.manual_seed(0)
    return build_model(model_config(path=str(path), **{"finetune": "freeze", "head": [8], **model}), spec, 2)


def training(**changes):
    from modelfoundry.config import TrainingConfig

    settings = {"epochs": 3, "batch_size": 16, "optimizer": {"lr": 0.01}, "early_stopping": None, **changes}
    return TrainingConfig(**settings)


def test_the_head_trained_on_cached_features_is_the_head_trained_through_the_encoder(still_bert, monkeypatch,
                                                                                        tmp_path):
    from modelfoundry.train.loop import fit

    monkeypatch.setenv("FOUNDRY_CACHE_DIR", str(tmp_path))
    _, X, y = task()
    cfg = training(epochs=2, early_stopping={"patience": 1}, restore_best=True)
    weights = np.array([1.0, 2.0], dtype=np.float32)
    cached = fit(build(still_bert, dropout=0.0), X, y, cfg, task="classification", class_weights=weights, seed=0,
                 progress=False)
    through = build(still_bert, dropout=0.0)
    through.frozen_features = lambda: None  # the plain path: every batch through the frozen encoder
    plain = fit(through, X, y, cfg, task="classification", class_weights=weights, seed=0, progress=False)
    assert cached.extras["feature_cache"]["hit"] is False and "feature_cache" not in plain.extras
    assert [r["val_loss"] for r in cached.history] == pytest.approx([r["val_loss"] for r in plain.history], abs=1e-5)
    assert cached.best_epoch == plain.best_epoch
    trained = cached.model.saved_state()
    assert set(trained) == set(plain.model.saved_state()) and all(k.startswith("head.") for k in trained)
    for key, value in plain.model.saved_state().items():
        torch.testing.assert_close(trained[key], value, rtol=0, atol=1e-5)
    untrained = build(still_bert, dropout=0.0).saved_state()
    assert any(not torch.equal(untrained[k], v) for k, v in trained.items())  # it did train


def test_a_second_run_reads_the_features_from_the_disk_cache_without_the_encoder(tiny_bert, monkeypatch,  # noqa: F811
                                                                                   tmp_path):
    from modelfoundry.train.loop import fit

    monkeypatch.setenv("FOUNDRY_CACHE_DIR", str(tmp_path))
    _, X, y = task()
    first = fit(build(tiny_bert), X, y, training(), task="classification", seed=0, progress=False)
    model = build(tiny_bert)
    calls = []
    model.encoder.register_forward_hook(lambda *_: calls.append(1))
    second = fit(model, X, y, training(), task="classification", seed=0, progress=False)
    assert first.extras["feature_cache"]["hit"] is False and second.extras["feature_cache"]["hit"] is True
    assert calls == [] and len(list((tmp_path / "features").glob("*.npy"))) == 2  # train and val
    assert [r["val_loss"] for r in second.history] == [r["val_loss"] for r in first.history]
    off = fit(build(tiny_bert), X, y, training(), task="classification", seed=0, progress=False, feature_cache=False)
    assert off.extras["feature_cache"] == {**off.extras["feature_cache"], "hit": False, "cached": False}


def test_features_are_computed_once_per_split_not_per_epoch(tiny_bert, monkeypatch, tmp_path):  # noqa: F811
    from modelfoundry.train.loop import fit

    monkeypatch.setenv("FOUNDRY_CACHE_DIR", str(tmp_path))
    _, X, y = task()
    model = build(tiny_bert)
    rows = []
    model.encoder.register_forward_hook(lambda _, args, kwargs, out: rows.append(len(kwargs["input_ids"])),
                                        with_kwargs=True)
    fit(model, X, y, training(epochs=4), task="classification", seed=0, progress=False, feature_cache=False)
    assert sum(rows) == 60 + 20  # each training and validation row once, for all four epochs


def test_an_encoder_that_training_changes_is_not_cached(tiny_bert, monkeypatch, tmp_path):  # noqa: F811
    from modelfoundry.train.loop import fit

    monkeypatch.setenv("FOUNDRY_CACHE_DIR", str(tmp_path))
    for changes in ({"finetune": "lora"}, {"finetune": "full"}):
        assert build(tiny_bert, **changes).frozen_features() is None
    _, X, y = task()
    unfrozen = build(tiny_bert, unfreeze_after_epochs=1)  # frozen in epoch 1 only
    assert unfrozen.frozen_features() is None
    result = fit(unfrozen, X, y, training(epochs=1), task="classification", seed=0, progress=False)
    assert "feature_cache" not in result.extras and not (tmp_path / "features").exists()


def test_a_frozen_fit_cut_after_epoch_one_resumes_to_the_same_head(tiny_bert, monkeypatch, tmp_path):  # noqa: F811
    from modelfoundry.train.loop import fit

    monkeypatch.setenv("FOUNDRY_CACHE_DIR", str(tmp_path / "cache"))
    _, X, y = task()
    cfg = training()

    straight = fit(build(tiny_bert), X, y, cfg, task="classification", seed=0, progress=False, run_dir=tmp_path / "a")
    cut = fit(build(tiny_bert), X, y, cfg, task="classification", seed=0, progress=False, run_dir=tmp_path / "b",
              callbacks=[InterruptAfter(1)])
    assert cut.interrupted and len(cut.history) == 1
    checkpoint = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["model"] and all(k.startswith("head.") for k in checkpoint["model"])
    resumed = fit(build(tiny_bert), X, y, cfg, task="classification", seed=0, progress=False,
                  run_dir=tmp_path / "b", resume=True)
    assert [r["val_loss"] for r in resumed.history] == pytest.approx([r["val_loss"] for r in straight.history],
                                                                     abs=1e-6)
    for key, value in straight.model.saved_state().items():
        torch.testing.assert_close(resumed.model.saved_state()[key], value, rtol=0, atol=1e-6)
