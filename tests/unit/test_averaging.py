"""Weight averaging within a run (training.average): SWA's epoch mean, EMA's per-step average, BatchNorm
statistics recomputed, and a stopped + resumed run ending with exactly the weights of a straight one."""

import signal

import pytest
import torch
from torch import nn

from modelfoundry.config.training import AverageConfig
from modelfoundry.data.prepare import prepare_data
from modelfoundry.models import build_model
from modelfoundry.train import callbacks
from modelfoundry.train.averaging import build_average, recompute_batch_norm
from modelfoundry.train.loop import fit
from modelfoundry.train.runtime import seed_everything


def test_swa_is_the_mean_of_the_epoch_end_weights_from_start_on():
    layer = nn.Linear(2, 1)
    average = build_average(layer.state_dict(), AverageConfig(method="swa", start=0.5), epochs=4)
    assert average.first_epoch == 2
    seen = []
    for epoch, value in enumerate([1.0, 2.0, 4.0, 9.0], start=1):
        with torch.no_grad():
            layer.weight.fill_(value)
        average.epoch_end(epoch)
        seen.append(value)
    average.apply(layer)
    assert average.count == 3
    torch.testing.assert_close(layer.weight, torch.full((1, 2), (2.0 + 4.0 + 9.0) / 3))


def test_ema_follows_each_step_with_its_warmed_up_decay():
    layer = nn.Linear(1, 1, bias=False)
    average = build_average(layer.state_dict(), AverageConfig(method="ema", start=0.0, ema_decay=0.5), epochs=2)
    expected = None
    for step, value in enumerate([4.0, 0.0, 2.0]):
        with torch.no_grad():
            layer.weight.fill_(value)
        average.step_end(1)
        decay = min(0.5, (1 + step) / (10 + step))
        expected = value if expected is None else decay * expected + (1 - decay) * value
    average.apply(layer)
    assert layer.weight.item() == pytest.approx(expected)


def test_nothing_averaged_before_start_and_none_builds_nothing():
    layer = nn.Linear(1, 1)
    assert build_average(layer.state_dict(), AverageConfig(), epochs=5) is None
    average = build_average(layer.state_dict(), AverageConfig(method="swa", start=1.0), epochs=5)
    average.epoch_end(4)
    assert not average.ready


def test_batch_norm_statistics_are_recomputed_over_the_training_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)).eval()
    data = [torch.randn(8, 3) * 3 + 1 for _ in range(4)]
    recompute_batch_norm(model, lambda: ((None, (x,), None) for x in data))
    hidden = model[0](torch.cat(data)).detach()
    torch.testing.assert_close(model[1].running_mean, hidden.mean(0))
    assert model[1].momentum == 0.1 and not model.training  # restored


def _setup(make_config, **training):
    cfg = make_config(model={"name": "mlp", "hidden": [16], "batch_norm": True},
                      training={"epochs": 4, "optimizer": {"lr": 0.05}, "checkpoint": {"min_interval_s": 0},
                                **training})
    data = prepare_data(cfg.data, cfg.seed)
    seed_everything(cfg.seed, True)
    return cfg, data, build_model(cfg.model, data.input_spec, data.n_outputs)


def _train(cfg, data, model, **kwargs):
    return fit(model, data.X, data.y, cfg.training, task=data.task, seed=cfg.seed, progress=False, **kwargs)


class Snapshots:
    """Keeps the weights at the end of every epoch (callbacks run after the averager has seen them)."""

    def __init__(self, model):
        self.model, self.weights = model, []

    def on_epoch_end(self, record):
        self.weights.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})

    def close(self):
        pass


def test_a_swa_run_keeps_the_mean_of_its_last_epochs(make_config):
    cfg, data, model = _setup(make_config, average={"method": "swa", "start": 0.5})
    snapshots = Snapshots(model)
    result = _train(cfg, data, model, callbacks=[snapshots])
    assert result.extras["average"] == {"method": "swa", "from_epoch": 2, "averaged": 3}
    expected = torch.stack([s["0.weight"] for s in snapshots.weights[1:]]).mean(0)
    torch.testing.assert_close(result.model.state_dict()["0.weight"], expected)
    last = snapshots.weights[-1]
    assert not torch.allclose(result.model.state_dict()["0.weight"], last["0.weight"])
    bn = next(k for k in last if k.endswith("running_mean"))
    assert not torch.allclose(result.model.state_dict()[bn], last[bn])  # recomputed for the averaged weights


@pytest.mark.parametrize("method", ["swa", "ema"])
def test_stop_and_resume_ends_with_the_weights_of_a_straight_run(make_config, tmp_path, monkeypatch, method):
    average = {"method": method, "start": 0.25, "ema_decay": 0.9}
    cfg, data, model = _setup(make_config, average=average)
    straight = _train(cfg, data, model, run_dir=tmp_path / "a")
    expected = {k: v.clone() for k, v in straight.model.state_dict().items()}

    original = callbacks.MetricsLog.on_epoch_end

    def interrupt_after_2(self, record):
        original(self, record)
        if record["epoch"] == 2:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C during epoch 2: checkpoint and stop

    monkeypatch.setattr(callbacks.MetricsLog, "on_epoch_end", interrupt_after_2)
    cfg, data, model = _setup(make_config, average=average)
    assert _train(cfg, data, model, run_dir=tmp_path / "b").interrupted
    monkeypatch.setattr(callbacks.MetricsLog, "on_epoch_end", original)
    torch.manual_seed(99)
    cfg, data, model = _setup(make_config, average=average)
    resumed = _train(cfg, data, model, run_dir=tmp_path / "b", resume=True)
    assert resumed.extras["average"]["averaged"] == straight.extras["average"]["averaged"] > 0
    for key, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, expected[key])


def test_the_last_k_epochs_weights_are_kept_as_snapshots(make_config, tmp_path):
    cfg, data, model = _setup(make_config, average={"snapshots": 2}, restore_best=False)
    result = _train(cfg, data, model, run_dir=tmp_path / "run")
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("snapshot-*.pt"))
    assert kept == ["snapshot-3.pt", "snapshot-4.pt"]
    last = torch.load(tmp_path / "run" / "checkpoints" / "snapshot-4.pt", weights_only=True)
    for key, value in result.model.state_dict().items():
        torch.testing.assert_close(last[key], value)
    earlier = torch.load(tmp_path / "run" / "checkpoints" / "snapshot-3.pt", weights_only=True)
    assert not torch.equal(earlier["0.weight"], last["0.weight"])
