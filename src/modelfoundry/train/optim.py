"""Optimizers, learning-rate schedules (with linear warmup) and losses, built from the config."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from modelfoundry.config import OptimizerConfig, SchedulerConfig

WARMUP_START = 0.01  # warmup goes linearly from 1% of the lr to the full lr


def decayed_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(weights, others): weight decay and the L1 penalty apply to matrices and kernels, not biases or norms."""
    weights, others = [], []
    for param in model.parameters():
        if param.requires_grad:
            (weights if param.ndim >= 2 else others).append(param)
    return weights, others


def build_optimizer(model: nn.Module, cfg: OptimizerConfig,
                    parameter_groups: list[dict] | None = None) -> torch.optim.Optimizer:
    """The optimizer of `cfg` over the trainable parameters, weight decay on matrices and kernels only.

    `parameter_groups` (from a model's `parameter_groups(lr)`: layer-wise learning rates, or parameters that
    are frozen now and unfrozen later) replaces the default single group; each group keeps its own `lr`.
    """
    if parameter_groups is None:
        weights, others = decayed_parameters(model)
        groups = [{"params": weights, "weight_decay": cfg.weight_decay}, {"params": others, "weight_decay": 0.0}]
    else:
        groups = []
        for group in parameter_groups:
            params = list(group["params"])
            extra = {k: v for k, v in group.items() if k != "params"}
            groups += [{**extra, "params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                       {**extra, "params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    common = {"lr": cfg.lr}
    builders = {
        "sgd": lambda: torch.optim.SGD(groups, momentum=cfg.momentum, nesterov=cfg.nesterov, **common),
        "adam": lambda: torch.optim.Adam(groups, betas=cfg.betas, eps=cfg.eps, **common),
        "adamw": lambda: torch.optim.AdamW(groups, betas=cfg.betas, eps=cfg.eps, **common),
        "rmsprop": lambda: torch.optim.RMSprop(groups, alpha=cfg.alpha, eps=cfg.eps, momentum=cfg.momentum, **common),
        "adagrad": lambda: torch.optim.Adagrad(groups, eps=cfg.eps, **common),
        "adadelta": lambda: torch.optim.Adadelta(groups, rho=cfg.rho, eps=cfg.eps, **common),
    }
    return builders[cfg.name]()


def build_loss(name: str, task: str, class_weights: torch.Tensor | None, label_smoothing: float, *,
               focal_gamma: float) -> nn.Module:
    """The training loss `name` (training.loss; `auto` picks by task), with per-class weights and label smoothing
    for the classification losses; `focal_gamma` is training.focal_gamma (read by `focal` only)."""
    if name == "auto":
        name = "cross_entropy" if task == "classification" else "mse"
    if name == "cross_entropy":
        return nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)
    if name == "focal":
        return FocalLoss(focal_gamma, class_weights, label_smoothing)
    return {"mse": nn.MSELoss, "huber": nn.HuberLoss, "l1": nn.L1Loss}[name]()


class FocalLoss(nn.Module):
    """Focal loss (Lin et al., 2017): each class's cross-entropy term scaled by (1 - p)^gamma, so rows the model
    already gets right count less. Class weights act as its alpha and label smoothing mixes the targets with the
    uniform distribution, both exactly as nn.CrossEntropyLoss does: with gamma 0 the two losses are equal (the
    mean over the batch, weighted by the true classes' weights for class-index targets)."""

    def __init__(self, gamma: float, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.gamma, self.label_smoothing = gamma, label_smoothing
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """`logits` (B, K); `target` class indices (B,) or class probabilities (B, K) (mixup's soft labels)."""
        log_p = torch.log_softmax(logits.float(), dim=1)  # (B, K)
        k = logits.shape[1]
        soft = target.float() if target.ndim == 2 else nn.functional.one_hot(target, k).float()  # (B, K)
        if self.label_smoothing:
            soft = soft * (1 - self.label_smoothing) + self.label_smoothing / k
        weight = self.weight.float() if self.weight is not None else torch.ones(k, device=logits.device)
        focus = (1 - log_p.exp()).clamp(min=0) ** self.gamma  # (B, K): near 0 where the model is already sure
        per_row = -(soft * weight * focus * log_p).sum(1)  # (B,)
        if target.ndim == 2:  # as nn.CrossEntropyLoss: soft targets average over the rows
            return per_row.mean()
        return per_row.sum() / weight[target].sum()


class Schedule:
    """The learning-rate schedule: stepped after every optimizer step, and told the val loss every epoch.

    step / cosine / none (and the warmup of all of them) are one LambdaLR over optimizer steps; onecycle is
    torch's OneCycleLR; plateau is ReduceLROnPlateau on the val loss, after an optional warmup.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, steps_per_epoch: int,
                 epochs: int, lr: float):
        self.cfg = cfg
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = max(1, steps_per_epoch * epochs)
        self.warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
        self.steps = 0
        self.lr = lr  # before the LambdaLR below, which calls _factor(0) at once
        self.per_step: Any = None
        self.plateau: Any = None
        if cfg.name == "onecycle":
            pct = min(0.5, cfg.warmup_epochs / epochs) if cfg.warmup_epochs else 0.3
            # cycle momentum (or Adam's beta1) only where the optimizer has one in use
            defaults = optimizer.defaults
            cycle = "betas" in defaults or defaults.get("momentum", 0) > 0
            self.per_step = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=cfg.max_lr or 10 * lr, total_steps=self.total_steps, pct_start=pct,
                cycle_momentum=cycle)
        elif cfg.name != "none" or self.warmup_steps:
            self.per_step = torch.optim.lr_scheduler.LambdaLR(optimizer, self._factor)
        if cfg.name == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=cfg.factor, patience=cfg.patience)

    @property
    def active(self) -> bool:
        return self.per_step is not None or self.plateau is not None

    def _factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return WARMUP_START + (1 - WARMUP_START) * step / self.warmup_steps
        if self.cfg.name == "step":
            return self.cfg.gamma ** (step // (self.cfg.step_size * self.steps_per_epoch))
        if self.cfg.name == "cosine":
            progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
            floor = self.cfg.min_lr / self.lr
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    def batch_end(self) -> None:
        self.steps += 1
        # under plateau, the LambdaLR only runs the warmup, then ReduceLROnPlateau owns the lr
        if self.per_step is not None and (self.plateau is None or self.steps <= self.warmup_steps):
            self.per_step.step()

    def epoch_end(self, val_loss: float) -> None:
        if self.plateau is not None and self.steps >= self.warmup_steps:
            self.plateau.step(val_loss)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps,
                "per_step": self.per_step.state_dict() if self.per_step is not None else None,
                "plateau": self.plateau.state_dict() if self.plateau is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]
        if self.per_step is not None:
            self.per_step.load_state_dict(state["per_step"])
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])
