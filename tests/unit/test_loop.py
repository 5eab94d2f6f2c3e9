"""The training loop on tiny models: learning, early stopping, accumulation, clipping, precision, resume."""

import json
import signal

import numpy as np
import pytest
import torch

from modelfoundry.data.prepare import prepare_data
from modelfoundry.errors import ConfigError, TrainingError
from modelfoundry.models import build_model
from modelfoundry.train import callbacks
from modelfoundry.train.loop import fit
from modelfoundry.train.runtime import seed_everything


def setup(make_config, **sections):
    cfg = make_config(**sections)
    data = prepare_data(cfg.data, cfg.seed)
    seed_everything(cfg.seed, True)
    model = build_model(cfg.model, data.input_spec, data.n_outputs)
    return cfg, data, model


def train(cfg, data, model, **kwargs):
    return fit(model, data.X, data.y, cfg.training, task=data.task, class_weights=data.class_weights,
               seed=cfg.seed, progress=False, **kwargs)


def test_training_learns_iris(make_config):
    cfg, data, model = setup(make_config, training={"epochs": 30, "optimizer": {"lr": 0.01}})
    result = train(cfg, data, model)
    assert result.history[-1]["val_accuracy"] >= 0.9
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] / 2
    assert [r["epoch"] for r in result.history] == list(range(1, 31))


def test_early_stopping_stops_and_restores_the_best_epoch(make_config):
    cfg, data, model = setup(make_config, training={"epochs": 200, "optimizer": {"lr": 0.05},
                                                    "early_stopping": {"monitor": "val_loss", "patience": 3}})
    result = train(cfg, data, model)
    assert result.stopped_early and len(result.history) < 200
    losses = [r["val_loss"] for r in result.history]
    assert result.best_epoch == int(np.argmin(losses)) + 1 and len(losses) - result.best_epoch == 3
    from modelfoundry.train.loop import validate
    from modelfoundry.train.setup import EvalInputs

    x, y = EvalInputs((torch.tensor(data.X["val"]["numeric"]),), torch.device("cpu")), torch.tensor(data.y["val"])
    restored, _ = validate(result.model, x, y, torch.nn.CrossEntropyLoss(), "classification",
                        lambda: torch.autocast("cpu", enabled=False))
    assert restored["val_loss"] == pytest.approx(min(losses), rel=1e-5)


def test_gradient_accumulation_matches_one_large_batch(make_config):
    # no batch norm / dropout: two micro-batches of 16 give the gradient of one batch of 32
    results = []
    for bs, accum in [(32, 1), (16, 2)]:
        cfg, data, model = setup(make_config, training={"batch_size": bs, "accumulate_steps": accum, "epochs": 2,
                                                        "optimizer": {"name": "sgd", "lr": 0.1}})
        train(cfg, data, model)
        results.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.allclose(results[0], results[1], atol=1e-5)


def test_gradient_clipping_bounds_the_update(make_config):
    cfg, data, model = setup(make_config, training={"epochs": 1, "batch_size": 200, "clip_grad_norm": 1e-3,
                                                    "optimizer": {"name": "sgd", "lr": 1.0}})
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    train(cfg, data, model)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm() <= 1e-3 + 1e-6  # one full-batch step of lr * clipped gradient


def test_l1_penalty_shrinks_weights(make_config):
    norms = []
    for l1 in (0.0, 0.05):
        cfg, data, model = setup(make_config, training={"epochs": 20, "l1": l1})
        train(cfg, data, model)
        norms.append(sum(p.abs().sum().item() for p in model.parameters() if p.ndim >= 2))
    assert norms[1] < 0.8 * norms[0]


def test_bf16_autocast_trains_and_fp16_needs_cuda(make_config):
    cfg, data, model = setup(make_config, training={"epochs": 15, "precision": "bf16", "optimizer": {"lr": 0.01}})
    assert train(cfg, data, model).history[-1]["val_accuracy"] > 0.6
    cfg, data, model = setup(make_config, training={"precision": "fp16"})
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="bf16"):
            train(cfg, data, model)


def test_class_weights_change_training(make_config):
    weights = []
    for setting in ("none", {"0": 10.0}):
        cfg, data, model = setup(make_config, data={"source": "sklearn:iris", "balance": {"class_weights": setting}})
        train(cfg, data, model)
        weights.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert not torch.allclose(weights[0], weights[1])


def test_a_diverging_loss_is_reported(make_config):
    cfg, data, model = setup(make_config, training={"optimizer": {"name": "sgd", "lr": 1e30}})
    with pytest.raises(TrainingError, match="clip_grad_norm"):
        train(cfg, data, model)


def test_regression_reports_metrics_in_target_units(make_config):
    cfg, data, model = setup(make_config, data={"source": "sklearn:diabetes"}, training={"epochs": 5})
    result = fit(model, data.X, data.y, cfg.training, task=data.task, target_std=data.target_encoder.std_,
                 seed=0, progress=False)
    record = result.history[-1]
    assert {"val_mae", "val_rmse", "val_r2"} <= set(record) and record["val_mae"] > 10  # diabetes units, not z


def weights_of(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_ctrl_c_checkpoints_and_resume_continues_exactly(make_config, tmp_path, monkeypatch):
    sections = dict(model={"name": "mlp", "hidden": [16], "dropout": 0.2, "batch_norm": True},
                    training={"epochs": 6, "scheduler": {"name": "cosine", "warmup_epochs": 1},
                              "checkpoint": {"min_interval_s": 0}})
    cfg, data, model = setup(make_config, **sections)
    straight = train(cfg, data, model, run_dir=tmp_path / "a")
    expected = weights_of(straight.model)

    original = callbacks.MetricsLog.on_epoch_end

    def interrupt_after_3(self, record):
        original(self, record)
        if record["epoch"] == 3:
            signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C during epoch 3

    monkeypatch.setattr(callbacks.MetricsLog, "on_epoch_end", interrupt_after_3)
    cfg, data, model = setup(make_config, **sections)
    first = train(cfg, data, model, run_dir=tmp_path / "b")
    assert first.interrupted and len(first.history) == 3
    monkeypatch.setattr(callbacks.MetricsLog, "on_epoch_end", original)

    torch.manual_seed(1234)  # a resumed process starts from unrelated RNG state
    cfg, data, model = setup(make_config, **sections)
    resumed = train(cfg, data, model, run_dir=tmp_path / "b", resume=True)
    assert len(resumed.history) == 6
    for key, value in weights_of(resumed.model).items():
        torch.testing.assert_close(value, expected[key])
    assert [r["val_loss"] for r in resumed.history] == pytest.approx([r["val_loss"] for r in straight.history])
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4, 5, 6]


def test_resuming_a_finished_fit_trains_no_further(make_config, tmp_path):
    """An early-stopped run and a run trained to its last epoch both resume as they ended (no new epoch);
    a checkpoint without the `finished` flag (older format) is judged by its epoch and early-stopping state."""
    sections = dict(training={"epochs": 200, "optimizer": {"lr": 0.05}, "checkpoint": {"min_interval_s": 0},
                              "early_stopping": {"monitor": "val_loss", "patience": 2}})
    cfg, data, model = setup(make_config, **sections)
    stopped = train(cfg, data, model, run_dir=tmp_path / "es")
    assert stopped.stopped_early and len(stopped.history) < 200
    last = tmp_path / "es" / "checkpoints" / "last.pt"
    for drop_flag in (False, True):
        if drop_flag:
            state = torch.load(last, weights_only=True)
            del state["finished"]
            torch.save(state, last)
        cfg, data, model = setup(make_config, **sections)
        again = train(cfg, data, model, run_dir=tmp_path / "es", resume=True)
        assert len(again.history) == len(stopped.history) and again.stopped_early
        assert again.best_epoch == stopped.best_epoch and again.best_value == stopped.best_value
        for key, value in weights_of(again.model).items():
            torch.testing.assert_close(value, weights_of(stopped.model)[key])
    cfg, data, model = setup(make_config, training={"epochs": 3})
    full = train(cfg, data, model, run_dir=tmp_path / "full")
    cfg, data, model = setup(make_config, training={"epochs": 3})
    again = train(cfg, data, model, run_dir=tmp_path / "full", resume=True)
    assert [r["epoch"] for r in again.history] == [1, 2, 3] and not again.stopped_early
    assert again.best_epoch == full.best_epoch


def _trip(model, at, how):
    """`model`, which on its `at`-th training forward presses Ctrl-C (`signal`) or dies (`crash`)."""
    calls = []

    def hook(module, inputs):
        if module.training:
            calls.append(1)
            if len(calls) == at:
                if how == "crash":
                    raise RuntimeError("killed")  # a process killed mid-epoch: only its saved checkpoints remain
                signal.raise_signal(signal.SIGINT)

    model.register_forward_pre_hook(hook)
    return model


@pytest.mark.parametrize("how", ["signal", "crash"])
def test_a_fit_stopped_within_an_epoch_resumes_from_that_step_exactly(make_config, tmp_path, how):
    """training.checkpoint.every_steps saves within epochs; Ctrl-C then stops at the next step (not the epoch's end),
    and a killed process resumes from its last step checkpoint: either way the result equals an uncut fit."""
    sections = dict(model={"name": "mlp", "hidden": [16], "dropout": 0.3},
                    training={"epochs": 3, "batch_size": 8, "accumulate_steps": 2, "optimizer": {"lr": 0.01},
                              "scheduler": {"name": "cosine"}, "checkpoint": {"min_interval_s": 0, "every_steps": 2}})
    cfg, data, model = setup(make_config, **sections)
    straight = train(cfg, data, model, run_dir=tmp_path / "a")
    batches = -(-len(data.y["train"]) // 8)
    assert batches > 8  # the cut below falls inside epoch 2, between step checkpoints
    cfg, data, model = setup(make_config, **sections)
    cut_at = batches + 7  # the 7th batch of epoch 2
    if how == "signal":
        first = train(cfg, data, _trip(model, cut_at, how), run_dir=tmp_path / "b")
        assert first.interrupted and len(first.history) == 1
    else:
        with pytest.raises(RuntimeError, match="killed"):
            train(cfg, data, _trip(model, cut_at, how), run_dir=tmp_path / "b")
    state = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["step"] == (8 if how == "signal" else 4) and not state["finished"]
    torch.manual_seed(1234)  # a resumed process starts from unrelated RNG state
    cfg, data, model = setup(make_config, **sections)
    resumed = train(cfg, data, model, run_dir=tmp_path / "b", resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert [r["val_loss"] for r in resumed.history] == pytest.approx([r["val_loss"] for r in straight.history],
                                                                     abs=1e-6)
    assert resumed.history[1]["train_loss"] == pytest.approx(straight.history[1]["train_loss"], abs=1e-6)
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, straight.model.state_dict()[name], rtol=0, atol=1e-6)
