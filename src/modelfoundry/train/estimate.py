"""What training or serving a causal language model will need, worked out before it starts: memory item by
item, the time per step from a few timed steps, and the smaller configurations that would fit.

Memory for training is the process baseline (Python, torch, transformers imported: measured), the weights,
the gradients and optimizer state of the trainable parameters, and the activations of one micro-batch. The
parameter counts come from the model built on the meta device (nothing allocated, no weights read: exact for
any architecture, LoRA adapters and frozen layers included). The activations come from a *probe*: one block
of the same architecture (small vocabulary, uninitialised weights) runs rows of 16, 32 and 64 tokens while
autograd's saved-tensor hook adds up what the backward pass will keep; the three lengths separate a part per
token, a part per token^2 (eager attention's scores) and a constant (bf16 copies of the weights under
autocast). That is scaled to the batch, the length and the blocks the backward pass goes through. The output
layer's logits are counted where labels are only (CausalLM applies it there).

What autograd keeps is not yet the process's peak: the backward pass's own gradients, the kernels' first use
and the allocator's fragmentation come on top - PEAK_FACTOR and RUNTIME_BYTES, measured against the peak
resident memory of real training of a 27M-parameter Llama (full, LoRA, freeze, checkpointing, bf16: all within
20%; the slow test in tests/unit/test_estimate.py holds full and LoRA to 30%). Parameter gradients appear as
the backward pass frees activations, so they are not counted on top of them.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from modelfoundry.models.llm import LLMConfig

PEAK_FACTOR = 2.0  # process peak / activations autograd keeps (backward's gradients, allocator), measured
RUNTIME_BYTES = 64 << 20  # what the first training step adds whatever the model (kernels' pages, thread pools)
LOGIT_COPIES = 3  # fp32 (M, V): the log-softmax autograd keeps, its gradient and the logits' gradient
COMPLETION_SHARE = 0.5  # positions assumed labelled with data.lm.train_on: completion (prompts carry no loss)
HEADROOM = 0.10  # an estimate fits when it leaves this share of the available memory free
OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "adadelta": 2, "rmsprop": 1, "adagrad": 1, "sgd": 0}
PROBE_LENGTH = 16  # the probe runs rows of 1, 2 and 4 times this
PROBE_VOCAB = 64
DATA_BYTES_PER_TOKEN = 3 * 8  # tokens, attention mask and labels, int64 each, in memory for the run


@dataclass(frozen=True)
class TrainingPlan:
    """The settings memory and time depend on, as plain values (config keys in the comments)."""

    batch_size: int  # training.batch_size
    max_length: int  # data.lm.max_length
    accumulate_steps: int = 1  # training.accumulate_steps
    finetune: str = "lora"  # model.finetune
    gradient_checkpointing: bool = False  # model.gradient_checkpointing
    dtype: str = "float32"  # model.dtype
    precision: str = "fp32"  # training.precision
    optimizer: str = "adamw"  # training.optimizer.name
    momentum: float = 0.0  # training.optimizer.momentum (sgd, rmsprop: one more state)
    labelled_fraction: float = 0.5  # share of positions with a label: COMPLETION_SHARE, or 1 (train_on: all)

    def changes(self, other: TrainingPlan) -> dict[str, Any]:
        """The config keys (dotted) and values that turn this plan into `other`."""
        keys = {"batch_size": "training.batch_size", "max_length": "data.lm.max_length",
                "accumulate_steps": "training.accumulate_steps", "finetune": "model.finetune",
                "gradient_checkpointing": "model.gradient_checkpointing", "dtype": "model.dtype",
                "precision": "training.precision"}
        return {key: getattr(other, name) for name, key in keys.items() if getattr(other, name) != getattr(self, name)}


@dataclass(frozen=True)
class Architecture:
    """What a model's memory depends on, read from its Hugging Face config."""

    layers: int
    hidden: int
    kv_dim: int  # key/value heads x head size: a KV cache holds 2 x this per layer and token
    vocab: int
    context: int  # positions the model takes at most


@dataclass(frozen=True)
class Profile:
    """A model in one fine-tuning mode and precision: parameters and what autograd keeps per token."""

    params: int
    trainable: int
    weight_bytes: int
    trainable_bytes: int  # the trainable parameters' bytes: their gradients take as much
    adapter_params: int  # LoRA adapters (0 without)
    layer_bytes: float  # kept per token per block
    layer_bytes_t2: float  # kept per token^2 per block (attention scores of eager attention; 0 for SDPA)
    layer_fixed_bytes: float  # kept per block whatever the batch (bf16 copies of its weights under autocast)
    input_bytes: int  # a block's input per token (what gradient checkpointing keeps per block)
    blocks_with_grad: int  # blocks the backward pass goes through (freeze: from the lowest trainable one up)


@dataclass
class MemoryEstimate:
    """Bytes by item (`items`), their total, and whether that fits `available_bytes` with the headroom."""

    items: dict[str, int]
    available_bytes: int

    @property
    def total_bytes(self) -> int:
        return sum(self.items.values())

    @property
    def fits(self) -> bool:
        return self.total_bytes <= (1 - HEADROOM) * self.available_bytes


@dataclass
class Fallback:
    """A change to the config that would fit: its keys and values, and its own estimate."""

    changes: dict[str, Any]
    memory: MemoryEstimate
    plan: TrainingPlan = field(repr=False)

    def describe(self) -> str:
        return describe_changes(self.changes)


def describe_changes(changes: dict[str, Any]) -> str:
    """Config changes as YAML-like text: 'training.batch_size: 4, model.gradient_checkpointing: true'."""
    return ", ".join(f"{key}: {str(value).lower() if isinstance(value, bool) else value}"
                     for key, value in changes.items())


def training_memory(profile: Profile, arch: Architecture, plan: TrainingPlan, *, baseline_bytes: int,
                    available_bytes: int, data_rows: int | None = None) -> MemoryEstimate:
    """The memory of training with `plan`, item by item."""
    states = OPTIMIZER_STATES[plan.optimizer] + (plan.optimizer in ("sgd", "rmsprop") and plan.momentum > 0)
    activations = activation_bytes(profile, arch, plan)
    items = {"process baseline": baseline_bytes, "training runtime": RUNTIME_BYTES, "weights": profile.weight_bytes,
             "gradients": profile.trainable_bytes, "optimizer state": states * profile.trainable_bytes,
             "activations": activations,
             # the backward pass frees activations as it makes gradients (and the step frees the gradients)
             "gradients made as activations are freed": -min(profile.trainable_bytes, activations)}
    if data_rows:
        items["data"] = data_rows * plan.max_length * DATA_BYTES_PER_TOKEN
    return MemoryEstimate(items, available_bytes)


def activation_bytes(profile: Profile, arch: Architecture, plan: TrainingPlan) -> int:
    """What one micro-batch's forward and backward pass hold at their peak."""
    b, t = plan.batch_size, plan.max_length
    block = b * t * (profile.layer_bytes + profile.layer_bytes_t2 * t)  # one block, the whole micro-batch
    # checkpointing keeps each block's input, and the backward pass holds a recomputed block and the one
    # whose gradients it makes (2 blocks: measured 1042 MB of peak, 977 MB estimated; one block: 863 MB)
    n = profile.blocks_with_grad
    kept = n * profile.input_bytes * b * t + min(n, 2) * block if plan.gradient_checkpointing else n * block
    kept += n * profile.layer_fixed_bytes
    logits = LOGIT_COPIES * 4 * arch.vocab * math.ceil(b * t * plan.labelled_fraction)
    return int(PEAK_FACTOR * kept + logits)


def serving_memory(weight_bytes: int, arch: Architecture, *, dtype_bytes: int, max_streams: int,
                   context: int | None = None, baseline_bytes: int, available_bytes: int) -> MemoryEstimate:
    """The memory of serving: weights and a full KV cache (2 x layers x kv_heads x head_dim) per stream."""
    per_stream = 2 * arch.layers * arch.kv_dim * dtype_bytes * (context or arch.context)
    return MemoryEstimate({"process baseline": baseline_bytes, "weights": weight_bytes,
                           f"KV cache ({max_streams} streams)": per_stream * max_streams}, available_bytes)


def read_architecture(hf_config: Any) -> Architecture:
    """The shape facts of a Hugging Face causal-LM config (Llama-style names; GPT-2's map onto them)."""
    hf_config = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    heads = hf_config.num_attention_heads
    kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    context = getattr(hf_config, "max_position_embeddings", None) or getattr(hf_config, "n_positions", None) or 2048
    return Architecture(hf_config.num_hidden_layers, hf_config.hidden_size, kv_heads * head_dim,
                        hf_config.vocab_size, int(context))


def model_profile(config: LLMConfig, hf_config: Any, precision: str) -> Profile:
    """Parameters of the model `config` builds (on the meta device: nothing allocated) and the activations
    one block keeps per token (the probe), in `config`'s fine-tuning mode and `precision`."""
    import copy

    import torch

    plain = config.model_copy(update={"gradient_checkpointing": False})
    hf = _meta_model(hf_config, plain)
    params = {id(p): p for p in hf.parameters()}.values()  # tied weights once
    trainable = [p for p in params if p.requires_grad]
    adapters = sum(p.numel() for name, p in hf.named_parameters() if "lora_" in name)
    small = copy.deepcopy(hf_config)
    small.num_hidden_layers, small.vocab_size = 1, PROBE_VOCAB
    probe = _meta_model(small, plain.model_copy(update={"trainable_layers": [0][:len(config.trainable_layers)]}))
    probe = probe.to_empty(device="cpu").train()
    t = PROBE_LENGTH
    kept = [_kept_bytes(probe, n * t, precision) for n in (1, 2, 4)]  # c + a t + q t^2 at t, 2t, 4t
    d1, d2 = kept[1] - kept[0], kept[2] - kept[1]
    quadratic = max(0.0, (d2 - 2 * d1) / (6 * t * t))
    linear = (d1 - 3 * quadratic * t * t) / t
    constant = max(0.0, kept[0] - linear * t - quadratic * t * t)  # bf16 copies of the weights under autocast
    width = torch.empty((), dtype=getattr(torch, config.dtype)).element_size()
    return Profile(sum(p.numel() for p in params), sum(p.numel() for p in trainable),
                   sum(p.numel() * p.element_size() for p in params),
                   sum(p.numel() * p.element_size() for p in trainable), adapters,
                   layer_bytes=linear, layer_bytes_t2=quadratic, layer_fixed_bytes=constant,
                   input_bytes=hf_config.hidden_size * width, blocks_with_grad=blocks_with_grad(config, hf_config))


def blocks_with_grad(config: LLMConfig, hf_config: Any) -> int:
    """Blocks that keep activations for the backward pass: all, or with finetune: freeze those from the
    lowest trainable block up (below it nothing needs a gradient)."""
    layers = hf_config.num_hidden_layers
    if config.finetune != "freeze":
        return layers
    return layers - min(i % layers for i in config.trainable_layers) if config.trainable_layers else 0


def _meta_model(hf_config: Any, config: LLMConfig) -> nn.Module:
    import torch
    from transformers import AutoModelForCausalLM

    from modelfoundry.models.llm import prepare_finetuning

    with torch.device("meta"), warnings.catch_warnings():
        # peft asks transformers 5 for is_gradient_checkpointing (renamed) and sets fan_in_fan_out for GPT-2's
        # Conv1D layers itself, warning each time: said once already by the real model's build
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False", category=UserWarning)
        hf = AutoModelForCausalLM.from_config(hf_config).to(getattr(torch, config.dtype))
        return prepare_finetuning(hf, config)


def _kept_bytes(hf: nn.Module, length: int, precision: str) -> float:
    """Bytes autograd keeps for the backward pass of one row of `length` tokens through `hf`'s decoder
    (parameters excluded; each storage once)."""
    import contextlib

    import torch

    from modelfoundry.models.llm import plain_model

    weights = {p.untyped_storage().data_ptr() for p in hf.parameters()}
    kept: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = max(kept.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    tokens = torch.zeros(1, length, dtype=torch.long)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision != "fp32" else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), autocast:
        plain_model(hf).get_decoder()(input_ids=tokens, attention_mask=torch.ones_like(tokens), use_cache=False)
    return float(sum(kept.values()))


class TrainingEstimator:
    """Estimates for one base model and machine under any plan; a profile is made once per fine-tuning mode,
    dtype and precision (the rest - batch, length, checkpointing, optimizer - is arithmetic)."""

    def __init__(self, config: LLMConfig, hf_config: Any, *, baseline_bytes: int, available_bytes: int,
                 data_rows: int | None = None):
        self.config, self.hf_config = config, hf_config
        self.arch = read_architecture(hf_config)
        self.baseline_bytes, self.available_bytes, self.data_rows = baseline_bytes, available_bytes, data_rows
        self._profiles: dict[tuple[str, str, str], Profile] = {}

    def profile(self, plan: TrainingPlan) -> Profile:
        key = (plan.finetune, plan.dtype, plan.precision)
        if key not in self._profiles:
            config = self.config.model_copy(update={"finetune": plan.finetune, "dtype": plan.dtype})
            self._profiles[key] = model_profile(config, self.hf_config, plan.precision)
        return self._profiles[key]

    def memory(self, plan: TrainingPlan) -> MemoryEstimate:
        return training_memory(self.profile(plan), self.arch, plan, baseline_bytes=self.baseline_bytes,
                               available_bytes=self.available_bytes, data_rows=self.data_rows)

    def fallbacks(self, plan: TrainingPlan) -> list[Fallback]:
        """Changes to `plan` that would fit, each alone where one does, else together."""
        found = [f for f in (self._first_fitting(p) for p in candidate_plans(plan)) if f is not None]
        if found:
            return [replace(f, changes=plan.changes(f.plan)) for f in found]
        together = replace(plan, finetune="lora" if plan.finetune == "full" else plan.finetune,
                           gradient_checkpointing=True, precision="bf16" if plan.precision == "fp32" else plan.precision)
        batches = [together, *smaller_batches(together)]
        fit = self._first_fitting(batches + [replace(batches[-1], max_length=n) for n in shorter(plan.max_length)])
        return [replace(fit, changes=plan.changes(fit.plan))] if fit else []

    def _first_fitting(self, plans: list[TrainingPlan]) -> Fallback | None:
        for candidate in plans:
            memory = self.memory(candidate)
            if memory.fits:
                return Fallback({}, memory, candidate)
        return None


def candidate_plans(plan: TrainingPlan) -> list[list[TrainingPlan]]:
    """The single changes a refusal suggests, each a list tried in order (the first that fits is the one)."""
    options = [smaller_batches(plan)]
    if plan.finetune == "full":
        options.append([replace(plan, finetune="lora")])
    if not plan.gradient_checkpointing:
        options.append([replace(plan, gradient_checkpointing=True)])
    if plan.precision == "fp32":
        options.append([replace(plan, precision="bf16")])
    if plan.dtype == "float32":
        options.append([replace(plan, precision="bf16" if plan.precision == "fp32" else plan.precision,
                                dtype="bfloat16")])
    options.append([replace(plan, max_length=length) for length in shorter(plan.max_length)])
    return [option for option in options if option]


def shorter(max_length: int) -> list[int]:
    """Halved lengths down to 32 tokens (a shorter data.lm.max_length cuts longer examples)."""
    return [max_length >> k for k in range(1, 8) if max_length >> k >= 32]


def smaller_batches(plan: TrainingPlan) -> list[TrainingPlan]:
    """Halved micro-batches with more accumulation steps: the same effective batch (rounded up)."""
    effective = plan.batch_size * plan.accumulate_steps
    sizes = sorted({max(1, plan.batch_size >> k) for k in range(1, 12)} - {plan.batch_size}, reverse=True)
    return [replace(plan, batch_size=b, accumulate_steps=math.ceil(effective / b)) for b in sizes]


@dataclass(frozen=True)
class StepTiming:
    step_s: float  # one optimizer step of one micro-batch: forward, loss, backward, update
    tokens_s: float  # token positions per second (batch x length / step_s)


def time_steps(config: LLMConfig, plan: TrainingPlan, optimizer: Any, *, steps: int = 3, device: str = "cpu",
               threads: int | None = None, progress: Any = None) -> StepTiming:
    """Build the model as `config` says and time `steps` training steps on random tokens (after one warm-up),
    on `device` with `threads` CPU threads (training.num_threads; None: torch's default) as training would."""
    import contextlib
    import time

    import torch

    from modelfoundry.artifacts.inputs import InputField, InputSpec
    from modelfoundry.models.llm import build_llm
    from modelfoundry.train.optim import build_optimizer
    from modelfoundry.train.runtime import autocast_dtype, select_device

    b, t = plan.batch_size, plan.max_length
    where = select_device(device)
    if threads:
        torch.set_num_threads(threads)
    spec = InputSpec([InputField("tokens", "int64", (t,)), InputField("attention_mask", "int64", (t,))])
    model = build_llm(config, spec, 0).to(where).train()
    loss_fn, opt = model.training_loss(), build_optimizer(model, optimizer)
    amp = autocast_dtype(plan.precision, where)
    autocast = (lambda: torch.autocast(where.type, dtype=amp)) if amp else contextlib.nullcontext
    generator = torch.Generator().manual_seed(0)
    vocab = loss_fn.head.weight.shape[0]
    tokens = torch.randint(0, vocab, (b, t), generator=generator).to(where)
    labels = torch.randint(0, vocab, (b, t), generator=generator)
    labels[:, :t - max(1, round(t * plan.labelled_fraction))] = -100  # the prompt carries no loss
    labels, mask = labels.to(where), torch.ones_like(tokens)
    times = []
    if progress is not None:
        progress.start("timing training steps", steps + 1)
    for _ in range(steps + 1):
        start = time.perf_counter()
        with autocast():
            loss = loss_fn(model(tokens, mask), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        if progress is not None:
            progress.advance()
    if progress is not None:
        progress.finish()
    step_s = sorted(times[1:])[len(times[1:]) // 2]  # the median, after the warm-up
    return StepTiming(step_s, b * t / step_s)


def process_baseline_bytes() -> int:
    """Resident memory of a fresh process that imported what training imports, measured once per process."""
    return _baseline()


@lru_cache(maxsize=1)
def _baseline() -> int:
    # the peak of the child's own memory: VmHWM, not ru_maxrss, which on Linux keeps the high-water mark of the
    # process it was forked from (a big test runner or server would be counted as the child's baseline)
    code = ("import torch, transformers, peft, pandas, modelfoundry.models.llm_module, modelfoundry.train.setup; "
            "from modelfoundry.train.estimate import peak_rss_bytes; print(peak_rss_bytes())")
    env = {**os.environ, "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return int(out.stdout.split()[-1])


def peak_rss_bytes() -> int:
    """This process's peak resident memory since it started (or since its exec)."""
    return _status_bytes("VmHWM:")


def current_rss_bytes() -> int:
    """This process's resident memory now."""
    return _status_bytes("VmRSS:")


def _status_bytes(field: str) -> int:
    """A memory field of /proc/self/status in bytes; where there is none, the process's peak from getrusage."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def available_memory_bytes() -> int:
    """Memory a new allocation can have: MemAvailable, or the cgroup's limit less its usage when lower."""
    found = []
    meminfo = _read("/proc/meminfo")
    for line in (meminfo or "").splitlines():
        if line.startswith("MemAvailable:"):
            found.append(int(line.split()[1]) * 1024)
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        cap, used = _read(limit), _read(usage)
        if cap and used and cap.strip().isdigit() and int(cap) < 1 << 60:
            found.append(max(0, int(cap) - int(used)))
    if not found:
        found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return min(found)


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None
