"""`foundry cv` and `foundry tune` on text models: a fitted vocabulary is fitted per fold on the fold's training
rows only, the tokenization cache keys each fold apart (a second cross-validation hits it in every fold, with
the same tokens and metrics), and a search over model.lora.r / model.hidden / training.optimizer.lr runs on
text with the data prepared once."""

from __future__ import annotations

import re

import numpy as np
import pytest

from modelfoundry.config import load_config
from tests.conftest import tiny_config
from tests.unit.test_pretrained_models import tiny_bert  # noqa: F401 - the module-scoped tiny BERT fixture
from tests.unit.test_text_data import reviews

LSTM = {"name": "lstm", "embedding_dim": 8, "hidden": 8}


def text_config(tmp_path, model: dict, **sections) -> dict:
    """Reviews whose every text ends in its own number ('... number 17'): a word seen in one row only."""
    reviews(60).to_csv(tmp_path / "r.csv", index=False)
    config = tiny_config(name="text", data={"source": str(tmp_path / "r.csv"),
                                            "text": {"max_length": 16, "min_freq": 1}},
                         training={"epochs": 1, "batch_size": 16, "num_threads": 1}, **sections)
    config["model"] = model
    return config


def test_cv_fits_the_vocabulary_per_fold_and_the_cache_keys_every_fold_apart(tmp_path, monkeypatch):
    import modelfoundry.data.prepare as prepare
    from modelfoundry.cv import cross_validate

    folds: list = []
    fitted_on = prepare.prepare_parts

    def spy(clean, parts, *args, **kwargs):
        data = fitted_on(clean, parts, *args, **kwargs)
        folds.append((parts, data))
        return data

    monkeypatch.setattr(prepare, "prepare_parts", spy)
    config = load_config(text_config(tmp_path, LSTM))
    first = cross_validate(config, folds=2)
    assert len(folds) == 2
    for parts, data in folds:
        vocab = data.preprocessor.fitted.text_.tokenizer_.get_vocab()
        numbers = {name: {re.search(r"number (\d+)", t).group(1) for t in part["review"]} for name, part in parts.items()}
        assert numbers["train"] <= set(vocab)  # every training row's own word is in the vocabulary...
        assert not (numbers["val"] | numbers["test"]) & set(vocab)  # ...and no word of the rows held out
        held_out = data.X["test"]["tokens"]
        lengths = data.X["test"]["attention_mask"].sum(1)
        unknown = data.preprocessor.fitted.text_.tokenizer_.token_to_id("[UNK]")
        assert all(unknown in row[:n] for row, n in zip(held_out, lengths))  # their numbers read as unknown
        assert data.info["text_cache"]["hit"] is False
    keys = {data.info["text_cache"]["key"] for _, data in folds}
    assert len(keys) == 2  # one cache entry per fold

    second = cross_validate(config, folds=2)
    again = folds[2:]
    assert [d.info["text_cache"] for _, d in again] == [{**d.info["text_cache"], "hit": True} for _, d in folds[:2]]
    for (_, before), (_, after) in zip(folds[:2], again):
        for split in ("train", "val", "test"):
            np.testing.assert_array_equal(after.X[split]["tokens"], before.X[split]["tokens"])
    assert second.mean["accuracy"] == pytest.approx(first.mean["accuracy"])  # the same folds, the same training


def test_tune_searches_a_text_model_on_data_prepared_once(tmp_path, monkeypatch):
    import modelfoundry.experiment as experiment
    from modelfoundry.api.tuning import tune

    calls = []
    prepare = experiment.prepare
    monkeypatch.setattr(experiment, "prepare", lambda config: calls.append(config.name) or prepare(config))
    space = {"model.hidden": {"type": "categorical", "choices": [4, 8]},
             "training.optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}}
    config = text_config(tmp_path, LSTM, output={"dir": str(tmp_path / "runs")},
                         tune={"space": space, "n_trials": 2, "sampler": {"name": "random", "seed": 1}})
    result = tune(load_config(config), out=tmp_path / "tune")
    assert len(result.rows) == 2 and all(r["state"] == "COMPLETE" for r in result.rows), result.rows
    assert len({(r["model.hidden"], r["training.optimizer.lr"]) for r in result.rows}) == 2
    assert len(calls) == 2  # the check before the study, then one for every trial (the vocabulary is the same)


@pytest.mark.slow  # four LoRA trainings of the tiny BERT: ~10 s on 2 busy cores
def test_tune_searches_lora_rank_and_learning_rate_of_a_pretrained_encoder(tmp_path, tiny_bert):  # noqa: F811
    from modelfoundry.api.tuning import tune

    space = {"model.lora.r": {"type": "categorical", "choices": [2, 8]},
             "training.optimizer.lr": {"type": "float", "low": 0.002, "high": 0.004, "step": 0.002}}
    model = {"name": "pretrained", "path": str(tiny_bert), "finetune": "lora", "lora": {"r": 2}}
    config = text_config(tmp_path, model, output={"dir": str(tmp_path / "runs")},
                         tune={"space": space, "n_trials": 4, "sampler": {"name": "grid"}})
    result = tune(load_config(config), out=tmp_path / "tune")
    points = sorted((r["model.lora.r"], round(r["training.optimizer.lr"], 6)) for r in result.rows)
    assert points == [(2, 0.002), (2, 0.004), (8, 0.002), (8, 0.004)]  # the whole grid
    assert all(r["state"] == "COMPLETE" and r["value"] is not None for r in result.rows), result.rows
