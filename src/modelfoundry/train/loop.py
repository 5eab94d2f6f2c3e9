"""The training loop: one function that reads top to bottom, plus validation and checkpoint helpers.

Batches are slices of tensors pre-loaded on the device (no DataLoader): for the in-memory datasets this
platform targets, that is what a careful hand-written loop does, and the framework adds almost nothing.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modelfoundry.config import TrainingConfig
from modelfoundry.errors import RunDirError, TrainingError
from modelfoundry.train.callbacks import (CheckpointPolicy, EarlyStopping, MetricsLog, ProgressDisplay,
                                          TensorBoardLogger, save_atomic)
from modelfoundry.train.optim import Schedule, build_loss, build_optimizer, decayed_parameters
from modelfoundry.train.runtime import autocast_dtype, restore_rng_state, rng_state, select_device

EVAL_BATCH = 4096
PROGRESS_INTERVAL_S = 0.25


@dataclass
class FitResult:
    model: nn.Module  # holds the best weights when training.restore_best is on
    history: list[dict[str, Any]]
    monitor: str
    best_epoch: int
    best_value: float | None
    stopped_early: bool = False
    interrupted: bool = False
    device: str = "cpu"
    wall_s: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)


def fit(model: nn.Module, X: dict[str, np.ndarray], y: dict[str, np.ndarray], cfg: TrainingConfig, *,
        task: str, class_weights: np.ndarray | None = None, target_std: float = 1.0, seed: int = 0,
        run_dir: Path | None = None, resume: bool = False, progress: bool = True) -> FitResult:
    """Train `model` on X/y['train'], validating on X/y['val'] each epoch.

    With `run_dir`, writes metrics.jsonl and checkpoints/{last,best}.pt there; `resume` continues from
    checkpoints/last.pt exactly where it stopped (weights, optimizer, schedule, RNG, early stopping).
    """
    started = time.perf_counter()
    device = select_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    amp_dtype = autocast_dtype(cfg.precision, device)
    x_train, y_train = _tensor(X["train"], device), _tensor(y["train"], device)
    x_val, y_val = _tensor(X["val"], device), _tensor(y["val"], device)
    model.to(device)
    weights = torch.as_tensor(class_weights, device=device) if class_weights is not None else None
    loss_fn = build_loss(cfg.loss, task, weights, cfg.label_smoothing)
    optimizer = build_optimizer(model, cfg.optimizer)
    n, bs, accum = len(x_train), cfg.batch_size, cfg.accumulate_steps
    n_used = n - 1 if n % bs == 1 and n > 1 else n  # a lone last row would break BatchNorm; it is reshuffled in
    batches = math.ceil(n_used / bs)
    schedule = Schedule(optimizer, cfg.scheduler, math.ceil(batches / accum), cfg.epochs, cfg.optimizer.lr)
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    monitor = cfg.early_stopping.monitor if cfg.early_stopping else "val_loss"
    stopper = EarlyStopping(monitor, cfg.early_stopping.patience if cfg.early_stopping else None,
                            cfg.early_stopping.min_delta if cfg.early_stopping else 0.0)
    generator = torch.Generator().manual_seed(seed)  # shuffling has its own stream, saved in checkpoints
    l1_params = decayed_parameters(model)[0] if cfg.l1 else []
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    history: list[dict[str, Any]] = []
    best_state = None
    start_epoch = 0
    ckpt_dir = run_dir / "checkpoints" if run_dir else None
    if resume:
        state = _load_checkpoint(ckpt_dir, device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        stopper.load_state_dict(state["early_stopping"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"], generator)
        history, best_state, start_epoch = state["history"], state["best_model"], state["epoch"]

    callbacks: list[Any] = []
    if run_dir:
        callbacks.append(MetricsLog(run_dir / "metrics.jsonl", history))
        if cfg.tensorboard:
            callbacks.append(TensorBoardLogger(run_dir / "tensorboard"))
    display = ProgressDisplay(cfg.epochs, batches, start_epoch, monitor) if progress else None
    if display:
        callbacks.append(display)
    policy = CheckpointPolicy(cfg.checkpoint.every_epochs, cfg.checkpoint.min_interval_s)
    interrupt = _DeferredInterrupt()
    result = FitResult(model, history, monitor, stopper.best_epoch, stopper.best, device=str(device))

    def checkpoint(epoch: int) -> None:
        save_atomic({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "schedule": schedule.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                     "early_stopping": stopper.state_dict(), "rng": rng_state(generator), "history": history,
                     "best_model": best_state}, ckpt_dir / "last.pt")
        if best_state is not None:
            save_atomic(best_state, ckpt_dir / "best.pt")
        policy.saved()

    try:
        with interrupt:
            for epoch in range(start_epoch + 1, cfg.epochs + 1):
                epoch_start = time.perf_counter()
                model.train()
                perm = torch.randperm(n, generator=generator).to(device)
                losses = []
                next_tick = epoch_start + PROGRESS_INTERVAL_S
                for step in range(batches):
                    idx = perm[step * bs:(step + 1) * bs]
                    xb, yb = x_train[idx], y_train[idx]  # (B, *input_shape), (B,)
                    with autocast():
                        out = model(xb)  # (B, n_outputs)
                        loss = loss_fn(out.squeeze(-1) if task == "regression" else out, yb)
                    if l1_params:
                        loss = loss + cfg.l1 * sum(p.abs().sum() for p in l1_params)
                    # each micro-batch weighs its share of the rows in its accumulation group, so the
                    # accumulated gradient is exactly that of one large batch (also for a short last group)
                    scaled = loss * (len(idx) / _group_rows(step, accum, bs, batches, n_used)) if accum > 1 else loss
                    (scaler.scale(scaled) if scaler else scaled).backward()
                    if (step + 1) % accum == 0 or step + 1 == batches:
                        _optimizer_step(model, optimizer, scaler, cfg)
                        if schedule.active:
                            schedule.batch_end()
                    losses.append(loss.detach())
                    if display and time.perf_counter() > next_tick:
                        display.on_steps(epoch - 1, step + 1)
                        next_tick = time.perf_counter() + PROGRESS_INTERVAL_S
                train_loss = torch.stack(losses).float().mean().item()
                if not math.isfinite(train_loss):
                    raise TrainingError(f"The training loss became {train_loss} in epoch {epoch}.",
                                        "Lower training.optimizer.lr, set training.clip_grad_norm: 1.0, "
                                        "or check the data for extreme values.")
                record = {"epoch": epoch, "train_loss": train_loss,
                          **validate(model, x_val, y_val, loss_fn, task, autocast, target_std),
                          "lr": optimizer.param_groups[0]["lr"], "epoch_s": time.perf_counter() - epoch_start}
                schedule.epoch_end(record["val_loss"])
                if stopper.update(record[monitor], epoch):
                    best_state = _snapshot(model)
                history.append(record)
                for callback in callbacks:
                    callback.on_epoch_end(record)
                final = epoch == cfg.epochs or stopper.should_stop or interrupt.requested
                if ckpt_dir and policy.due(epoch, final):
                    checkpoint(epoch)
                if stopper.should_stop or interrupt.requested:
                    result.stopped_early = stopper.should_stop
                    result.interrupted = interrupt.requested
                    break
    finally:
        for callback in callbacks:
            callback.close()

    if cfg.restore_best and best_state is not None:
        model.load_state_dict(best_state)
    result.best_epoch, result.best_value = stopper.best_epoch, stopper.best
    result.wall_s = time.perf_counter() - started
    return result


@torch.inference_mode()
def validate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module, task: str,
             autocast: Any, target_std: float = 1.0) -> dict[str, float]:
    """val_loss plus val_accuracy (classification) or val_mae / val_rmse / val_r2 in target units."""
    model.eval()
    with autocast():
        out = torch.cat([model(x[i:i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)]).float()
    if task == "classification":
        loss = loss_fn(out, y)
        acc = (out.argmax(1) == y).float().mean()
        values = torch.stack([loss, acc]).tolist()  # one device sync
        return {"val_loss": values[0], "val_accuracy": values[1]}
    pred = out.squeeze(-1)
    err = pred - y
    stats = torch.stack([loss_fn(pred, y), err.abs().mean(), (err ** 2).mean(), ((y - y.mean()) ** 2).mean()])
    loss, mae, mse, var = stats.tolist()
    return {"val_loss": loss, "val_mae": mae * target_std, "val_rmse": math.sqrt(mse) * target_std,
            "val_r2": 1 - mse / var if var > 0 else 0.0}


def _optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, cfg: TrainingConfig) -> None:
    if scaler:
        scaler.unscale_(optimizer)
    if cfg.clip_grad_norm:
        nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
    elif cfg.clip_grad_value:
        nn.utils.clip_grad_value_(model.parameters(), cfg.clip_grad_value)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _group_rows(step: int, accum: int, bs: int, batches: int, n_used: int) -> int:
    first = (step // accum) * accum
    last = min(first + accum, batches)
    return min(n_used, last * bs) - first * bs


def _tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.require(array, requirements=["C", "W"])).to(device)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _load_checkpoint(ckpt_dir: Path | None, device: torch.device) -> dict[str, Any]:
    path = ckpt_dir / "last.pt" if ckpt_dir else None
    if path is None or not path.is_file():
        raise RunDirError(f"Cannot resume: there is no checkpoint at {path}.",
                          "Resume a run directory that trained at least one epoch, or start a new run.")
    return torch.load(path, map_location=device, weights_only=False)


class _DeferredInterrupt:
    """Turn the first Ctrl-C / SIGTERM into a request to stop after the current epoch (and checkpoint);
    a second one interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

