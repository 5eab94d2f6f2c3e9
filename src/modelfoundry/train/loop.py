"""The training loop: one function that reads top to bottom, plus validation and checkpoint helpers.

Its parts (device, loss, optimizer, schedule, scaler, batches) come from `train/setup.py`; batches are
index slices of inputs preloaded on the device when they fit, else streamed by a DataLoader.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import nn

from modelfoundry.artifacts.rundir import RunDir
from modelfoundry.config import TrainingConfig
from modelfoundry.errors import ConfigError, RunDirError, TrainingError
from modelfoundry.reporting import Reporter, reporter_for
from modelfoundry.train.averaging import build_average, save_snapshot, training_pass
from modelfoundry.train.callbacks import (Callback, CheckpointPolicy, EarlyStopping, MetricsLog, TensorBoardLogger,
                                          TrainingProgress, save_atomic)
from modelfoundry.train.runtime import restore_rng_state, rng_state
from modelfoundry.train.setup import EVAL_BATCH, EvalInputs, build_setup

if TYPE_CHECKING:
    from modelfoundry.data.augment import Augmenter

CHECKPOINT_FORMAT = 2  # 1 (modelfoundry 0.1) needed weights_only=False to load: it is refused
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


def fit(model: nn.Module, X: dict[str, dict[str, np.ndarray]], y: dict[str, np.ndarray], cfg: TrainingConfig, *,
        task: str, class_weights: np.ndarray | None = None, target_std: float = 1.0, seed: int = 0,
        run_dir: Path | None = None, resume: bool = False, progress: Reporter | bool | None = None,
        val_metrics: Callable[[np.ndarray], dict[str, float]] | None = None,
        callbacks: list[Callback] | None = None,
        train_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        feature_cache: bool = True, augmenter: Augmenter | None = None) -> FitResult:
    """Train `model` on X/y['train'], validating on X/y['val'] each epoch; X[split] holds the model's named
    inputs in its spec's order (artifacts/inputs.py).

    `val_metrics` maps the validation outputs (probabilities, or model-scale predictions) to extra
    `val_*` entries for the epoch record; the pipeline passes one when early stopping monitors a metric
    that the loop does not compute itself (val_f1_macro, val_roc_auc, ...).

    With `run_dir`, writes metrics.jsonl and checkpoints/{last,best}.pt there; `resume` continues from
    checkpoints/last.pt exactly where it stopped (weights, optimizer, schedule, RNG, early stopping).
    `callbacks` see each epoch record after the built-in ones; one may raise to end training (a tuning
    pruner does), and every callback is closed either way.

    `train_loss(outputs, targets, rows)` replaces the built loss on the training batches only (knowledge
    distillation passes one): `outputs` as the built loss sees them, (B, n_outputs) or (B,) for regression,
    and `rows` (B,) the positions of the batch in X['train']. Validation keeps the built loss.

    `progress`: a Reporter to report the steps and epochs to (the CLI passes its terminal one); None or a
    bool: none.

    A model with a frozen encoder (`frozen_features()`) has the encoder's outputs computed once, and the epochs
    train the part above it (train/features.py); `feature_cache` keeps those outputs on disk for the next run,
    and `extras["feature_cache"]` says whether they came from there.

    `augmenter` (data/augment.py) changes each training batch after it is drawn, with draws that depend on
    (seed, epoch, step) only; a mixed batch (mixup, cutmix) takes the mixed loss `Mix.loss`, also with `train_loss`.
    """
    started = time.perf_counter()
    setup = build_setup(model, X, y, cfg, task=task, class_weights=class_weights, seed=seed,
                        feature_cache=feature_cache)
    net = setup.net  # the model, or the part above its frozen encoder (fed the encoder's cached outputs)
    device, optimizer, schedule, scaler = setup.device, setup.optimizer, setup.schedule, setup.scaler
    loss_fn, autocast, l1_params, generator = setup.loss_fn, setup.autocast, setup.l1_params, setup.generator
    batches, accum, bs, n_used = setup.batches, cfg.accumulate_steps, cfg.batch_size, setup.train.rows_used
    if augmenter is not None and net is not model:
        raise ConfigError("data.augment: the model's frozen encoder has its outputs computed once, so changed inputs "
                          "would never reach it.", "Remove data.augment, or fine-tune the encoder (lora or full).")

    def batch_loss(pred: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return train_loss(pred, targets, rows) if train_loss is not None else loss_fn(pred, targets)

    epoch_hook = getattr(model, "on_epoch_start", None)
    epoch_hook = epoch_hook if callable(epoch_hook) else None
    monitor = cfg.early_stopping.monitor if cfg.early_stopping else "val_loss"
    stopper = EarlyStopping(monitor, cfg.early_stopping.patience if cfg.early_stopping else None,
                            cfg.early_stopping.min_delta if cfg.early_stopping else 0.0)
    history: list[dict[str, Any]] = []
    best = BestWeights(model)
    average = build_average(trained_state(model), cfg.average, cfg.epochs)  # training.average: swa / ema, or None
    start_epoch = 0
    finished = False
    partial: tuple[int, torch.Tensor, list[torch.Tensor]] | None = None  # (steps done, generator, losses) of an epoch
    layout = RunDir(run_dir or ".")  # resuming without a run directory reads ./checkpoints/last.pt
    if resume:
        state = load_checkpoint(layout.last_checkpoint, device)
        load_weights(model, state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        stopper.load_state_dict(state["early_stopping"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"], generator)
        history, start_epoch = state["history"], state["epoch"]
        best.load(state["best_model"])
        if average is not None:
            average.load_state_dict(state.get("average"))
        finished = checkpoint_finished(state, cfg)  # trained to its end or stopped early: train no further
        if state.get("step"):  # saved within epoch start_epoch + 1: redraw its batches, skip the ones done
            partial = (state["step"], state["epoch_generator"], [torch.tensor(v) for v in state["epoch_losses"]])

    extra_callbacks, callbacks = list(callbacks or []), []
    metrics_log = MetricsLog(layout.metrics_log, history) if run_dir else None
    if metrics_log:
        callbacks.append(metrics_log)
        if cfg.tensorboard:
            callbacks.append(TensorBoardLogger(run_dir / "tensorboard"))
    reporter = reporter_for(progress)  # None: nothing to report to, no work per step for it
    display = TrainingProgress(reporter, cfg.epochs, batches, start_epoch, monitor) if reporter else None
    if display:
        callbacks.append(display)
    callbacks.extend(extra_callbacks)
    policy = CheckpointPolicy(cfg.checkpoint.every_epochs, cfg.checkpoint.min_interval_s)
    every_steps = cfg.checkpoint.every_steps
    interrupt = _DeferredInterrupt()
    result = FitResult(model, history, monitor, stopper.best_epoch, stopper.best, device=str(device))

    best_saved = -1

    def checkpoint(epoch: int, within: tuple[int, torch.Tensor, list[torch.Tensor]] | None = None) -> None:
        """Save after `epoch`, or `within` it: (steps done, the generator before its batches, their losses)."""
        nonlocal best_saved
        extra = {"step": within[0], "epoch_generator": within[1], "epoch_losses": _floats(within[2])} \
            if within else {}
        save_atomic({"format": CHECKPOINT_FORMAT, "epoch": epoch - 1 if within else epoch, "epochs": cfg.epochs,
                     "finished": not within and (epoch == cfg.epochs or stopper.should_stop),
                     "model": trained_state(model), "optimizer": optimizer.state_dict(),
                     "schedule": schedule.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                     "early_stopping": stopper.state_dict(), "rng": rng_state(generator), "history": plain(history),
                     "best_model": best.state, "average": average.state_dict() if average else None, **extra},
                    layout.last_checkpoint)
        if best.state is not None and best_saved != best.version:  # best.pt only when it changed
            save_atomic(best.state, layout.best_checkpoint)
            best_saved = best.version
        metrics_log.flush()  # the log holds at least every checkpointed epoch
        policy.saved()

    result.stopped_early = finished and stopper.should_stop
    try:
        with interrupt:
            for epoch in range(start_epoch + 1, start_epoch + 1 if finished else cfg.epochs + 1):
                epoch_start = time.perf_counter()
                if epoch_hook is not None:  # e.g. gradual unfreezing: told the epoch, also when resuming
                    epoch_hook(epoch)
                model.train()
                losses, done, epoch_generator = [], 0, generator.get_state()
                if partial is not None:  # resuming within this epoch: the same batches, the first `done` skipped
                    done, epoch_generator, losses = partial
                    generator.set_state(epoch_generator)
                    partial = None
                next_tick = epoch_start + PROGRESS_INTERVAL_S
                for step, (idx, xb, yb) in enumerate(setup.train):  # (B,), inputs (B, *shape) each, (B,)
                    if step < done:
                        continue
                    mix = None
                    if augmenter is not None:  # the training batches only; the same changes when resumed
                        xb, mix = augmenter(xb, epoch, step)
                    with autocast():
                        out = net(*xb)  # (B, n_outputs)
                        pred = out.squeeze(-1) if task == "regression" else out
                        # a mixed batch: lam * loss(out, y) + (1 - lam) * loss(out, y[perm])
                        loss = batch_loss(pred, yb, idx) if mix is None else mix.loss(batch_loss, pred, yb, idx)
                    if l1_params:
                        loss = loss + cfg.l1 * sum(p.abs().sum() for p in l1_params)
                    # each micro-batch weighs its share of the rows in its accumulation group, so the
                    # accumulated gradient is exactly that of one large batch (also for a short last group)
                    scaled = loss * (len(idx) / _group_rows(step, accum, bs, batches, n_used)) if accum > 1 else loss
                    (scaler.scale(scaled) if scaler else scaled).backward()
                    losses.append(loss.detach())
                    if (step + 1) % accum == 0 or step + 1 == batches:
                        _optimizer_step(model, optimizer, scaler, cfg)
                        if average is not None:
                            average.step_end(epoch)
                        if schedule.active:
                            schedule.batch_end()
                        # long epochs (a language model) also save within them, and stop there on Ctrl-C
                        if run_dir and every_steps and step + 1 < batches and (
                                interrupt.requested or ((step + 1) // accum) % every_steps == 0):
                            checkpoint(epoch, (step + 1, epoch_generator, losses))
                            if interrupt.requested:
                                break
                    if display and time.perf_counter() > next_tick:
                        display.on_steps(epoch - 1, step + 1)
                        next_tick = time.perf_counter() + PROGRESS_INTERVAL_S
                if interrupt.requested and every_steps and run_dir and len(losses) < batches:  # saved within it
                    result.interrupted = True
                    break
                mean_loss = sum(_floats(losses)) / len(losses)  # losses are fp32, also under autocast
                if not math.isfinite(mean_loss):
                    raise TrainingError(f"The training loss became {mean_loss} in epoch {epoch}.",
                                        "Lower training.optimizer.lr, set training.clip_grad_norm: 1.0, "
                                        "or check the data for extreme values.")
                if task == "causal_lm":
                    val, val_out = validate_lm(net, setup.val, setup.y_val, loss_fn, autocast, setup.eval_batch)
                else:
                    val, val_out = validate(net, setup.val, setup.y_val, loss_fn, task, autocast, target_std)
                if val_metrics is not None:
                    val.update(val_metrics(_outputs_numpy(val_out, task)))
                record = {"epoch": epoch, "train_loss": mean_loss, **val,
                          "lr": optimizer.param_groups[0]["lr"], "epoch_s": time.perf_counter() - epoch_start}
                schedule.epoch_end(record["val_loss"])
                if stopper.update(record[monitor], epoch):
                    best.capture()
                history.append(record)
                if average is not None:
                    average.epoch_end(epoch)
                if run_dir and cfg.average.snapshots:  # snapshot ensembling: the last K epochs' weights
                    save_snapshot(trained_state(model), layout.checkpoints, epoch, cfg.average.snapshots)
                for callback in callbacks:
                    callback.on_epoch_end(record)
                final = epoch == cfg.epochs or stopper.should_stop or interrupt.requested
                if run_dir and policy.due(epoch, final):
                    checkpoint(epoch)
                if stopper.should_stop or interrupt.requested:
                    result.stopped_early = stopper.should_stop
                    result.interrupted = interrupt.requested
                    break
    finally:
        for callback in callbacks:
            callback.close()

    if net is not model:  # validation left only the part above the frozen encoder in eval mode
        model.eval()
    if average is not None and average.ready:  # the averaged weights replace the best epoch's
        average.apply(net, training_pass(setup.train, generator, autocast))
        result.extras["average"] = {"method": average.method, "from_epoch": average.first_epoch,
                                    "averaged": average.count}
    elif cfg.restore_best and best.state is not None:
        load_weights(model, best.state)
    result.best_epoch, result.best_value = stopper.best_epoch, stopper.best
    result.wall_s = time.perf_counter() - started
    if setup.feature_cache is not None:
        result.extras["feature_cache"] = setup.feature_cache
    return result


def validate(model: nn.Module, inputs: EvalInputs, y: torch.Tensor, loss_fn: nn.Module, task: str,
             autocast: Any, target_std: float = 1.0) -> tuple[dict[str, float], torch.Tensor]:
    """val_loss plus val_accuracy (classification) or val_mae / val_rmse / val_r2 in target units,
    and the raw outputs (N, n_outputs)."""
    model.eval()
    with torch.inference_mode():
        with autocast():
            outs = [model(*chunk) for chunk in inputs.chunks(EVAL_BATCH)]
            out = outs[0] if len(outs) == 1 else torch.cat(outs)
        if out.dtype != torch.float32:
            out = out.float()
        if task == "classification":
            loss, correct = _floats([loss_fn(out, y), (out.argmax(1) == y).sum()])
            return {"val_loss": loss, "val_accuracy": correct / len(y)}, out
        pred = out.squeeze(-1)
        err = pred - y
        loss, mae, mse, var = _floats([loss_fn(pred, y), err.abs().mean(), (err ** 2).mean(),
                                       ((y - y.mean()) ** 2).mean()])
    return {"val_loss": loss, "val_mae": mae * target_std, "val_rmse": math.sqrt(mse) * target_std,
            "val_r2": 1 - mse / var if var > 0 else 0.0}, out


def validate_lm(model: nn.Module, inputs: EvalInputs, labels: torch.Tensor, loss_fn: nn.Module, autocast: Any,
                batch: int) -> tuple[dict[str, float], None]:
    """A causal language model's val_loss (mean over the labelled tokens), val_perplexity and val_token_accuracy
    (the next token's argmax right); `loss_fn` is the model's training loss (its `totals`)."""
    model.eval()
    total = count = hits = 0.0
    start = 0
    with torch.inference_mode():
        with autocast():
            for chunk in inputs.chunks(batch):
                rows = len(chunk[0])
                summed, tokens, correct = loss_fn.totals(model(*chunk), labels[start:start + rows], correct=True)
                start += rows
                total, count, hits = total + float(summed), count + int(tokens), hits + int(correct)
    loss = total / max(count, 1)
    return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 700.0)),
            "val_token_accuracy": hits / max(count, 1)}, None


def _outputs_numpy(out: torch.Tensor, task: str) -> np.ndarray:
    if task == "classification":
        return torch.softmax(out.float(), dim=1).cpu().numpy().astype(np.float64)
    return out.float().squeeze(-1).cpu().numpy().astype(np.float64)


class BestWeights:
    """A copy of the weights of the best epoch, kept in preallocated tensors: capturing it is one batched
    copy, not a state_dict() and a clone of every tensor."""

    def __init__(self, model: nn.Module):
        self.live = trained_state(model)  # views of the parameters and buffers, updated in place by training
        self.state: dict[str, torch.Tensor] | None = None
        self.version = 0

    def capture(self) -> None:
        if self.state is None:
            self.state = {k: v.detach().clone() for k, v in self.live.items()}
        else:
            torch._foreach_copy_(list(self.state.values()), list(self.live.values()))
        self.version += 1

    def load(self, state: dict[str, torch.Tensor] | None) -> None:
        self.state = state
        self.version += 1


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights training changes, as views: all of them, or a model's `saved_state()` when it keeps
    pretrained weights unchanged (a LoRA or frozen encoder: checkpoints and best-epoch copies then hold the
    adapters and head, not 90 MB of base weights per save)."""
    partial = getattr(model, "saved_state", None)
    return partial() if callable(partial) else model.state_dict()


def load_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """`trained_state` back into the model."""
    load = getattr(model, "load_saved_state", None)
    if callable(load):
        load(state)
    else:
        model.load_state_dict(state)


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


def _floats(scalars: list[torch.Tensor]) -> list[float]:
    """Scalar tensors as Python floats: one .item() each on the CPU (cheapest there), one sync elsewhere."""
    if scalars[0].device.type == "cpu":
        return [t.item() for t in scalars]
    return torch.stack([t.float() for t in scalars]).tolist()


def _group_rows(step: int, accum: int, bs: int, batches: int, n_used: int) -> int:
    first = (step // accum) * accum
    last = min(first + accum, batches)
    return min(n_used, last * bs) - first * bs


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A last.pt written by `fit`, loaded data-only (weights_only=True: a checkpoint holding code is refused)."""
    if not path.is_file():
        raise RunDirError(f"Cannot resume: there is no checkpoint at {path}.",
                          "Resume a run directory that trained at least one epoch, or start a new run.")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt, or holding objects that are not plain data
        from modelfoundry.errors import first_line

        why = first_line(exc)
        if "Weights only load failed" in why or "Unsupported global" in str(exc):
            why = "it holds objects other than tensors and plain values, which could run code, so it was not loaded"
        raise RunDirError(f"Cannot resume from {path}: {why}.",
                          "The checkpoint is damaged or not from this version of modelfoundry; start a new run "
                          "(the run's finished model, if any, is in model/).") from None
    needed = {"epoch", "model", "optimizer", "schedule", "early_stopping", "rng", "history"}
    if not isinstance(state, dict) or not needed <= set(state):
        missing = sorted(needed - set(state)) if isinstance(state, dict) else sorted(needed)
        raise RunDirError(f"Cannot resume from {path}: it is not a modelfoundry checkpoint (missing "
                          f"{', '.join(missing)}).", "Start a new run.")
    return state


def checkpoint_finished(state: dict[str, Any], cfg: TrainingConfig) -> bool:
    """Whether a checkpoint's run ended (its last epoch, or early stopping): resuming it trains no further.

    Checkpoints record this as `finished`; for one without the flag, the epoch is compared with the
    epochs planned and the early-stopping state with the patience.
    """
    if "finished" in state:
        return bool(state["finished"])
    if state["epoch"] >= state.get("epochs", cfg.epochs):
        return True
    stopping = state.get("early_stopping") or {}
    return cfg.early_stopping is not None and stopping.get("bad_epochs", 0) >= cfg.early_stopping.patience


def plain(value: Any) -> Any:
    """`value` with numpy scalars and arrays turned into Python values and tensors (weights_only can load it)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    return value


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

