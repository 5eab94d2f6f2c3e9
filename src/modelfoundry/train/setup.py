"""Everything the training loop needs, built in one place: device, model, loss, optimizer, schedule, scaler,
autocast and the batches. A wrapper that changes how training runs (DDP, Opacus, PEFT) wraps here, so `fit`
stays a plain loop over `setup.train`.

Batches come one of two ways, chosen by `training.data_loading` ('auto' decides from the data):

- **preloaded** (`PreloadedBatches`): every named input of a split is put on the device once and a batch is
  an index into it: no DataLoader, no copies per step - what a careful hand-written loop does when the
  data fits (the in-memory tables and images this platform trains on most).
- **streamed** (`StreamedBatches`): a DataLoader over the arrays where they are (host memory, or memory-mapped
  files that do not fit in memory), optionally with worker processes, each batch moved to the device as it
  comes (pinned memory on CUDA).

Both draw the epoch's permutation from the same generator (saved in checkpoints), so they give the same
batches in the same order: a seed trains the same model either way, and resuming is exact in both.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from modelfoundry.artifacts.inputs import PaddingTrim, padding_trim
from modelfoundry.config import TrainingConfig
from modelfoundry.train.features import frozen_inputs
from modelfoundry.train.optim import Schedule, build_loss, build_optimizer, decayed_parameters
from modelfoundry.train.runtime import autocast_dtype, select_device

PRELOAD_FRACTION = 0.5  # 'auto' preloads on an accelerator while the inputs take at most this share of its free memory
EVAL_BATCH = 4096

Batch = tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]  # rows (B,), inputs in spec order, targets (B,)


@dataclass
class TrainingSetup:
    """What `fit` iterates over and steps; built by `build_setup`."""

    model: nn.Module
    device: torch.device
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: Any  # torch.amp.GradScaler for fp16, else None
    autocast: Callable[[], Any]  # a fresh autocast context (or a null one) per call
    train: PreloadedBatches | StreamedBatches
    val: EvalInputs
    y_val: torch.Tensor
    l1_params: list[nn.Parameter]
    generator: torch.Generator  # the shuffling stream, saved in checkpoints
    eval_batch: int = EVAL_BATCH  # rows per validation forward (a language model's batch size: activations are large)
    net: nn.Module | None = None  # what the batches feed: the model, or the part above its frozen encoder
    feature_cache: dict[str, Any] | None = None  # frozen encoder: features from the disk cache or computed

    def __post_init__(self) -> None:
        if self.net is None:
            self.net = self.model

    @property
    def batches(self) -> int:
        return len(self.train)


def build_setup(model: nn.Module, X: Mapping[str, Mapping[str, np.ndarray]], y: Mapping[str, np.ndarray],
                cfg: TrainingConfig, *, task: str, class_weights: np.ndarray | None = None,
                seed: int = 0, feature_cache: bool = True) -> TrainingSetup:
    """The loop's parts for training `model` on X/y['train'] and validating on X/y['val'].

    `X[split]` holds the model's named inputs in its spec's order (numpy arrays, possibly memory-mapped).
    A model whose encoder training never changes (`frozen_features()`, train/features.py) has its encoder's
    outputs computed once (cached on disk with `feature_cache`), and the batches feed the part above it.
    """
    device = select_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    model.to(device)
    net, cached = model, None
    frozen = frozen_inputs(model, {s: X[s] for s in ("train", "val")}, device, feature_cache)
    if frozen is not None:
        net, X, cached = frozen
    loading = choose_loading(cfg.data_loading, [*X["train"].values(), *X["val"].values()], device)
    weights = torch.as_tensor(class_weights, device=device) if class_weights is not None else None
    own_loss = getattr(model, "training_loss", None)  # a causal LM applies its output layer inside its loss
    loss_fn = own_loss() if callable(own_loss) else build_loss(cfg.loss, task, weights, cfg.label_smoothing,
                                                               focal_gamma=cfg.focal_gamma)
    # a model may ask for its own parameter groups (layer-wise learning rates, parameters unfrozen later)
    grouping = getattr(model, "parameter_groups", None)
    optimizer = build_optimizer(model, cfg.optimizer, grouping(cfg.optimizer.lr) if callable(grouping) else None)
    generator = torch.Generator().manual_seed(seed)
    y_train = _tensor(y["train"], device)
    trim = padding_trim(list(X["train"])) if getattr(model, "padding_invariant", False) else None
    if loading == "preload":
        train: PreloadedBatches | StreamedBatches = PreloadedBatches(
            tuple(_tensor(a, device) for a in X["train"].values()), y_train, cfg.batch_size, generator, trim)
        val = EvalInputs(tuple(_tensor(a, device) for a in X["val"].values()), device, trim)
    else:
        train = StreamedBatches(tuple(X["train"].values()), y_train, cfg.batch_size, generator, device,
                                cfg.loader_workers, trim)
        val = EvalInputs(tuple(X["val"].values()), device, trim)
    schedule = Schedule(optimizer, cfg.scheduler, math.ceil(len(train) / cfg.accumulate_steps), cfg.epochs,
                        cfg.optimizer.lr)
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    amp_dtype = autocast_dtype(cfg.precision, device)
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    l1_params = decayed_parameters(model)[0] if cfg.l1 else []
    eval_batch = cfg.batch_size if task == "causal_lm" else EVAL_BATCH
    return TrainingSetup(model, device, loss_fn, optimizer, schedule, scaler, autocast, train, val,
                         _tensor(y["val"], device), l1_params, generator, eval_batch, net, cached)


def choose_loading(mode: str, arrays: list[np.ndarray], device: torch.device) -> str:
    """'preload' or 'stream' for `training.data_loading: mode` and these input arrays.

    'auto' streams when an array is memory-mapped (on disk: preloading would read it all into memory) or,
    on an accelerator, when the inputs would take more than PRELOAD_FRACTION of its free memory. In host
    memory preloading costs nothing: the tensors share the arrays' memory.
    """
    if mode != "auto":
        return mode
    if any(isinstance(a, np.memmap) for a in arrays):
        return "stream"
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return "preload" if sum(int(a.nbytes) for a in arrays) <= PRELOAD_FRACTION * free else "stream"
    return "preload"


def usable_rows(n: int, batch_size: int) -> int:
    """Rows an epoch uses: all but a lone last row (a batch of one would break BatchNorm; it is reshuffled in)."""
    return n - 1 if n % batch_size == 1 and n > 1 else n


class PreloadedBatches:
    """Batches as index slices of inputs that live on the device (B rows of each named input)."""

    def __init__(self, inputs: tuple[torch.Tensor, ...], y: torch.Tensor, batch_size: int,
                 generator: torch.Generator, trim: PaddingTrim | None = None):
        self.inputs, self.y, self.batch_size, self.generator, self.trim = inputs, y, batch_size, generator, trim
        self.rows = len(y)
        self.rows_used = usable_rows(self.rows, batch_size)

    def __len__(self) -> int:
        return math.ceil(self.rows_used / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        perm = torch.randperm(self.rows, generator=self.generator).to(self.y.device)
        bs = self.batch_size
        for step in range(len(self)):
            idx = perm[step * bs:(step + 1) * bs]
            batch = tuple(x[idx] for x in self.inputs)  # (B, *shape) each
            yield idx, self.trim(batch) if self.trim else batch, self.y[idx]


class StreamedBatches:
    """Batches read by a DataLoader from arrays in host memory or memory-mapped files, in the order
    `PreloadedBatches` would give them, each moved to the device as it comes."""

    def __init__(self, arrays: tuple[np.ndarray, ...], y: torch.Tensor, batch_size: int, generator: torch.Generator,
                 device: torch.device, workers: int = 0, trim: PaddingTrim | None = None):
        self.arrays, self.y, self.batch_size, self.generator, self.trim = arrays, y, batch_size, generator, trim
        self.device, self.workers = device, workers
        self.rows = len(y)
        self.rows_used = usable_rows(self.rows, batch_size)

    def __len__(self) -> int:
        return math.ceil(self.rows_used / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        from torch.utils.data import DataLoader

        # its own generator: a DataLoader draws its workers' base seed from it, which would otherwise be a draw
        # from torch's global stream and change dropout masks (streaming must train what preloading trains)
        loader = DataLoader(RowsDataset(self.arrays), batch_sampler=_PermutedBatches(self), collate_fn=_as_given,
                            num_workers=self.workers, pin_memory=self.device.type == "cuda",
                            generator=torch.Generator().manual_seed(0))
        for idx, inputs in loader:
            idx = idx.to(self.device, non_blocking=True)
            inputs = self.trim(inputs) if self.trim else inputs
            yield idx, tuple(x.to(self.device, non_blocking=True) for x in inputs), self.y[idx]


class RowsDataset:
    """Rows of aligned arrays; `__getitems__` reads a whole batch with one fancy index per array."""

    def __init__(self, arrays: tuple[np.ndarray, ...]):
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays[0])

    def __getitem__(self, row: int) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(np.array(a[row])) for a in self.arrays)

    def __getitems__(self, rows: list[int]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        index = np.asarray(rows, dtype=np.int64)
        return torch.from_numpy(index), tuple(torch.from_numpy(np.ascontiguousarray(a[index])) for a in self.arrays)


class _PermutedBatches:
    """The batch sampler: the epoch's permutation from the shared generator, cut into batches."""

    def __init__(self, batches: StreamedBatches):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        b = self.batches
        perm = torch.randperm(b.rows, generator=b.generator).tolist()
        for step in range(len(b)):
            yield perm[step * b.batch_size:(step + 1) * b.batch_size]


def _as_given(batch: Any) -> Any:  # module level: worker processes pickle the collate function
    return batch


class EvalInputs:
    """A split's inputs for evaluation, in chunks of EVAL_BATCH rows on the device (tensors already there,
    or arrays moved chunk by chunk)."""

    def __init__(self, inputs: tuple[Any, ...], device: torch.device, trim: PaddingTrim | None = None):
        self.inputs, self.device, self.trim = inputs, device, trim
        self.rows = len(inputs[0])

    def __len__(self) -> int:
        return self.rows

    def chunks(self, size: int = EVAL_BATCH) -> Iterator[tuple[torch.Tensor, ...]]:
        for start in range(0, max(self.rows, 1), size):  # an empty split: one empty chunk
            chunk = tuple(_tensor(x[start:start + size], self.device) if isinstance(x, np.ndarray)
                          else x[start:start + size] for x in self.inputs)
            yield self.trim(chunk) if self.trim and self.rows else chunk


def _tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.require(array, requirements=["C", "W"])).to(device)
