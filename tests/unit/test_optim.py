import math

import pytest
import torch
from torch import nn

from modelfoundry.config import OptimizerConfig, SchedulerConfig
from modelfoundry.train.optim import Schedule, build_loss, build_optimizer


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta"])
def test_every_optimizer_reduces_a_simple_loss(name):
    model = small_model()
    lr = 1.0 if name == "adadelta" else 0.05
    opt = build_optimizer(model, OptimizerConfig(name=name, lr=lr))
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    first = None
    for _ in range(30):
        loss = nn.functional.mse_loss(model(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_weight_decay_skips_biases_and_norms():
    opt = build_optimizer(small_model(), OptimizerConfig(name="sgd", lr=0.1, weight_decay=0.5, momentum=0.9,
                                                         nesterov=True))
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.5 and all(p.ndim >= 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.ndim == 1 for p in plain["params"])
    assert decayed["nesterov"] and decayed["momentum"] == 0.9


def lrs(cfg, steps_per_epoch=10, epochs=10, lr=1.0, val_losses=None):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    sched = Schedule(opt, cfg, steps_per_epoch, epochs, lr)
    out = []
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.batch_end()
        sched.epoch_end(val_losses[epoch] if val_losses else 1.0)
    return out


def test_warmup_then_cosine_to_min_lr():
    out = lrs(SchedulerConfig(name="cosine", warmup_epochs=2, min_lr=0.1))
    assert out[0] == pytest.approx(0.01) and out[10] == pytest.approx(0.01 + 0.99 * 0.5)
    assert out[20] == pytest.approx(1.0) and out[-1] == pytest.approx(0.1, abs=0.01)
    assert all(a >= b for a, b in zip(out[20:], out[21:]))


def test_cosine_without_warmup_starts_at_lr_and_decays():
    out = lrs(SchedulerConfig(name="cosine", min_lr=0.1))  # once crashed: the factor read lr before it was set
    assert out[0] == pytest.approx(1.0) and out[-1] == pytest.approx(0.1, abs=0.01)


def test_step_and_onecycle_and_plateau():
    step = lrs(SchedulerConfig(name="step", step_size=3, gamma=0.5))
    assert step[29] == 1.0 and step[30] == 0.5 and step[60] == 0.25
    one = lrs(SchedulerConfig(name="onecycle", max_lr=2.0))
    assert max(one) == pytest.approx(2.0, rel=1e-3) and one[-1] < 0.01
    plateau = lrs(SchedulerConfig(name="plateau", patience=1, factor=0.5), val_losses=[1.0] * 10)
    assert plateau[0] == 1.0 and plateau[-1] < 1.0
    flat = lrs(SchedulerConfig(name="none", warmup_epochs=1))
    assert flat[0] == pytest.approx(0.01) and flat[-1] == 1.0


def test_schedule_state_round_trips():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    cfg = SchedulerConfig(name="cosine", warmup_epochs=1)
    sched = Schedule(opt, cfg, 5, 4, 1.0)
    for _ in range(7):
        opt.step()
        sched.batch_end()
    state = sched.state_dict()
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = Schedule(opt2, cfg, 5, 4, 1.0)
    sched2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = opt.param_groups[0]["lr"]
    opt.step(), sched.batch_end(), opt2.step(), sched2.batch_end()
    assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]


def test_losses():
    weights = torch.tensor([1.0, 3.0])
    ce = build_loss("auto", "classification", weights, 0.1, focal_gamma=2.0)
    assert isinstance(ce, nn.CrossEntropyLoss) and ce.label_smoothing == 0.1 and torch.equal(ce.weight, weights)
    assert isinstance(build_loss("auto", "regression", None, 0, focal_gamma=2.0), nn.MSELoss)
    assert isinstance(build_loss("huber", "regression", None, 0, focal_gamma=2.0), nn.HuberLoss)
    l1 = build_loss("l1", "regression", None, 0, focal_gamma=2.0)
    assert math.isclose(l1(torch.zeros(2), torch.ones(2)).item(), 1.0)
