"""What happens around the loop: early stopping, checkpoints, the metrics log, progress, TensorBoard."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any, Protocol

import torch

from modelfoundry.config import monitor_mode
from modelfoundry.reporting import Reporter
from modelfoundry.storage import write_bytes_atomic


class Callback(Protocol):
    def on_epoch_end(self, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class EarlyStopping:
    """Track the best value of a monitored metric and say when `patience` epochs passed without a better one."""

    def __init__(self, monitor: str, patience: int | None, min_delta: float = 0.0):
        self.monitor = monitor
        self.mode = monitor_mode(monitor)
        self.patience = patience
        self.min_delta = min_delta
        self.best: float | None = None
        self.best_epoch = 0
        self.bad_epochs = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record `value` for `epoch`; True when it is the best so far."""
        better = self.best is None or (value < self.best - self.min_delta if self.mode == "min"
                                       else value > self.best + self.min_delta)
        if better:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, then rename: a kill mid-write never leaves a truncated checkpoint."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(path, buffer.getvalue())


class MetricsLog:
    """metrics.jsonl: one JSON object per epoch, appended as the epoch ends."""

    def __init__(self, path: Path, history: list[dict[str, Any]]):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if history:  # resuming: a killed run may have logged epochs it never checkpointed; keep only those it did
            write_bytes_atomic(path, "".join(json.dumps(r) + "\n" for r in history).encode())
        self.handle = open(path, "a" if history else "w", encoding="utf-8")
        self.next_flush = 0.0

    FLUSH_INTERVAL_S = 1.0  # lines reach the file at least this often (and at the end); resume never reads it

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        self.handle.write(json.dumps(record) + "\n")
        if time.perf_counter() >= self.next_flush:
            self.handle.flush()
            self.next_flush = time.perf_counter() + self.FLUSH_INTERVAL_S

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


class TrainingProgress:
    """Training as progress: all optimizer steps, with the live train loss and validation metric (on a `live`
    reporter, a bar), or else a line per epoch; when epochs are quick, every Nth epoch (about one line per
    LOG_INTERVAL_S), said once, and always the last."""

    LOG_INTERVAL_S = 5.0

    def __init__(self, reporter: Reporter, total_epochs: int, steps_per_epoch: int, start_epoch: int, monitor: str):
        self.reporter = reporter
        self.monitor = monitor
        self.steps_per_epoch = steps_per_epoch
        self.total_epochs = total_epochs
        self.every, self.unprinted = 0, None
        self.steps_since: tuple[int, int, float] | None = None  # (epoch, step, time) the step rate is counted from
        self.next_step_line = 0.0
        reporter.start("train", total_epochs * steps_per_epoch, completed=start_epoch * steps_per_epoch)

    STEP_LOG_INTERVAL_S = 30.0  # off a terminal, a long epoch (a language model's) says how far it is this often

    def on_steps(self, epoch: int, step: int) -> None:
        self.reporter.advance(epoch * self.steps_per_epoch + step)
        if self.reporter.live:
            return
        now = time.perf_counter()
        if self.steps_since is None or self.steps_since[0] != epoch or step < self.steps_since[1]:
            self.steps_since, self.next_step_line = (epoch, step, now), now + self.STEP_LOG_INTERVAL_S
        elif now >= self.next_step_line:
            per_step = (now - self.steps_since[2]) / max(step - self.steps_since[1], 1)
            left = (self.steps_per_epoch - step) * per_step
            self.reporter.message(f"epoch {epoch + 1}/{self.total_epochs}  step {step}/{self.steps_per_epoch}  "
                                  f"{per_step:.2f} s/step, epoch done in ~{left / 60:.1f} min")
            self.next_step_line = now + self.STEP_LOG_INTERVAL_S

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        epoch = record["epoch"]
        stats = f"loss {record['train_loss']:.4f}  val_loss {record['val_loss']:.4f}"
        if self.monitor != "val_loss" and self.monitor in record:
            stats += f"  {self.monitor} {record[self.monitor]:.4f}"
        line = f"epoch {epoch}/{self.total_epochs}  {stats}"
        if self.reporter.live:
            self.reporter.advance(epoch * self.steps_per_epoch, status=line)
            return
        if not self.every:  # the first epoch of this process: a line, and it sets the pace
            self.reporter.message(line)
            self.every = line_every(record.get("epoch_s", 0.0), self.LOG_INTERVAL_S)
            if self.every > 1 and epoch < self.total_epochs:
                self.reporter.message(f"(epochs take {record['epoch_s']:.2g} s: printing every "
                                      f"{ordinal(self.every)} epoch and the last)")
            self.unprinted = None
        elif epoch % self.every == 0 or epoch == self.total_epochs:
            self.reporter.message(line)
            self.unprinted = None
        else:
            self.unprinted = line

    def close(self) -> None:
        if self.unprinted is not None:  # stopped early or interrupted between printed epochs: show where
            self.reporter.message(self.unprinted)
            self.unprinted = None
        self.reporter.finish()


def line_every(epoch_s: float, interval_s: float) -> int:
    """Print every Nth epoch so that lines come about every `interval_s`: N from 1, 2, 5, 10, 20, 50, ..."""
    step = 1
    while step * epoch_s < interval_s and step < 10 ** 6:
        step = step * 5 // 2 if str(step).startswith("2") else step * 2
    return step


def ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


class TensorBoardLogger:
    """Per-epoch scalars for TensorBoard (`tensorboard --logdir RUN_DIR/tensorboard`)."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, record["epoch"])

    def close(self) -> None:
        self.writer.close()


class CheckpointPolicy:
    """When to write last.pt: every `every_epochs` epochs, but not more often than `min_interval_s`."""

    def __init__(self, every_epochs: int, min_interval_s: float):
        self.every_epochs = every_epochs
        self.min_interval_s = min_interval_s
        self.last_save = time.perf_counter()

    def due(self, epoch: int, final: bool) -> bool:
        if final:
            return True
        return epoch % self.every_epochs == 0 and time.perf_counter() - self.last_save >= self.min_interval_s

    def saved(self) -> None:
        self.last_save = time.perf_counter()
