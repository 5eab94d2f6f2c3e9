"""Weight averaging within a run (`training.average`): SWA (the uniform mean of the weights at the end of each
epoch from the start epoch on, BatchNorm statistics recomputed on the training data) or EMA (an exponential
moving average updated after every optimizer step). The loop calls `step_end` / `epoch_end`, checkpoints
`state_dict()`, and at the end `apply` puts the average into the model. The average is kept in float32 copies
of the floating-point tensors of `trained_state(model)`; integer buffers (BatchNorm's batch counter) follow the
model."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from modelfoundry.config.training import AverageConfig


class WeightAverage:
    """The running average of `live` (views of the model's trained tensors, updated in place by training)."""

    def __init__(self, live: dict[str, torch.Tensor], method: str, first_epoch: int, decay: float):
        self.live, self.method, self.first_epoch, self.decay = live, method, first_epoch, decay
        self.names = [k for k, v in live.items() if v.is_floating_point()]
        self.average: list[torch.Tensor] | None = None
        self.count = 0  # epochs (swa) or optimizer steps (ema) averaged so far

    @property
    def ready(self) -> bool:
        """Whether anything was averaged (early stopping may end a run before the start epoch)."""
        return self.count > 0

    def step_end(self, epoch: int) -> None:
        """After an optimizer step in `epoch`: EMA's update."""
        if self.method == "ema" and epoch >= self.first_epoch:
            decay = min(self.decay, (1 + self.count) / (10 + self.count))  # warm-up: early steps weigh less
            self._update(1.0 - decay if self.average is not None else 1.0)

    def epoch_end(self, epoch: int) -> None:
        """At the end of `epoch`: SWA's uniform mean takes this epoch's weights."""
        if self.method == "swa" and epoch >= self.first_epoch:
            self._update(1.0 / (self.count + 1))

    @torch.no_grad()
    def _update(self, weight: float) -> None:
        """average += weight * (live - average); the first update copies the weights."""
        current = [self.live[k].detach().float() for k in self.names]
        if self.average is None:
            self.average = [t.clone() for t in current]
        else:
            torch._foreach_lerp_(self.average, current, weight)
        self.count += 1

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint carries (tensors and ints: loadable with weights_only)."""
        average = None if self.average is None else dict(zip(self.names, self.average))
        return {"method": self.method, "count": self.count, "average": average}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if not state or state.get("average") is None:
            return
        device = next(iter(self.live.values())).device
        self.average = [state["average"][k].to(device) for k in self.names]
        self.count = int(state["count"])

    @torch.no_grad()
    def apply(self, model: nn.Module, batches: Callable[[], Iterable[tuple[Any, ...]]] | None = None) -> None:
        """The averaged weights into the model (in place); for SWA, then its BatchNorm statistics recomputed
        over `batches()`: (rows, inputs, targets) training batches."""
        if self.average is None:
            return
        for name, value in zip(self.names, self.average):
            self.live[name].copy_(value.to(self.live[name].dtype))
        if self.method == "swa" and batches is not None:
            recompute_batch_norm(model, batches)


@torch.no_grad()
def recompute_batch_norm(model: nn.Module, batches: Callable[[], Iterable[tuple[Any, ...]]]) -> None:
    """BatchNorm running statistics as the plain mean over one pass of the training batches (what
    torch.optim.swa_utils.update_bn does, for models that take several named inputs)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    training = model.training
    model.train()
    for _, inputs, _ in batches():
        model(*inputs)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(training)


def build_average(live: dict[str, torch.Tensor], cfg: AverageConfig, epochs: int) -> WeightAverage | None:
    """The averager `training.average` asks for, or None (method none)."""
    if cfg.method == "none":
        return None
    return WeightAverage(live, cfg.method, max(1, math.ceil(cfg.start * epochs)), cfg.ema_decay)


def training_pass(train: Iterable[tuple[Any, ...]], generator: torch.Generator, autocast: Any) -> Callable[[], Any]:
    """One pass over the training batches for `recompute_batch_norm`, leaving the shuffling stream as it was (a
    resumed run and a straight one draw the same batches after it)."""
    def batches() -> Any:
        state = generator.get_state()
        try:
            with autocast():
                yield from train
        finally:
            generator.set_state(state)

    return batches


SNAPSHOT = "snapshot-{epoch}.pt"


def save_snapshot(live: dict[str, torch.Tensor], checkpoints: Any, epoch: int, keep: int) -> None:
    """The weights at the end of `epoch` as checkpoints/snapshot-<epoch>.pt (loadable with weights_only), and
    the snapshot `keep` epochs older removed: the last `keep` epochs' weights stay (snapshot ensembling)."""
    from pathlib import Path

    from modelfoundry.train.callbacks import save_atomic

    folder = Path(checkpoints)
    folder.mkdir(parents=True, exist_ok=True)
    save_atomic({k: v.detach().cpu().clone() for k, v in live.items()}, folder / SNAPSHOT.format(epoch=epoch))
    (folder / SNAPSHOT.format(epoch=epoch - keep)).unlink(missing_ok=True)
