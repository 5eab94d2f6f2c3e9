"""The compression variant table: name -> (stage, applies-to check, builder).

Each entry is one variant family. Its builder lists the family's candidates for a parent model, each a
(name, recipe, build) triple; the search (search.py) runs the stages in `STAGES` order and, within a stage,
the families in table order, measuring every candidate the same way for its stage:

    graph     build(out) -> onnx path: a rewritten fp32 graph (int8, fp16), served with ONNX Runtime
    network   build() -> (module, model config, history): a new network (pruned, distilled), exported to ONNX
    stacked   build(out) -> onnx path: int8 on top of a network variant that passed the guard
    torch     build() -> module: a torch-runtime candidate, measured for comparison only (never chosen)

A family whose applies-to check says no for the parent is left out. Families with `option=True` are what
`compress.variants` and `foundry compress --only` name (`COMPRESSORS`); the others always run their builder
(the eager fp32 reference) or follow the ones named (stacked int8 follows the int8 family that suits the
model). Adding a variant is one builder here (or in its own module) plus one entry in `VARIANTS`.

This module imports nothing heavy at the top, so the config schema can read `COMPRESSORS` cheaply.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from modelfoundry.artifacts.rundir import RunDir

if TYPE_CHECKING:
    from modelfoundry.artifacts.inputs import Inputs
    from modelfoundry.compress.search import Bench, Variant

Stage = Literal["graph", "network", "stacked", "torch"]
STAGES: tuple[Stage, ...] = ("graph", "network", "stacked", "torch")  # the order the search runs them in


@dataclass(frozen=True)
class Candidate:
    """One variant to build and measure; `base` is the network variant a stacked candidate starts from."""

    name: str
    recipe: dict[str, Any]
    build: Callable[..., Any]  # its stage's signature, see the module docstring
    base: Variant | None = None


@dataclass
class Sofar:
    """What the search knows when it lists a stage's candidates."""

    fp32: Path  # the parent's fp32 ONNX export
    networks: list[Variant] = field(default_factory=list)  # network variants, measured and judged


@dataclass(frozen=True)
class Family:
    stage: Stage
    candidates: Callable[[Bench, Sofar], list[Candidate]]  # the builder: this family's candidates
    applies: Callable[[Bench], bool] = lambda bench: True  # does the family make sense for this parent?
    option: bool = True  # named in compress.variants / --only; False: runs whenever it applies
    requires: str = ""  # in words, what `applies` checks: the config error when it is asked for and does not


# ------------------------------------------------------------------------------------------ graph
def _ort_fp16(bench: Bench, sofar: Sofar) -> list[Candidate]:
    from modelfoundry.compress import quantize

    return [Candidate("ort_fp16", {"method": "ort_fp16"}, lambda p: quantize.ort_fp16(sofar.fp32, p))]


def _ort_int8_dynamic(bench: Bench, sofar: Sofar) -> list[Candidate]:
    from modelfoundry.compress import quantize

    return [Candidate("ort_int8_dynamic", {"method": "ort_int8_dynamic", "weights": "int8 per-tensor"},
                      lambda p: quantize.ort_dynamic_int8(sofar.fp32, p))]


def _ort_int8_static(bench: Bench, sofar: Sofar) -> list[Candidate]:
    from modelfoundry.artifacts.inputs import rows_of
    from modelfoundry.compress import quantize

    rows = calibration_rows(bench)
    out = []
    for fmt, activation in (("qdq", "uint8"), ("qoperator", "uint8")):
        recipe = {"method": "ort_int8_static", "format": fmt, "activation": activation, "per_channel": True,
                  "calibration_rows": rows_of(rows)}
        out.append(Candidate(f"ort_int8_static_{fmt}", recipe,
                             lambda p, f=fmt, a=activation: quantize.ort_static_int8(sofar.fp32, p, rows, fmt=f,
                                                                                     activation=a)))
    return out


# ------------------------------------------------------------------------------------------ torch
def _torch_fp32(bench: Bench, sofar: Sofar) -> list[Candidate]:
    model = bench.saved.model
    return [Candidate("torch_fp32", {"method": "none", "note": "eager PyTorch, for reference"}, lambda: model)]


def _torch_bf16(bench: Bench, sofar: Sofar) -> list[Candidate]:
    from modelfoundry.compress import quantize

    model = bench.saved.model
    return [Candidate("torch_bf16", {"method": "torch_bf16"}, lambda: quantize.bf16_torch(copy.deepcopy(model)))]


def _torch_int8_eager(bench: Bench, sofar: Sofar) -> list[Candidate]:
    from modelfoundry.compress import quantize

    model = bench.saved.model
    return [Candidate("torch_int8_eager (deprecated API)", {"method": "torch_int8_eager"},
                      lambda: quantize.torch_dynamic_int8_eager(copy.deepcopy(model)))]


def _pt2e_int8(bench: Bench, sofar: Sofar) -> list[Candidate]:
    from modelfoundry.compress import quantize

    model, example = bench.saved.model, bench.input_spec.example(1)  # zeros (token ids 0, mask 1) to trace with
    return [Candidate("pt2e_int8", {"method": "pt2e_int8", "quantizer": "X86InductorQuantizer"},
                      lambda: quantize.torch_pt2e_int8(copy.deepcopy(model), example, calibration_rows(bench)))]


# ------------------------------------------------------------------------------------------ network
def _fit_settings(bench: Bench) -> dict[str, Any]:
    saved = bench.saved
    return {"task": bench.task, "class_weights": bench.class_weights, "target_std": target_std(saved),
            "seed": saved.config.seed}


def _prune_structured(bench: Bench, sofar: Sofar) -> list[Candidate]:
    from modelfoundry.compress import prune

    saved, cfg, (X, y) = bench.saved, bench.cfg, (bench.splits["X"], bench.splits["y"])
    out = []
    for keep in cfg.keep:
        def build(keep: float = keep) -> tuple[Any, Any, list]:
            model, model_cfg = prune.shrink_structured(copy.deepcopy(saved.model), saved.config.model, keep,
                                                       bench.input_spec)
            fitted = prune.finetune(model, X, y, saved.config.training, epochs=cfg.finetune_epochs, lr_scale=1.0,
                                    **_fit_settings(bench))
            return fitted.model, model_cfg, fitted.history
        out.append(Candidate(f"prune_structured_keep{keep:g}", {"method": "prune_structured", "keep": keep,
                                                                "finetune_epochs": cfg.finetune_epochs}, build))
    return out


def _prune_unstructured(bench: Bench, sofar: Sofar) -> list[Candidate]:
    from modelfoundry.compress import prune

    saved, cfg, (X, y) = bench.saved, bench.cfg, (bench.splits["X"], bench.splits["y"])
    out = []
    for sparsity in cfg.sparsity:
        def build(sparsity: float = sparsity) -> tuple[Any, Any, list]:
            model = prune.prune_unstructured(copy.deepcopy(saved.model), sparsity)
            fitted = prune.finetune(model, X, y, saved.config.training, epochs=cfg.finetune_epochs, lr_scale=1.0,
                                    **_fit_settings(bench))
            return prune.make_permanent(fitted.model), saved.config.model, fitted.history
        out.append(Candidate(f"prune_unstructured_{sparsity:g}", {"method": "prune_unstructured",
                                                                  "sparsity": sparsity,
                                                                  "finetune_epochs": cfg.finetune_epochs}, build))
    return out


def _distill(bench: Bench, sofar: Sofar) -> list[Candidate]:
    from modelfoundry.compress import distill

    saved, d, (X, y) = bench.saved, bench.cfg.distill, (bench.splits["X"], bench.splits["y"])
    student_cfg = d.student or distill.student_config(saved.config.model, d.shrink)

    def build() -> tuple[Any, Any, list]:
        from modelfoundry.models import build_model
        from modelfoundry.train.runtime import seed_everything

        seed_everything(saved.config.seed, saved.config.training.deterministic)
        student = build_model(student_cfg, bench.input_spec, saved.record.n_outputs)
        fitted = distill.distill(saved.model, student, X, y, saved.config.training, temperature=d.temperature,
                                 alpha=d.alpha, epochs=d.epochs or saved.config.training.epochs,
                                 **_fit_settings(bench))
        return fitted.model, student_cfg, fitted.history
    recipe = {"method": "distill", "student": student_cfg.model_dump(mode="json"), "temperature": d.temperature,
              "alpha": d.alpha}
    return [Candidate("distill", recipe, build)]


def _shrinkable(bench: Bench) -> bool:
    from modelfoundry.compress.prune import can_shrink

    return can_shrink(bench.saved.config.model)


def _student_known(bench: Bench) -> bool:
    from modelfoundry.compress.distill import can_derive_student

    return bench.cfg.distill.student is not None or can_derive_student(bench.saved.config.model)


def _saves_every_weight(bench: Bench) -> bool:
    """Whether the parent saves all its weights: a frozen or LoRA encoder saves only what it trained and reloads
    its base from the original files, so zeros pruned into the base would not be saved."""
    reference = getattr(bench.saved.model, "base_reference", None)
    return not (callable(reference) and reference())


# ------------------------------------------------------------------------------------------ stacked
def stacked_int8(bench: Bench) -> str:
    """The int8 family that goes on top of a network variant: static QDQ for convolutional networks, dynamic
    otherwise (the kind that was fast for each)."""
    from torch import nn

    convolutional = any(isinstance(m, nn.modules.conv._ConvNd) for m in bench.saved.model.modules())
    return "ort_int8_static" if convolutional else "ort_int8_dynamic"


def _stacked(bench: Bench, sofar: Sofar) -> list[Candidate]:
    """int8 on top of each network variant that passed the guard (pruning or distillation, then quantization),
    when the int8 family that suits the model is among the variants asked for."""
    method = stacked_int8(bench)
    if method not in bench.cfg.variants:
        return []
    from modelfoundry.compress import quantize

    out = []
    for v in sofar.networks:
        if v.run_dir is None or v.metric is None or not all(c["passed"] for c in bench.checks(v)):
            continue
        source = RunDir(v.run_dir).export.graph
        if method == "ort_int8_static":
            step = {"method": method, "format": "qdq", "activation": "uint8"}

            def build(p: Path, source: Path = source) -> Path:
                return quantize.ort_static_int8(source, p, calibration_rows(bench), fmt="qdq", activation="uint8")
        else:
            step = {"method": method}

            def build(p: Path, source: Path = source) -> Path:
                return quantize.ort_dynamic_int8(source, p)
        out.append(Candidate(f"{v.name}+int8", {"method": "stack", "steps": [v.recipe, step]}, build, base=v))
    return out


# ------------------------------------------------------------------------------------------ the table
# table order is the order of compress.variants' default and, within a stage, the order variants are tried
VARIANTS: dict[str, Family] = {
    "ort_fp16": Family("graph", _ort_fp16),
    "ort_int8_dynamic": Family("graph", _ort_int8_dynamic),
    "ort_int8_static": Family("graph", _ort_int8_static),
    "torch_fp32": Family("torch", _torch_fp32, option=False),  # the eager reference, always measured
    "torch_bf16": Family("torch", _torch_bf16),
    "torch_int8_eager": Family("torch", _torch_int8_eager),
    "pt2e_int8": Family("torch", _pt2e_int8),
    "prune_structured": Family("network", _prune_structured, applies=_shrinkable,
                               requires="an mlp or cnn model (whole neurons or channels are removed)"),
    "prune_unstructured": Family("network", _prune_unstructured, applies=_saves_every_weight,
                                 requires="a model that saves all its weights (not a frozen or LoRA-tuned "
                                          "pretrained encoder, which reloads its unchanged base)"),
    "distill": Family("network", _distill, applies=_student_known,
                      requires="compress.distill.student, or a teacher a student is derived from (mlp, cnn, "
                               "lstm, gru, transformer)"),
    "stacked_int8": Family("stacked", _stacked, option=False),  # follows ort_int8_static / ort_int8_dynamic
}

COMPRESSORS: tuple[str, ...] = tuple(name for name, family in VARIANTS.items() if family.option)


def families(stage: Stage, bench: Bench) -> list[tuple[str, Family]]:
    """The families of `stage` to run for this parent: asked for (or not optional) and applicable."""
    wanted = bench.cfg.variants
    return [(name, f) for name, f in VARIANTS.items()
            if f.stage == stage and (not f.option or name in wanted) and f.applies(bench)]


def check_asked(bench: Bench, asked: list[str] | None) -> None:
    """Raise a ConfigError naming each compressor in `asked` (the ones the user listed explicitly) that cannot
    apply to this parent, and a distillation student that cannot read the parent's inputs; the default list
    (every compressor) leaves inapplicable ones out silently."""
    from modelfoundry.errors import ConfigError

    problems = [f"{name} needs {VARIANTS[name].requires}" for name in asked or []
                if VARIANTS[name].option and not VARIANTS[name].applies(bench)]
    if problems:
        model = bench.saved.config.model
        kind = model.name + (f" ({model.finetune})" if getattr(model, "finetune", None) else "")
        usable = [n for n in COMPRESSORS if VARIANTS[n].applies(bench)]
        raise ConfigError(f"compress.variants: {'; '.join(problems)}; this model is {kind}.",
                          f"Leave them out of compress.variants (or --only); these apply: {', '.join(usable)}.")
    student = bench.cfg.distill.student
    if student is not None and "distill" in bench.cfg.variants:
        from modelfoundry.models import build_model

        try:  # cheap (no training): the student must take the parent's named inputs
            build_model(student, bench.input_spec, bench.saved.record.n_outputs)
        except ConfigError as exc:
            raise ConfigError(f"compress.distill.student ({student.name}) cannot read this model's inputs "
                              f"({', '.join(bench.input_spec.names)}): {exc.message}",
                              "Give a student for these inputs, e.g. {name: lstm, embedding_dim: 64, hidden: 64} "
                              "or {name: transformer, d_model: 64, layers: 2} for text.") from None


# ------------------------------------------------------------------------------------------ shared
def calibration_rows(bench: Bench) -> Inputs:
    """Up to 512 training rows (a seeded sample, the same rows of every named input) for static quantization."""
    import numpy as np

    from modelfoundry.artifacts.inputs import rows_of

    X = bench.splits["X"]["train"]
    n = rows_of(X)
    rng = np.random.default_rng(bench.saved.config.seed)
    take = np.sort(rng.choice(n, size=min(512, n), replace=False))
    return {name: np.ascontiguousarray(a[take], dtype=np.float32 if a.dtype.kind == "f" else np.int64)
            for name, a in X.items()}


def target_std(saved: Any) -> float:
    return float(saved.target_encoder.std_) if saved.task == "regression" else 1.0
