"""`estimate`: the memory and time a language model's training (or serving) will need, before it starts, and
the configurations that would fit when it won't (train/estimate.py does the arithmetic).

`preflight(config)` is what `foundry run` calls first for a language model: no timed steps, and a
TrainingError listing the fallbacks when the training won't fit. `preflight_serving(...)` is the server's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelfoundry.api.arguments import as_config
from modelfoundry.config import Config
from modelfoundry.errors import ConfigError, ServingError, TrainingError
from modelfoundry.reporting import Reporter, reporter_for

SIZE_CHECK_BYTES = 512 << 20  # data files up to this size are read to count their rows


@dataclass
class EstimateResult:
    """What a training (or serving) will need: bytes by item, their total, the machine's available memory,
    the verdict, the time per step when timed, and the changes that would fit."""

    kind: str  # "training" or "serving"
    model: str  # the base model
    items: dict[str, int]
    total_bytes: int
    available_bytes: int
    fits: bool
    settings: dict[str, Any]  # the config keys the estimate depends on, with their values
    parameters: dict[str, int] = field(default_factory=dict)  # total, trainable, adapters
    step_s: float | None = None  # one micro-batch's training step (forward, loss, backward, update)
    tokens_s: float | None = None
    train_rows: int | None = None  # training examples, when cheap to know (the file's rows less val and test)
    epoch_s: float | None = None  # train_rows' batches x step_s
    per_1000_rows_s: float | None = None  # the time of 1000 training rows (packed rows hold several examples)
    fallbacks: list[dict[str, Any]] = field(default_factory=list)  # {"changes": {key: value}, "total_bytes": n}

    def summary(self, items: int | None = None) -> str:
        """One line for people: total of available, and the largest `items` items (all that are not zero)."""
        largest = [(n, b) for n, b in sorted(self.items.items(), key=lambda item: -item[1]) if b > 0][:items]
        return (f"Memory estimate: {gib(self.total_bytes)} of {gib(self.available_bytes)} available ("
                + ", ".join(f"{name} {gib(size)}" for name, size in largest) + ").")

    def hint(self) -> str:
        """The fallbacks as one sentence, for an error's hint."""
        if not self.fallbacks:
            return ("No single change fits this machine: use a smaller base model, or a machine with more memory "
                    "(`foundry estimate CONFIG` shows the items).")
        options = "; or ".join(f"{describe_changes(f['changes'])} (~{gib(f['total_bytes'])})"
                               for f in self.fallbacks)
        return f"Any of these would fit: {options}. `foundry estimate CONFIG` shows each item."


def gib(n: int) -> str:
    """Bytes as GiB (MiB below one GiB), for people."""
    return f"{n / (1 << 30):.2f} GiB" if abs(n) >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


def describe_changes(changes: dict[str, Any]) -> str:
    """Config changes as YAML-like text: 'training.batch_size: 4, model.gradient_checkpointing: true'."""
    from modelfoundry.train.estimate import describe_changes as describe

    return describe(changes)


def estimate(config: Config | str | Path, *, timed_steps: int = 3, baseline: str = "subprocess",
             available_bytes: int | None = None, progress: Reporter | bool | None = None) -> EstimateResult:
    """The memory training `config` (a language model) needs, item by item, and the time per step.

    Args:
        timed_steps: training steps timed on random tokens after one warm-up (0: no timing, no model built).
        baseline: "subprocess" measures a fresh process that imported torch and transformers (once per
            process); "self" takes this process's resident memory (what `foundry run` holds when it checks)
            and counts it as available too, since it is already in use.
        available_bytes: the memory to fit in (default: the machine's available memory, cgroup limit included).
        progress: a Reporter for the timed steps.
    """
    from modelfoundry.train import estimate as est

    config = as_config(config)
    model = _llm_section(config)
    rows = _all_rows(config)
    estimator, plan = _estimator(config, baseline, available_bytes, rows)
    memory = estimator.memory(plan)
    profile = estimator.profile(plan)
    result = EstimateResult("training", model.base, memory.items, memory.total_bytes, memory.available_bytes,
                            memory.fits, _settings(plan), {"total": profile.params, "trainable": profile.trainable,
                                                           "adapters": profile.adapter_params})
    result.train_rows = None if rows is None else max(1, round(rows * (1 - config.data.split.val
                                                                          - config.data.split.test)))
    if not memory.fits:
        result.fallbacks = [{"changes": f.changes, "total_bytes": f.memory.total_bytes}
                            for f in estimator.fallbacks(plan)]
    if timed_steps > 0 and memory.fits:
        timing = est.time_steps(model, plan, config.training.optimizer, steps=timed_steps,
                                device=config.training.device, threads=config.training.num_threads,
                                progress=reporter_for(progress))
        result.step_s, result.tokens_s = timing.step_s, timing.tokens_s
        result.per_1000_rows_s = 1000 / plan.batch_size * timing.step_s
        if result.train_rows and not config.data.lm.packing:
            result.epoch_s = -(-result.train_rows // plan.batch_size) * timing.step_s
    return result


def preflight(config: Config | str | Path, *, timed_steps: int = 0,
              available_bytes: int | None = None) -> EstimateResult:
    """The estimate `foundry run` makes before training a language model (this process's memory as the
    baseline; no timed steps unless asked). Raises TrainingError with the fallbacks when it won't fit."""
    result = estimate(config, timed_steps=timed_steps, baseline="self", available_bytes=available_bytes)
    if not result.fits:
        raise TrainingError(f"Training needs about {gib(result.total_bytes)} of memory ({_largest(result)}); this "
                            f"machine has {gib(result.available_bytes)} available.", result.hint())
    return result


def estimate_serving(base: str, *, dtype: str = "float32", max_streams: int = 8, context: int | None = None,
                     baseline: str = "subprocess", available_bytes: int | None = None) -> EstimateResult:
    """The memory serving `base` (a short name or directory) needs: weights and a KV cache of `context`
    tokens (default and most: the model's context length) for each of `max_streams` streams."""
    import torch

    from modelfoundry.models.llm_base import hf_directory, resolve_base
    from modelfoundry.train import estimate as est

    hf_config = _hf_config(hf_directory(resolve_base(base)))
    arch = est.read_architecture(hf_config)
    width = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    params = _parameter_count(hf_config)
    baseline_bytes, available = _machine(baseline, available_bytes)
    context = min(context or arch.context, arch.context)
    memory = est.serving_memory(params * width, arch, dtype_bytes=width, max_streams=max_streams, context=context,
                                baseline_bytes=baseline_bytes, available_bytes=available)
    settings = {"serve.max_streams": max_streams, "serve.llm_dtype": dtype, "tokens per stream": context}
    result = EstimateResult("serving", base, memory.items, memory.total_bytes, memory.available_bytes, memory.fits,
                            settings, {"total": params})
    if not memory.fits:
        result.fallbacks = _serving_fallbacks(dtype, max_streams, context, baseline_bytes, available, arch, params)
    return result


def preflight_serving(base: str, *, dtype: str = "float32", max_streams: int = 8,
                      context: int | None = None) -> EstimateResult:
    """The check a server makes before it loads a language model: ServingError with the fallbacks if the
    weights and the streams' KV caches won't fit."""
    result = estimate_serving(base, dtype=dtype, max_streams=max_streams, context=context, baseline="self")
    if not result.fits:
        raise ServingError(f"Serving {base} with {max_streams} streams needs about {gib(result.total_bytes)} of "
                           f"memory; this machine has {gib(result.available_bytes)} available.", result.hint())
    return result


def _serving_fallbacks(dtype: str, streams: int, context: int, baseline_bytes: int, available: int,
                       arch: Any, params: int) -> list[dict[str, Any]]:
    """The most streams (halving) that fit in this dtype and, from float32, in bfloat16 (weights and cache)."""
    from modelfoundry.train import estimate as est

    found = []
    for name in dict.fromkeys((dtype, "bfloat16")):
        width = 2 if name == "bfloat16" else 4
        for n in sorted({max(1, streams >> k) for k in range(9)}, reverse=True):
            memory = est.serving_memory(params * width, arch, dtype_bytes=width, max_streams=n, context=context,
                                        baseline_bytes=baseline_bytes, available_bytes=available)
            if memory.fits:
                changes = {"serve.max_streams": n} if n != streams else {}
                changes.update({"serve.llm_dtype": name} if name != dtype else {})
                found.append({"changes": changes, "total_bytes": memory.total_bytes})
                break
    return found


def _llm_section(config: Config) -> Any:
    if config.model.name != "llm":
        raise ConfigError(f"foundry estimate covers language models (model: {{name: llm}}); the config "
                          f"'{config.name}' has model {config.model.name}.",
                          "Its memory is small next to a language model's: run it (`foundry run CONFIG`).")
    return config.model


def _estimator(config: Config, baseline: str, available_bytes: int | None, rows: int | None) -> tuple[Any, Any]:
    from modelfoundry.models.llm_base import hf_directory, resolve_base
    from modelfoundry.train import estimate as est

    model, training, lm = config.model, config.training, config.data.lm
    plan = est.TrainingPlan(training.batch_size, lm.max_length, training.accumulate_steps, model.finetune,
                            model.gradient_checkpointing, model.dtype, training.precision, training.optimizer.name,
                            training.optimizer.momentum, 1.0 if lm.train_on == "all" else est.COMPLETION_SHARE)
    hf_config = _hf_config(hf_directory(resolve_base(model.base)))
    baseline_bytes, available = _machine(baseline, available_bytes)
    return est.TrainingEstimator(model, hf_config, baseline_bytes=baseline_bytes, available_bytes=available,
                                 data_rows=rows), plan


def _machine(baseline: str, available_bytes: int | None) -> tuple[int, int]:
    """(baseline bytes, available bytes); this process's own memory counts as available when it is the baseline."""
    from modelfoundry.train import estimate as est

    if baseline == "self":
        own = est.current_rss_bytes()
        return own, (available_bytes if available_bytes is not None else est.available_memory_bytes() + own)
    return est.process_baseline_bytes(), (available_bytes if available_bytes is not None
                                          else est.available_memory_bytes())


def _settings(plan: Any) -> dict[str, Any]:
    return {"training.batch_size": plan.batch_size, "training.accumulate_steps": plan.accumulate_steps,
            "data.lm.max_length": plan.max_length, "model.finetune": plan.finetune,
            "model.gradient_checkpointing": plan.gradient_checkpointing, "model.dtype": plan.dtype,
            "training.precision": plan.precision, "training.optimizer.name": plan.optimizer}


def _largest(result: EstimateResult) -> str:
    top = sorted(((v, k) for k, v in result.items.items() if v > 0), reverse=True)[:2]
    return ", ".join(f"{k} {gib(v)}" for v, k in top)


def _hf_config(directory: Path) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)


def _parameter_count(hf_config: Any) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    return sum(p.numel() for p in model.parameters())


def _all_rows(config: Config) -> int | None:
    """Rows of the data file (capped by data.max_rows), when a local file tells cheaply; else None."""
    path = Path(config.data.source)
    if not path.is_file() or path.stat().st_size > SIZE_CHECK_BYTES:
        return None
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(path).metadata.num_rows
    elif path.suffix in (".jsonl", ".csv"):
        with open(path, "rb") as handle:
            rows = sum(1 for line in handle if line.strip()) - (path.suffix == ".csv")
    else:
        return None
    return min(rows, config.data.max_rows) if config.data.max_rows else rows
