"""Try compression variants of a trained model, measure each on the runtime it would be served with, and
pick the best one within the accuracy guard. What is tried comes from the variant table (variants.py); this
module builds, measures, judges and saves whatever the table lists, by stage.

Every variant ends as a complete run directory under `<out>/variants/<name>/`:
- variants that change the network (structured pruning, unstructured pruning, distillation) are ordinary
  models of an ordinary config, exported to ONNX like any run and measured on ONNX Runtime;
- ONNX-level variants (int8, fp16) keep the parent's config and hold the rewritten graph in
  `model/onnx/`, with `"runtime": "onnx"` in model.json (see rundir.load_model);
- torch-runtime candidates (bf16 weights, eager int8, PT2E int8) are measured for comparison only: the
  platform serves with ONNX Runtime, so they are reported but not chosen.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from modelfoundry.artifacts.rundir import ExportDir, RunDir
from modelfoundry.compress.guard import Guard, failure_text, judge, measure
from modelfoundry.compress.variants import STAGES, Candidate, Sofar, families, target_std
from modelfoundry.config import CompressConfig
from modelfoundry.storage import read_json, write_json

if TYPE_CHECKING:
    from modelfoundry.artifacts.inputs import InputSpec

ONNX = "onnxruntime"
TORCH = "torch"


@dataclass
class Variant:
    name: str
    runtime: str
    recipe: dict[str, Any]
    metric: float | None = None
    latency_b1_ms: float | None = None
    latency_b64_ms: float | None = None
    size_bytes: int | None = None
    params: int | None = None
    servable: bool = True  # can be saved and served by the platform (ONNX Runtime or an ordinary model)
    run_dir: Path | None = None
    agreement: float | None = None  # with the original on the validation rows: same class (or max |diff|)
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, float | None] = field(default_factory=dict)  # every guarded metric, on the validation rows


@dataclass
class Bench:
    """What every variant is judged by: the parent model, its splits, the metric and the latency settings."""

    saved: Any  # rundir.SavedModel of the parent
    splits: dict[str, dict[str, Any]]  # X (named inputs) / y / rows per split, rebuilt with the saved preprocessing
    metric: str
    cfg: CompressConfig
    work_dir: Path
    class_weights: np.ndarray | None = None
    reference: np.ndarray | None = None  # the original's validation outputs
    original_metric: float | None = None
    guards: list[Guard] = field(default_factory=list)  # the primary metric's first; empty: the primary alone
    original_metrics: dict[str, float | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.guards:
            self.guards = [Guard(self.metric, max_worse=self.cfg.max_drop)]

    @property
    def task(self) -> str:
        return self.saved.task

    @property
    def input_spec(self) -> InputSpec:
        """The parent's named inputs: what every variant takes, and what latency is measured on."""
        return self.saved.record.input_spec

    def score(self, output: np.ndarray) -> dict[str, float | None]:
        """Every guarded metric on the validation split from model outputs (probabilities, or standardised
        values)."""
        return measure(self.task, self.splits["y"]["val"], output, self.saved.target_encoder.decode,
                       [g.metric for g in self.guards])

    def drop(self, value: float, original: float) -> float:
        """How much worse `value` is than `original` (positive = worse), in the primary metric's units."""
        return self.guards[0].worse_by(value, original)

    def checks(self, variant: Variant) -> list[dict[str, Any]]:
        """One check per guard (the primary metric first) against the original's metrics."""
        return judge(self.guards, variant.metrics, self.original_metrics)

    def measure_onnx(self, variant: Variant, path: Path) -> None:
        from modelfoundry.compress.measure import (check_sequence_axes, onnx_latency_ms, onnx_params, onnx_predict,
                                                   onnx_size_bytes)

        check_sequence_axes(path)  # a graph the server could not feed is no candidate
        output = onnx_predict(path, self.splits["X"]["val"])
        self._judge(variant, output if self.task == "classification" or output.shape[1] > 1 else output[:, 0])
        variant.latency_b1_ms = onnx_latency_ms(path, self.input_spec, 1, repeats=self.cfg.repeats)
        variant.latency_b64_ms = onnx_latency_ms(path, self.input_spec, 64, repeats=self.cfg.repeats)
        variant.size_bytes, variant.params = onnx_size_bytes(path), onnx_params(path)

    def _judge(self, variant: Variant, output: np.ndarray) -> None:
        """The metric of `output`, and its agreement with the original's outputs on the same rows."""
        output = np.asarray(output, dtype=np.float64)
        variant.metrics = self.score(output)
        variant.metric = variant.metrics[self.metric]
        if self.reference is None:
            self.reference = output
        elif self.task == "classification":
            variant.agreement = float((output.argmax(1) == self.reference.argmax(1)).mean())
        else:
            variant.agreement = float(np.abs(output - self.reference).max() * target_std(self.saved))

    def measure_torch(self, variant: Variant, model: Any) -> None:
        from modelfoundry.compress.measure import torch_latency_ms, torch_params, torch_size_bytes
        from modelfoundry.models.inference import predict_outputs

        self._judge(variant, predict_outputs(model, self.splits["X"]["val"], self.task))
        variant.latency_b1_ms = torch_latency_ms(model, self.input_spec, 1, repeats=self.cfg.repeats)
        variant.latency_b64_ms = torch_latency_ms(model, self.input_spec, 64, repeats=self.cfg.repeats)
        variant.size_bytes, variant.params = torch_size_bytes(model), torch_params(model)


# ------------------------------------------------------------------------------------------ choosing
def entry(variant: Variant, original: Variant, bench: Bench) -> dict[str, Any]:
    """A report.json entry: the measurements and how they compare with the original."""
    out = {k: v for k, v in asdict(variant).items() if k not in ("run_dir", "notes")}
    out["run_dir"] = str(variant.run_dir) if variant.run_dir else None
    out["notes"] = variant.notes
    if variant.error or variant.metric is None:
        out.update(metric_delta=None, speedup_b1=None, speedup_b64=None, size_ratio=None, guard=[],
                   failed_guards=[], passed_guard=False)
        return out
    out["metric_delta"] = variant.metric - original.metric
    out["speedup_b1"] = original.latency_b1_ms / variant.latency_b1_ms
    out["speedup_b64"] = original.latency_b64_ms / variant.latency_b64_ms
    out["size_ratio"] = variant.size_bytes / original.size_bytes
    if variant is original:
        out.update(guard=[], failed_guards=[], passed_guard=True)
        return out
    out["guard"] = bench.checks(variant)
    out["failed_guards"] = [c["metric"] for c in out["guard"] if not c["passed"]]
    out["passed_guard"] = not out["failed_guards"]
    out["guard_failure"] = "; ".join(failure_text(c) for c in out["guard"] if not c["passed"]) or None
    return out


def choose(entries: list[dict[str, Any]], prefer: str, lower_is_better: bool = False) -> dict[str, Any] | None:
    """The servable variant within every guard that is fastest (geometric mean of the batch-1 and batch-64
    speedups) or smallest, if it beats the original on that; ties go to the better primary metric."""
    eligible = [e for e in entries if e["passed_guard"] and e["servable"]]
    if prefer == "latency":
        def gain(e: dict[str, Any]) -> float:
            return math.sqrt(e["speedup_b1"] * e["speedup_b64"])
    else:
        def gain(e: dict[str, Any]) -> float:
            return 1 / e["size_ratio"]
    better = [e for e in eligible if gain(e) > 1.0]
    sign = -1.0 if lower_is_better else 1.0
    return max(better, key=lambda e: (gain(e), sign * e["metric_delta"])) if better else None


def closest_failing(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """When nothing passes: the servable measured variant failing the fewest guards, then the one whose
    primary metric is least worse."""
    scored = [e for e in entries if e["metric"] is not None and e["servable"] and not e["passed_guard"]]
    if not scored:
        return None
    return min(scored, key=lambda e: (len(e["failed_guards"]), e["guard"][0]["worse_by"] or 0.0))


# ------------------------------------------------------------------------------------------ run dirs
def save_variant(saved: Any, dest: Path, *, model: Any = None, model_cfg: Any = None, onnx_from: Path | None = None,
                 baseline_export: Path | None = None, recipe: dict[str, Any],
                 history: list[dict[str, Any]] | None = None, parent_run: Path | None = None) -> Path:
    """A complete run directory for a variant: the parent's data record and preprocessing, plus either a
    model (of `model_cfg`) or a rewritten ONNX graph (`onnx_from`, served with ONNX Runtime)."""
    from modelfoundry.config import config_hash
    from modelfoundry.rundir import save_config, save_model

    config = saved.config if model_cfg is None else saved.config.model_copy(update={"model": model_cfg})
    parent, layout = RunDir(saved.run_dir), RunDir(dest)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(parent.data_record, layout.data_record)
    shutil.copyfile(parent.manifest, layout.manifest)
    save_config(dest, config)
    lines = history if history is not None else []
    layout.metrics_log.write_text("".join(_json_line(r) for r in lines))
    # "base" (the pretrained weights a parent reloads) is the saved model's own: save_model records it again
    # when the variant has one (a distilled student of a pretrained teacher has none)
    kept = {k: v for k, v in saved.spec.items() if k not in ("format", "base")}
    spec = {**kept, "config_hash": config_hash(config), "compression": recipe,
            "parent_run": str((parent_run or saved.run_dir).resolve())}
    if model is not None:
        save_model(dest, model, spec, saved.preprocessor, saved.target_encoder)
        return dest
    # graph-level variant: the parent's preprocessing with the rewritten graph beside its sidecars
    save_model(dest, saved.model, spec, saved.preprocessor, saved.target_encoder)
    layout.weights.unlink()
    spec = read_json(layout.model_record)
    write_json(layout.model_record, {**spec, "runtime": "onnx"})
    parent_export = ExportDir(baseline_export) if baseline_export is not None else parent.export
    onnx_dir = layout.export
    onnx_dir.path.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(parent_export.preprocess, onnx_dir.preprocess)
    shutil.copyfile(onnx_from, onnx_dir.graph)
    meta = read_json(parent_export.record)
    meta.update(files=[ExportDir.GRAPH, ExportDir.PREPROCESS, ExportDir.RECORD], compression=recipe,
                run_dir=str(dest.resolve()), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    write_json(onnx_dir.record, meta)
    return dest


def _json_line(record: dict[str, Any]) -> str:
    import json

    return json.dumps(record) + "\n"


# ------------------------------------------------------------------------------------------ the search
@dataclass
class Outcome:
    original: dict[str, Any]
    variants: list[dict[str, Any]]
    chosen: dict[str, Any] | None
    best_failing: dict[str, Any] | None  # when nothing passes the guard: the variant that came closest
    model_dir: Path | None  # the chosen variant, saved as a run directory
    metric: str
    wall_s: float = 0.0


def search(bench: Bench, out_dir: Path, on_step: Callable[[str], None] | None = None) -> Outcome:
    """Measure the original and every variant; save the chosen one as `<out_dir>/model/`."""
    from modelfoundry.export import export_onnx

    started = time.perf_counter()
    step = on_step or (lambda name: None)
    saved = bench.saved
    step("original (fp32, ONNX Runtime)")
    baseline_dir = bench.work_dir / "original" / "onnx"
    export_onnx(saved.run_dir, baseline_dir)
    original = Variant("original", ONNX, {"method": "none"})
    bench.measure_onnx(original, ExportDir(baseline_dir).graph)
    bench.original_metric, bench.original_metrics = original.metric, original.metrics
    if original.metric is None or not math.isfinite(original.metric):
        from modelfoundry.errors import ConfigError

        raise ConfigError(f"The primary metric {bench.metric} is not defined on the validation rows of "
                          f"{saved.run_dir} (mape needs a target without zeros), so no variant can be judged.",
                          "Set compress.metric to another metric of the task (e.g. rmse or r2).")
    variants: list[Variant] = []
    sofar = Sofar(ExportDir(baseline_dir).graph)
    for stage in STAGES:  # graph, network, stacked, torch: see variants.py
        for _, family in families(stage, bench):
            for candidate in family.candidates(bench, sofar):
                step(candidate.name)
                variant = _run_candidate(bench, stage, candidate, baseline_dir)
                variants.append(variant)
                if stage == "network":
                    sofar.networks.append(variant)

    base = entry(original, original, bench)
    entries = [entry(v, original, bench) for v in variants]
    chosen = choose(entries, bench.cfg.prefer, bench.guards[0].lower_is_better)
    failing = closest_failing(entries) if chosen is None else None
    model_dir = None
    if chosen is not None:
        model_dir = (out_dir / "model").resolve()
        if model_dir.exists():
            shutil.rmtree(model_dir)
        shutil.copytree(chosen["run_dir"], model_dir)
        record = RunDir(model_dir).export.record
        if record.is_file():
            write_json(record, {**read_json(record), "run_dir": str(model_dir)})
    for e in entries:  # the work directory goes away: only the chosen variant keeps a run directory
        e["run_dir"] = str(model_dir) if e is chosen else None
    return Outcome(base, entries, chosen, failing, model_dir, bench.metric, time.perf_counter() - started)


def _attempt(variant: Variant, work: Callable[[], Any]) -> None:
    """Run one variant; a failure is recorded on it (with its reason) and the search goes on."""
    from modelfoundry.experiment import describe

    try:
        work()
    except Exception as exc:  # noqa: BLE001 - one variant failing (an unsupported op, a backend missing) is data
        variant.error = describe(exc)
        variant.metric = None


def _run_candidate(bench: Bench, stage: str, candidate: Candidate, baseline_dir: Path) -> Variant:
    """Build and measure one candidate the way its stage is measured; a failure is recorded on the variant."""
    if stage == "torch":
        variant = Variant(candidate.name, TORCH, candidate.recipe, servable=False,
                          notes=["measured for comparison; foundry serves with ONNX Runtime"])
        _attempt(variant, lambda: bench.measure_torch(variant, candidate.build()))
        return variant
    variant = Variant(candidate.name, ONNX, candidate.recipe)
    if stage == "network":
        _attempt(variant, lambda: _network_variant(bench, variant, candidate.build))
    elif stage == "stacked":
        _attempt(variant, lambda: _stacked_variant(bench, variant, candidate))
    else:
        _attempt(variant, lambda: _graph_variant(bench, variant, candidate.build, baseline_dir))
    return variant


def _graph_variant(bench: Bench, variant: Variant, build: Callable[[Path], Path], baseline_dir: Path) -> None:
    scratch = bench.work_dir / "graphs" / f"{variant.name}.onnx"
    scratch.parent.mkdir(parents=True, exist_ok=True)
    path = build(scratch)
    bench.measure_onnx(variant, path)
    variant.run_dir = save_variant(bench.saved, bench.work_dir / "variants" / variant.name, onnx_from=path,
                                   recipe=variant.recipe, baseline_export=baseline_dir)


def _stacked_variant(bench: Bench, variant: Variant, candidate: Candidate) -> None:
    from modelfoundry.rundir import load_model

    base_run = candidate.base.run_dir
    scratch = bench.work_dir / "graphs" / f"{variant.name}.onnx"
    scratch.parent.mkdir(parents=True, exist_ok=True)
    path = candidate.build(scratch)
    bench.measure_onnx(variant, path)
    variant.run_dir = save_variant(load_model(base_run), bench.work_dir / "variants" / variant.name,
                                   onnx_from=path, recipe=variant.recipe, baseline_export=RunDir(base_run).onnx_dir,
                                   parent_run=bench.saved.run_dir)


def _network_variant(bench: Bench, variant: Variant, build: Callable[[], tuple[Any, Any, list]]) -> None:
    from modelfoundry.export import export_onnx

    model, model_cfg, history = build()
    dest = save_variant(bench.saved, bench.work_dir / "variants" / variant.name, model=model.cpu().eval(),
                        model_cfg=model_cfg, recipe=variant.recipe, history=history)
    export_onnx(dest)
    bench.measure_onnx(variant, RunDir(dest).export.graph)
    variant.run_dir = dest
