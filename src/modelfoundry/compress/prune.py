"""Pruning: structured (fewer neurons / channels: a smaller, faster model of an ordinary config) and
unstructured (global magnitude: zeros in the weights), each followed by a short fine-tune.

Structured pruning builds a new model with `build_model` from a config with narrower `hidden` / `channels`
and fills it with the kept slices of the old weights, so saving, loading and ONNX export need nothing new.
Which units are kept:

* an MLP (or CNN dense) neuron scores `output scale x ||outgoing weights||_2`, where the output scale is
  |BN gamma| with batch norm (BN divides the incoming weights' scale away, so their norm means nothing)
  and otherwise the L2 norm of the incoming row with its bias (for ReLU-like activations the product of
  the incoming and outgoing norms is what survives rescaling one against the other);
* a CNN channel scores |BN gamma| (network slimming), or the L1 norm of its filter without batch norm.
  A stage with a residual block carries one set of channels through its downsampling conv, the block's
  output conv and the shortcut (x + f(x) needs the same channels on both sides), so those channels score
  the sum of both producers' scores (each divided by its mean); the block's inner channels are chosen on
  their own.

Kept units stay in their original order, so keep=1.0 rebuilds the original model exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from modelfoundry.artifacts.inputs import Inputs, InputSpec
from modelfoundry.config import CNNConfig, EarlyStoppingConfig, MLPConfig, SchedulerConfig, TrainingConfig
from modelfoundry.errors import ConfigError
from modelfoundry.models import build_model
from modelfoundry.models.layers import ConvBlock, LinearSkip, ResidualBlock
from modelfoundry.train.loop import FitResult, fit

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)
FINETUNE_PATIENCE = 3  # epochs without a val_loss improvement before a fine-tune stops

Index = torch.Tensor | None  # kept positions along a dimension, None: all of them


# ------------------------------------------------------------------------------------------ structured
def shrink_structured(model: nn.Module, model_cfg: MLPConfig | CNNConfig, keep: float,
                      inputs: InputSpec | None = None) -> tuple[nn.Module, MLPConfig | CNNConfig]:
    """A new, narrower model keeping the `keep` fraction of every hidden layer's neurons / stage's channels.

    Each width becomes max(1, round(width x keep)); depth is unchanged, and so are the inputs and outputs
    (an MLP's linear skip path is kept whole). The new model is built for `inputs` (the saved record's
    input spec); without it, for inputs derived from the first layers (which build the same layers).
    Returns the new model (in eval mode, on the CPU) and its config; `model` is left as it was.
    """
    if not 0 < keep <= 1:
        raise ConfigError(f"The 'keep' fraction of structured pruning must be in (0, 1]. Got {keep} instead.",
                          "Use for example compress.keep: [0.5, 0.25].")
    layers = _flow(model)
    if isinstance(model_cfg, MLPConfig):
        kept = _dense_kept(layers, keep)
        new_cfg = model_cfg.model_copy(update={"hidden": [len(k) for k in kept]})
        if inputs is None:
            in_features = next(m for m in layers if isinstance(m, nn.Linear)).in_features
            inputs = InputSpec.single("numeric", (1, in_features) if isinstance(layers[0], nn.Flatten)
                                      else (in_features,))
    elif isinstance(model_cfg, CNNConfig):
        kept, channels, hidden = _cnn_kept(layers, keep)
        new_cfg = model_cfg.model_copy(update={"channels": channels, "hidden": hidden})
        if inputs is None:
            pools = sum(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in layers)
            # any (C, H, W) with H = W = 2**pools makes build_cnn place the same pooling layers
            inputs = InputSpec.single("image", (layers[0].conv.in_channels, 2 ** pools, 2 ** pools))
    else:
        raise ConfigError(f"Structured pruning supports the mlp and cnn models. Got '{model_cfg.name}' instead.",
                          "Leave prune_structured out of compress.variants for this model.")
    n_outputs = [m for m in layers if isinstance(m, nn.Linear)][-1].out_features
    new = build_model(new_cfg, inputs, n_outputs)
    _copy_kept(layers, _flow(new), kept)
    if isinstance(model, LinearSkip):
        new.linear.load_state_dict(model.linear.state_dict())
    return new.eval(), new_cfg


def can_shrink(model_cfg: Any) -> bool:
    """Whether `shrink_structured` knows the model's layers (the mlp and cnn models)."""
    return isinstance(model_cfg, (MLPConfig, CNNConfig))


def _flow(model: nn.Module) -> list[nn.Module]:
    """The layers data flows through (an MLP's deep path; its linear skip is kept whole)."""
    return list(model.deep if isinstance(model, LinearSkip) else model)


def _top(score: torch.Tensor, keep: float) -> torch.Tensor:
    """Positions of the max(1, round(n x keep)) highest scores, in their original order."""
    return torch.topk(score, max(1, round(len(score) * keep))).indices.sort().values


def _scale(producer: nn.Module, norm: nn.Module, p: int) -> torch.Tensor:
    """How large each output unit of `producer` is: |gamma| of its batch norm, else the Lp norm of its
    weights (with the bias)."""
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
        return norm.weight.detach().abs()
    w = producer.weight.detach().flatten(1)
    if producer.bias is not None:
        w = torch.cat([w, producer.bias.detach()[:, None]], 1)
    return w.norm(p=p, dim=1)


def _dense_kept(layers: list[nn.Module], keep: float) -> list[torch.Tensor]:
    """Kept neurons of each hidden Linear of [..., Linear, (BatchNorm1d), act, (Dropout), ..., Linear]."""
    linears = [i for i, m in enumerate(layers) if isinstance(m, nn.Linear)]
    kept = []
    for here, after in zip(linears[:-1], linears[1:]):
        outgoing = layers[after].weight.detach().norm(dim=0)  # (width,)
        kept.append(_top(_scale(layers[here], layers[here + 1], 2) * outgoing, keep))
    return kept


def _cnn_kept(layers: list[nn.Module], keep: float) -> tuple[list[torch.Tensor], list[int], list[int]]:
    """(kept units in the order _copy_kept consumes them, new channels, new hidden): per stage its channels
    (then, with a residual block, the block's inner channels), then the dense hidden layers."""
    kept, channels = [], []
    for block, after in zip(layers, layers[1:] + [None]):
        if isinstance(block, ConvBlock):
            residual = after if isinstance(after, ResidualBlock) else None
            score = _scale(block.conv, block.norm, 1)
            if residual is not None:  # the shortcut carries the same channels: score both producers
                other = _scale(residual.conv2, residual.norm2, 1)
                score = score / score.mean().clamp_min(1e-12) + other / other.mean().clamp_min(1e-12)
            kept.append(_top(score, keep))
            channels.append(len(kept[-1]))
            if residual is not None:
                kept.append(_top(_scale(residual.conv1, residual.norm1, 1), keep))
    first = next(i for i, m in enumerate(layers) if isinstance(m, nn.Linear))
    dense = _dense_kept(layers[first:], keep)
    return kept + dense, channels, [len(k) for k in dense]


def _copy_kept(old_layers: list[nn.Module], new_layers: list[nn.Module], kept: list[torch.Tensor]) -> None:
    """Fill the new layers with the slices of the old ones that `kept` names, along the data flow."""
    pending = iter(kept)
    n_linear = sum(isinstance(m, nn.Linear) for m in old_layers)
    units: Index = None  # the channels / features flowing at this point (None: all the inputs)
    for a, b in zip(old_layers, new_layers):
        if isinstance(a, ConvBlock):
            out = next(pending)
            _copy_slices(a.conv, b.conv, out, units)
            _copy_slices(a.norm, b.norm, out, None)
            units = out
        elif isinstance(a, ResidualBlock):  # units -> inner -> units
            inner = next(pending)
            _copy_slices(a.conv1, b.conv1, inner, units)
            _copy_slices(a.norm1, b.norm1, inner, None)
            _copy_slices(a.conv2, b.conv2, units, inner)
            _copy_slices(a.norm2, b.norm2, units, None)
        elif isinstance(a, nn.Linear):
            n_linear -= 1
            out = next(pending) if n_linear else None  # the output layer keeps every output
            _copy_slices(a, b, out, units)
            units = out
        elif isinstance(a, nn.modules.batchnorm._BatchNorm):
            _copy_slices(a, b, units, None)


@torch.no_grad()
def _copy_slices(old: nn.Module, new: nn.Module, out: Index, inputs: Index) -> None:
    """Copy old's parameters and buffers into new's, keeping `out` along dim 0 and `inputs` along dim 1
    (weights (out, in, ...); biases and BN statistics (out,))."""
    target = new.state_dict()
    for name, tensor in old.state_dict().items():
        if tensor.ndim >= 1 and out is not None:
            tensor = tensor.index_select(0, out)
        if tensor.ndim >= 2 and inputs is not None:
            tensor = tensor.index_select(1, inputs)
        target[name].copy_(tensor)


def parameter_count(model: nn.Module) -> int:
    """The number of trainable and frozen parameters (a pruning mask's zeros still count)."""
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------- unstructured
def prune_unstructured(model: nn.Module, sparsity: float) -> nn.Module:
    """Zero the `sparsity` fraction of smallest-magnitude weights across all Linear / Conv layers (in place).

    The zeros are masks (torch.nn.utils.prune), so they stay zero while fine-tuning; `make_permanent`
    turns the model back into plain weights afterwards.
    """
    from torch.nn.utils import prune

    if not 0 <= sparsity < 1:
        raise ConfigError(f"The sparsity of unstructured pruning must be in [0, 1). Got {sparsity} instead.",
                          "Use for example compress.sparsity: [0.5, 0.8].")
    targets = [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=sparsity)
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    """Remove the pruning masks (in place): the state_dict holds plain weights, with their zeros."""
    from torch.nn.utils import prune

    for module in model.modules():
        if isinstance(module, PRUNABLE) and prune.is_pruned(module) and hasattr(module, "weight_orig"):
            prune.remove(module, "weight")
    return model


@torch.no_grad()
def sparsity_of(model: nn.Module) -> float:
    """The fraction of zeros among the Linear / Conv weights (masked or plain)."""
    zeros = total = 0
    for module in model.modules():
        if isinstance(module, PRUNABLE):
            weight = module.weight_orig * module.weight_mask if hasattr(module, "weight_mask") else module.weight
            zeros += int((weight == 0).sum())
            total += weight.numel()
    return zeros / total if total else 0.0


# ------------------------------------------------------------------------------------------- fine-tune
def finetune(model: nn.Module, X: dict[str, Inputs], y: dict[str, np.ndarray], training_cfg: TrainingConfig, *,
             task: str, epochs: int, lr_scale: float = 0.1, class_weights: np.ndarray | None = None,
             target_std: float = 1.0, seed: int = 0) -> FitResult:
    """A short fine-tune of a pruned model: the run's training settings with `epochs`, lr x `lr_scale`,
    cosine decay without warmup (none if the run had no schedule), early stopping on val_loss and the best
    epoch's weights restored. `X[split]` holds the model's named inputs. Trains `model` in place; epochs=0
    leaves it as it is."""
    if epochs <= 0:
        return FitResult(model, [], "val_loss", 0, None)
    cfg = finetune_config(training_cfg, epochs, lr_scale)
    torch.manual_seed(seed)  # dropout
    return fit(model, X, y, cfg, task=task, class_weights=class_weights, target_std=target_std, seed=seed,
               run_dir=None, progress=False)


def finetune_config(training_cfg: TrainingConfig, epochs: int, lr_scale: float) -> TrainingConfig:
    """The training settings of a fine-tune (see `finetune`); no checkpoints, as `finetune` passes no run_dir."""
    lr = training_cfg.optimizer.lr * lr_scale
    scheduler = SchedulerConfig(name="none" if training_cfg.scheduler.name == "none" else "cosine")
    update: dict[str, Any] = {
        "epochs": epochs, "optimizer": training_cfg.optimizer.model_copy(update={"lr": lr}),
        "scheduler": scheduler, "restore_best": True, "tensorboard": False,
        "early_stopping": EarlyStoppingConfig(monitor="val_loss", patience=min(FINETUNE_PATIENCE, max(1, epochs)))}
    return training_cfg.model_copy(update=update)

