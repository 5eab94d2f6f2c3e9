"""The tune: section (checked before any trial runs), the search space as Optuna sees it, and pruning."""

from __future__ import annotations

import math

import optuna
import pytest

from modelfoundry.config import load_config
from modelfoundry.errors import ConfigError
from modelfoundry.tune.space import base_point, decoded, encoded_choices, grid, grid_size, suggest
from tests.conftest import tiny_config

LR = {"type": "float", "low": 1.0e-4, "high": 1.0e-1, "log": True}


def tuned(space: dict, **tune) -> dict:
    return tiny_config(tune={"space": space, **tune})


def problems(space: dict, **tune) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(tuned(space, **tune))
    return info.value.message


def test_a_valid_space_loads_with_shorthands_and_the_timeout_alias():
    cfg = load_config(tuned({"training.optimizer.lr": LR}, sampler="random", pruner="none", timeout=60))
    assert cfg.tune.sampler.name == "random" and cfg.tune.pruner.name == "none" and cfg.tune.timeout_s == 60
    assert cfg.tune.objective(cfg.training) == ("val_loss", "minimize")  # no early stopping: val_loss
    assert load_config(tuned({"training.optimizer.lr": LR}, metric="val_f1_macro")).tune.objective(
        cfg.training) == ("val_f1_macro", "maximize")


@pytest.mark.parametrize("space, expected", [
    ({"training.optimzer.lr": LR}, "training has no 'optimzer'. Did you mean 'optimizer'?"),
    ({"training.optimizer.lr": {"type": "float", "low": 0.1, "high": 0.1}}, "the range is empty"),
    ({"training.optimizer.lr": {"type": "float", "low": 0.1, "high": 0.01}}, "low (0.1) is above high (0.01)"),
    ({"model.activation": {"type": "categorical", "choices": ["relu"]}}, "at least two different choices"),
    ({"model.dropout": {"type": "float", "low": 0.0, "high": 1.5}}, "1.5 is not a valid value here (model.dropout"),
    ({"training.batch_size": {"type": "float", "low": 8, "high": 64}}, "whole numbers; use type: int"),
    ({"training.batch_size": {"type": "int", "low": 8, "high": 64.5}}, "an int range needs whole numbers"),
    ({"seed": {"type": "int", "low": 0, "high": 9}}, "cannot be tuned"),
    ({"data.split.val": {"type": "float", "low": 0.1, "high": 0.2}}, "cannot be tuned"),
    ({"model.hidden.3": {"type": "int", "low": 4, "high": 8}}, "model.hidden is a list of 1"),
    ({"training.optimizer": {"type": "categorical", "choices": ["a", "b"]}}, "this is a whole section"),
    ({"model.hidden": {"type": "categorical", "choices": [[8], [16]]},
      "model.hidden.0": {"type": "int", "low": 4, "high": 8}}, "overlaps model.hidden"),
    ({"training.optimizer.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "log: true needs low > 0"),
    ({"training.optimizer.momentum": {"type": "float", "low": 0.0, "high": 0.9}}, "momentum does not apply to adamw"),
])
def test_broken_spaces_are_refused_naming_the_path(space, expected):
    message = problems(space)
    assert expected in message
    assert f"tune.space.{next(iter(space))}" in message or "overlaps" in message


def test_every_problem_is_reported_at_once_with_sampler_and_metric_errors():
    message = problems({"training.optimzer.lr": LR, "training.epochs": {"type": "int", "low": 3, "high": 3}},
                       sampler="tpx", metric="val_acuracy")
    assert "4 problems" in message
    assert "Did you mean 'tpe'?" in message and "val_accuracy" in message


def test_the_grid_sampler_needs_a_finite_grid():
    assert "needs a finite grid" in problems({"training.optimizer.lr": LR}, sampler="grid")


def test_a_metric_foreign_to_the_task_is_refused_before_any_trial(tmp_path):
    from modelfoundry.api.tuning import tune

    cfg = tuned({"training.optimizer.lr": LR}, metric="val_r2")
    with pytest.raises(ConfigError, match="tune.metric: val_r2 does not apply to classification"):
        tune(cfg, out=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_with_params_sets_nested_values_list_items_and_unset_sections():
    cfg = load_config(tiny_config())
    out = cfg.with_params({"training.optimizer.lr": 0.05, "model.hidden.0": 32,
                           "training.early_stopping.patience": 4})
    assert out.training.optimizer.lr == 0.05 and out.model.hidden == [32]
    assert out.training.early_stopping.patience == 4 and out.training.early_stopping.monitor == "val_loss"
    assert cfg.model.hidden == [8]  # the base config is untouched


def test_space_encoding_grid_and_base_point():
    cfg = load_config(tuned({"model.hidden": {"type": "categorical", "choices": [[8], [16, 8]]},
                             "training.batch_size": {"type": "int", "low": 8, "high": 32, "step": 8},
                             "model.dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.25}}))
    space = cfg.tune.space
    assert encoded_choices(space["model.hidden"]) == ["[8]", "[16, 8]"]
    assert grid(space) == {"model.hidden": ["[8]", "[16, 8]"], "training.batch_size": [8, 16, 24, 32],
                           "model.dropout": [0.0, 0.25, 0.5]}
    assert grid_size(space) == 24
    assert base_point(cfg, space) == {"model.hidden": "[8]", "training.batch_size": 16, "model.dropout": 0.0}
    assert decoded(space, {"model.hidden": "[16, 8]"}) == {"model.hidden": [16, 8]}
    off_grid = load_config(tuned({"training.batch_size": {"type": "int", "low": 10, "high": 40, "step": 10}}))
    assert base_point(off_grid, off_grid.tune.space) is None  # 16 is not on the 10..40 grid


def test_suggest_draws_every_kind_within_bounds():
    cfg = load_config(tuned({"training.optimizer.lr": LR,
                             "training.batch_size": {"type": "int", "low": 8, "high": 64, "step": 8},
                             "model.hidden": {"type": "categorical", "choices": [[8], [16, 8]]}}))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        params = suggest(study.ask(), cfg.tune.space)
        assert 1e-4 <= params["training.optimizer.lr"] <= 0.1
        assert params["training.batch_size"] % 8 == 0 and 8 <= params["training.batch_size"] <= 64
        assert params["model.hidden"] in ([8], [16, 8])
        cfg.with_params(params)  # every draw makes a valid config


class FakeTrial:
    def __init__(self, prune_at: int | None):
        self.reported: dict[int, float] = {}
        self.prune_at = prune_at

    def report(self, value: float, step: int) -> None:
        self.reported[step] = value

    def should_prune(self) -> bool:
        return self.prune_at is not None and max(self.reported) >= self.prune_at


def test_the_pruning_callback_reports_each_epoch_and_stops_when_told():
    from modelfoundry.tune.trials import PruningCallback

    trial = FakeTrial(prune_at=2)
    callback = PruningCallback(trial, "val_accuracy")
    callback.on_epoch_end({"epoch": 1, "val_accuracy": 0.5})
    callback.on_epoch_end({"epoch": 2, "val_accuracy": math.nan})  # not reported: nothing to compare
    with pytest.raises(optuna.TrialPruned, match="after epoch 3"):
        callback.on_epoch_end({"epoch": 3, "val_accuracy": 0.6})
    assert trial.reported == {1: 0.5, 3: 0.6}


def test_pruned_training_stops_inside_the_loop(make_config):
    """A pruner that fires ends fit() after that epoch (the loop lets the callback's exception through)."""
    from modelfoundry.data.prepare import prepare_data
    from modelfoundry.experiment import fit_config
    from modelfoundry.tune.trials import PruningCallback

    cfg = make_config(training={"epochs": 10})
    trial = FakeTrial(prune_at=2)
    with pytest.raises(optuna.TrialPruned):
        fit_config(cfg, prepare_data(cfg.data, cfg.seed), progress=False,
                   callbacks=[PruningCallback(trial, "val_loss")])
    assert sorted(trial.reported) == [1, 2]


def test_the_median_pruner_decides_on_a_snapshot_exactly_as_optuna_does():
    from modelfoundry.tune.trials import PruningCallback

    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    for offset in (0.0, 0.1, 0.2):  # three finished trials with decreasing curves
        trial = study.ask()
        for epoch in range(1, 6):
            trial.report(1.0 / epoch + offset, epoch)
        study.tell(trial, 1.0 / 5 + offset)
    for start in (0.05, 0.5):  # a better and a worse running trial
        trial = study.ask()
        callback = PruningCallback(trial, "val_loss")
        for epoch in range(1, 6):
            trial.report(1.0 / epoch + start, epoch)
            callback.values[epoch] = 1.0 / epoch + start
            assert callback._should_prune() == trial.should_prune(), (start, epoch)
        assert callback._should_prune() is (start == 0.5)
