"""The GAN's training loop (`data.task: generative`): two Adam optimizers (betas 0.5, 0.999), alternating
discriminator and generator steps, one-sided label smoothing, gradient clipping; in the same run-directory
machinery as `fit` (metrics.jsonl per epoch, checkpoints/{last,best}.pt with both networks, both optimizers and
every RNG, exact resume, Ctrl-C finishing the epoch and checkpointing).

Per epoch it records d_loss, g_loss, d_real (the discriminator's mean probability that real rows are real),
d_fake (the same for generated rows) and, when the caller gives a `quality` function, its numbers on rows
generated for the validation split (`val_fd`, the Frechet distance to the validation rows: lower is better).
best.pt holds the epoch with the lowest `val_fd` (the last epoch without one).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from modelfoundry.artifacts.rundir import RunDir
from modelfoundry.config import TrainingConfig
from modelfoundry.errors import TrainingError
from modelfoundry.reporting import Reporter, reporter_for
from modelfoundry.train.callbacks import (
    Callback,
    CheckpointPolicy,
    MetricsLog,
    TrainingProgress,
    line_every,
    ordinal,
    save_atomic,
)
from modelfoundry.train.loop import (
    CHECKPOINT_FORMAT,
    PROGRESS_INTERVAL_S,
    BestWeights,
    FitResult,
    _DeferredInterrupt,
    load_checkpoint,
    load_weights,
    plain,
    trained_state,
)
from modelfoundry.train.runtime import restore_rng_state, rng_state, select_device

MONITOR = "val_fd"


def fit_gan(model: Any, X: dict[str, dict[str, np.ndarray]], y: dict[str, np.ndarray], cfg: TrainingConfig, *,
            g_lr: float, d_lr: float, label_smoothing: float = 0.1, n_critic: int = 1, ema_decay: float = 0.0,
            seed: int = 0,
            run_dir: Path | None = None, resume: bool = False, progress: Reporter | bool | None = None,
            quality: Callable[[np.ndarray], dict[str, float]] | None = None,
            callbacks: list[Callback] | None = None) -> FitResult:
    """Train the GAN `model` (models/gan_module.py) on X['train'] (its one input) and y['train'] (class indices,
    read when the GAN is conditional) for `cfg.epochs` epochs of `cfg.batch_size` rows.

    `ema_decay` > 0 keeps an exponential moving average of the generator's weights (GeneratorAverage): it is the
    generator scored each epoch, kept as the best and returned. `quality(generated)` maps rows generated for the
    validation split (as many, with its classes) to the epoch's `val_*` numbers; `callbacks` see each epoch record (one may raise to end training). With `run_dir`, writes
    metrics.jsonl and checkpoints there; `resume` continues from checkpoints/last.pt exactly where it stopped.
    """
    started = time.perf_counter()
    device = select_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    model.to(device)
    name = next(iter(X["train"]))
    real_all = torch.from_numpy(np.array(X["train"][name], dtype=np.float32)).to(device)  # (N, *shape)
    labels_all = torch.from_numpy(np.array(y["train"], dtype=np.int64)).to(device)  # (N,)
    n_rows, bs = len(real_all), cfg.batch_size
    batches = max(1, -(-n_rows // bs) - (1 if n_rows > bs and n_rows % bs == 1 else 0))  # no 1-row batch (BatchNorm)
    g_opt = torch.optim.Adam(model.generator_parameters(), lr=g_lr, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(model.discriminator_parameters(), lr=d_lr, betas=(0.5, 0.999))
    generator = torch.Generator().manual_seed(seed)  # the shuffles and the noise
    history: list[dict[str, Any]] = []
    best, best_value, best_epoch, start_epoch, finished = BestWeights(model), None, 0, 0, False
    average = GeneratorAverage(model.generator, ema_decay) if ema_decay else None
    layout = RunDir(run_dir or ".")
    if resume:
        state = load_checkpoint(layout.last_checkpoint, device)
        load_weights(model, state["model"])
        g_opt.load_state_dict(state["optimizer"]["generator"])
        d_opt.load_state_dict(state["optimizer"]["discriminator"])
        restore_rng_state(state["rng"], generator)
        history, start_epoch, finished = state["history"], state["epoch"], bool(state.get("finished"))
        best_value, best_epoch = state["early_stopping"]["best"], state["early_stopping"]["best_epoch"]
        best.load(state["best_model"])
        if average is not None and state.get("generator_average"):
            average.load_state_dict(state["generator_average"])

    callbacks = list(callbacks or [])
    metrics_log = MetricsLog(layout.metrics_log, history) if run_dir else None
    callbacks = ([metrics_log] if metrics_log else []) + callbacks
    reporter = reporter_for(progress)
    lines = EpochLines(reporter, cfg.epochs) if reporter else None
    if reporter:
        reporter.start("train", cfg.epochs * batches, completed=start_epoch * batches)
    policy = CheckpointPolicy(cfg.checkpoint.every_epochs, cfg.checkpoint.min_interval_s)
    interrupt = _DeferredInterrupt()
    result = FitResult(model, history, MONITOR, best_epoch, best_value, device=str(device))
    clip = _clipper(cfg)

    def checkpoint(epoch: int) -> None:
        save_atomic({"format": CHECKPOINT_FORMAT, "epoch": epoch, "epochs": cfg.epochs,
                     "finished": epoch == cfg.epochs, "model": trained_state(model),
                     "optimizer": {"generator": g_opt.state_dict(), "discriminator": d_opt.state_dict()},
                     "schedule": {}, "early_stopping": {"best": best_value, "best_epoch": best_epoch},
                     "rng": rng_state(generator), "history": plain(history), "best_model": best.state,
                     "generator_average": average.state_dict() if average is not None else None},
                    layout.last_checkpoint)
        if best.state is not None:
            save_atomic(best.state, layout.best_checkpoint)
        metrics_log.flush()
        policy.saved()

    real_target = 1.0 - label_smoothing
    try:
        with interrupt:
            for epoch in range(start_epoch + 1, start_epoch + 1 if finished else cfg.epochs + 1):
                epoch_start = time.perf_counter()
                model.train()
                order = torch.randperm(n_rows, generator=generator)
                sums = torch.zeros(4)  # d_loss, g_loss, D(x), D(G(z)) summed over the steps
                g_steps, next_tick = 0, epoch_start + PROGRESS_INTERVAL_S
                for step in range(batches):
                    idx = order[step * bs:(step + 1) * bs if step + 1 < batches else n_rows].to(device)
                    real, labels = real_all[idx], labels_all[idx] if model.conditional else None
                    z = torch.randn(len(idx), model.latent_dim, generator=generator).to(device)  # (B, latent)
                    fake = model(z, labels)  # (B, *shape)
                    d_real = model.discriminate(real, labels)  # (B,) logits
                    d_fake = model.discriminate(fake.detach(), labels)
                    d_loss = (F.binary_cross_entropy_with_logits(d_real, torch.full_like(d_real, real_target))
                              + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
                    d_opt.zero_grad(set_to_none=True)
                    d_loss.backward()
                    clip(model.discriminator_parameters())
                    d_opt.step()
                    if (step + 1) % n_critic == 0 or step + 1 == batches:  # the generator: fool the updated critic
                        g_logits = model.discriminate(fake, labels)
                        g_loss = F.binary_cross_entropy_with_logits(g_logits, torch.ones_like(g_logits))
                        g_opt.zero_grad(set_to_none=True)
                        g_loss.backward()
                        clip(model.generator_parameters())
                        g_opt.step()
                        if average is not None:
                            average.update()
                        sums[1] += g_loss.detach().cpu()
                        g_steps += 1
                    sums[0] += d_loss.detach().cpu()
                    sums[2] += torch.sigmoid(d_real.detach()).mean().cpu()
                    sums[3] += torch.sigmoid(d_fake.detach()).mean().cpu()
                    if reporter and time.perf_counter() > next_tick:
                        reporter.advance((epoch - 1) * batches + step + 1)
                        next_tick = time.perf_counter() + PROGRESS_INTERVAL_S
                d_mean, g_sum, d_x, d_gz = sums.tolist()
                record = {"epoch": epoch, "d_loss": d_mean / batches, "g_loss": g_sum / max(g_steps, 1),
                          "d_real": d_x / batches, "d_fake": d_gz / batches}
                if not all(np.isfinite(v) for v in record.values()):
                    raise TrainingError(f"The GAN's losses became infinite or NaN in epoch {epoch}.",
                                        "Lower model.g_lr and model.d_lr, or set training.clip_grad_norm: 1.0.")
                with average.swapped() if average is not None else nullcontext():  # the averaged generator
                    if quality is not None:
                        record.update(quality(_validation_samples(model, y["val"], seed + epoch)))
                    value = record.get(MONITOR)
                    if value is None or best_value is None or value < best_value:  # without a score: the last epoch
                        best_value, best_epoch = value, epoch
                        best.capture()
                record["epoch_s"] = time.perf_counter() - epoch_start
                history.append(record)
                for callback in callbacks:
                    callback.on_epoch_end(record)
                if lines:
                    lines.show(record, epoch * batches)
                if run_dir and policy.due(epoch, epoch == cfg.epochs or interrupt.requested):
                    checkpoint(epoch)
                if interrupt.requested:
                    result.interrupted = True
                    break
    finally:
        for callback in callbacks:
            callback.close()
        if reporter:
            reporter.finish()
    if cfg.restore_best and best.state is not None:
        load_weights(model, best.state)
    elif average is not None:
        average.copy_to_generator()
    model.eval()
    result.best_epoch, result.best_value = best_epoch, best_value
    result.wall_s = time.perf_counter() - started
    return result


class GeneratorAverage:
    """An exponential moving average of the generator's parameters and BatchNorm statistics, updated after each
    generator step with decay min(decay, (1 + t) / (10 + t)) at step t, so early steps are not swamped by the
    initial weights. GAN samples from averaged weights are markedly better than from the last step's."""

    def __init__(self, generator: nn.Module, decay: float):
        self.generator, self.decay, self.steps = generator, decay, 0
        self.live = generator.state_dict()  # views, updated in place by training
        self.average = {k: v.detach().clone() for k, v in self.live.items()}

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        floats = [k for k, v in self.live.items() if v.is_floating_point()]
        torch._foreach_lerp_([self.average[k] for k in floats], [self.live[k] for k in floats], 1 - decay)
        for key in self.live.keys() - set(floats):  # counters (BatchNorm's num_batches_tracked)
            self.average[key].copy_(self.live[key])

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """The averaged weights in the generator inside the block, the trained ones back after it."""
        kept = {k: v.detach().clone() for k, v in self.live.items()}
        self.copy_to_generator()
        try:
            yield
        finally:
            self.generator.load_state_dict(kept)

    def copy_to_generator(self) -> None:
        self.generator.load_state_dict(self.average)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "average": self.average}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        for key, value in state["average"].items():
            self.average[key].copy_(value)


class EpochLines:
    """An epoch's numbers as a line: the status of a live bar, or else a message for the first epoch, then about
    one every TrainingProgress.LOG_INTERVAL_S (every Nth epoch), and the last."""

    def __init__(self, reporter: Reporter, epochs: int):
        self.reporter, self.epochs, self.every = reporter, epochs, 0

    def show(self, record: dict[str, Any], steps: int) -> None:
        epoch = record["epoch"]
        line = (f"epoch {epoch}/{self.epochs}  d_loss {record['d_loss']:.4f}  g_loss {record['g_loss']:.4f}  "
                f"D(x) {record['d_real']:.3f}  D(G(z)) {record['d_fake']:.3f}"
                + (f"  {MONITOR} {record[MONITOR]:.4f}" if MONITOR in record else ""))
        if self.reporter.live:
            self.reporter.advance(steps, status=line)
        elif not self.every:
            self.reporter.message(line)
            self.every = line_every(record["epoch_s"], TrainingProgress.LOG_INTERVAL_S)
            if self.every > 1 and epoch < self.epochs:
                self.reporter.message(f"(epochs take {record['epoch_s']:.2g} s: printing every {ordinal(self.every)} "
                                      "epoch and the last)")
        elif epoch % self.every == 0 or epoch == self.epochs:
            self.reporter.message(line)


def _validation_samples(model: Any, y_val: np.ndarray, seed: int) -> np.ndarray:
    """As many generated rows as the validation split has (with its classes), from a generator of their own
    (the training RNG is left as it is), flattened: (N, features)."""
    labels = torch.from_numpy(np.array(y_val, dtype=np.int64)) if model.conditional else None
    rows = model.sample(len(y_val), labels, generator=torch.Generator().manual_seed(seed))
    return rows.reshape(len(y_val), -1).cpu().numpy().astype(np.float64)


def _clipper(cfg: TrainingConfig) -> Callable[[list[nn.Parameter]], None]:
    """training.clip_grad_norm or clip_grad_value applied to one network's gradients (or nothing)."""
    if cfg.clip_grad_norm:
        return lambda params: nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)
    if cfg.clip_grad_value:
        return lambda params: nn.utils.clip_grad_value_(params, cfg.clip_grad_value)
    return lambda params: None
