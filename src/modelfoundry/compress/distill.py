"""Knowledge distillation: train a smaller student on the teacher's soft labels plus the hard labels.

The student trains through the ordinary loop (`fit`) with a training loss that mixes both; validation,
early stopping and the metrics stay those of the labels, so the student is judged like any model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modelfoundry.artifacts.inputs import Inputs
from modelfoundry.config import FAST_MONITORS, TrainingConfig
from modelfoundry.errors import ConfigError
from modelfoundry.train.loop import FitResult, fit
from modelfoundry.train.optim import build_loss
from modelfoundry.train.runtime import select_device



# the width keys a derived student narrows, per teacher model; the depth (layers, heads) stays
WIDTHS: dict[str, tuple[str, ...]] = {
    "mlp": ("hidden",),
    "cnn": ("hidden", "channels"),
    "lstm": ("embedding_dim", "hidden", "head"),
    "gru": ("embedding_dim", "hidden", "head"),
    "transformer": ("d_model", "ff", "head"),
}


def can_derive_student(teacher_cfg: Any) -> bool:
    """Whether `student_config` can derive a student from this teacher (mlp, cnn, lstm, gru and transformer
    models; a pretrained encoder's student is given explicitly, e.g. a small lstm or transformer)."""
    return getattr(teacher_cfg, "name", None) in WIDTHS


def student_config(teacher_cfg: Any, shrink: float) -> Any:
    """The teacher's architecture with every width (hidden sizes, CNN channels, embedding and model widths,
    feed-forward widths) x `shrink`, at least 1; the depth stays. A transformer's d_model stays a multiple of
    its heads. A student given explicitly in the config needs no deriving: build it as it is."""
    if not 0 < shrink <= 1:
        raise ConfigError(f"The 'shrink' factor of a distillation student must be in (0, 1]. Got {shrink} instead.",
                          "Use for example compress.distill.shrink: 0.5.")
    if not can_derive_student(teacher_cfg):
        raise ConfigError(f"A student can be derived from {', '.join(WIDTHS)} teachers. Got "
                          f"'{teacher_cfg.name}' instead.",
                          "Give the student explicitly in compress.distill.student, e.g. "
                          "{name: lstm, embedding_dim: 64, hidden: 64} for a text model.")

    def narrow(width: int | list[int]) -> int | list[int]:
        if isinstance(width, list):
            return [max(1, round(w * shrink)) for w in width]
        return max(1, round(width * shrink))

    update = {key: narrow(getattr(teacher_cfg, key)) for key in WIDTHS[teacher_cfg.name]}
    if teacher_cfg.name == "transformer":  # each head keeps d_model / heads dimensions
        heads = teacher_cfg.heads
        update["d_model"] = max(heads, round(update["d_model"] / heads) * heads)
    return teacher_cfg.model_copy(update=update)


def distill(teacher: nn.Module, student: nn.Module, X: dict[str, Inputs], y: dict[str, np.ndarray],
            training_cfg: TrainingConfig, *, task: str, temperature: float = 4.0, alpha: float = 0.7, epochs: int,
            class_weights: np.ndarray | None = None, target_std: float = 1.0, seed: int = 0) -> FitResult:
    """Train `student` (in place) to imitate `teacher` on X['train'] (the named inputs of both) with the run's
    training settings.

    Classification: alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * the
    ordinary loss on the labels (the T^2 keeps the soft gradients' size independent of T, as in Hinton et
    al.). Regression: alpha * MSE(student, teacher) + (1 - alpha) * the ordinary loss. An early-stopping
    monitor the loop does not compute itself (val_f1_macro, ...) becomes val_loss.
    """
    device = select_device(training_cfg.device)
    teacher_out = teacher_outputs(teacher, X["train"], device)  # (N, n_outputs)
    if task == "regression":
        teacher_out = teacher_out.squeeze(-1)  # (N,): the shape of the training loss's outputs
    weights = torch.as_tensor(class_weights, device=device) if class_weights is not None else None
    hard_loss = build_loss(training_cfg.loss, task, weights, training_cfg.label_smoothing,
                           focal_gamma=training_cfg.focal_gamma)

    def loss(outputs: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        target = teacher_out[rows]
        outputs = outputs.float()
        if task == "classification":
            soft = F.kl_div(F.log_softmax(outputs / temperature, dim=1), F.log_softmax(target / temperature, dim=1),
                            reduction="batchmean", log_target=True) * temperature ** 2
        else:
            soft = F.mse_loss(outputs, target)
        return alpha * soft + (1 - alpha) * hard_loss(outputs, targets)

    update: dict = {"epochs": epochs}
    stopping = training_cfg.early_stopping
    if stopping is not None and stopping.monitor not in FAST_MONITORS:
        update["early_stopping"] = stopping.model_copy(update={"monitor": "val_loss"})
    torch.manual_seed(seed)  # dropout
    return fit(student, X, y, training_cfg.model_copy(update=update), task=task, class_weights=class_weights,
               target_std=target_std, seed=seed, run_dir=None, progress=False, train_loss=loss)


def teacher_outputs(teacher: nn.Module, x: Inputs, device: torch.device) -> torch.Tensor:
    """The teacher's raw outputs (logits) on the named inputs `x` (in the model's order), (N, n_outputs)
    float32 on `device`, computed once in eval mode as inference computes them (models/inference.py: text in
    batches cut to their longest text); the teacher goes back to where it was."""
    from modelfoundry.models.inference import model_outputs

    param = next(teacher.parameters(), None)
    was = param.device if param is not None else device
    teacher.eval().to(device)
    out = model_outputs(teacher, x).clone().to(device)  # a plain tensor (not an inference one): a loss target
    teacher.to(was)
    return out
