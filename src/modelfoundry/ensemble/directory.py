"""The ensemble's run directory: laid out like any run's, so evaluate, predict, export and serve take it.

    <ensemble>/
      config.yaml  data.json  manifest.json  preprocess.json  metrics.jsonl (empty)   the first member's
      ensemble.json            method, weights or meta-model (JSON numbers), members (refs, run dirs, metrics)
      model/model.json         the first member's record, "runtime": "onnx", "ensemble": {method, members}
      model/onnx/              model.onnx (every member's graph + the combination), preprocess.json, export.json
      eval/                    metrics.json (with baselines), members.json, report.md (members beside it)

Members that preprocess their inputs differently make a served group instead (serve/group.py): model.json says
"runtime": "group", and model/members/m<k>/ holds each member's model.json, preprocess.json and onnx/ export
(under model/, so tracking logs them and a registry download brings them).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from modelfoundry.artifacts.rundir import ExportDir, RunDir
from modelfoundry.ensemble.combine import Combination
from modelfoundry.ensemble.graph import ensemble_graph
from modelfoundry.ensemble.members import Member
from modelfoundry.errors import ExportError
from modelfoundry.storage import read_json, write_json, write_text

RECORD = "ensemble.json"
# model.json fields that describe the first member alone, not the ensemble (a decision threshold was tuned on
# its outputs, not the ensemble's)
MEMBER_ONLY = ("base", "compression", "parent_run", "best_epoch", "threshold")
TOLERANCE = 1e-4  # the graph against the Python combination, on the test rows (probabilities or standardised values)


def member_export(member: Member, work: Path) -> Path:
    """The member's ONNX export directory: its own when it has one, else exported (parity-checked) into `work`."""
    own = RunDir(member.run_dir).export
    if own.record.is_file() and own.graph.is_file():
        return own.path
    from modelfoundry.export import export_onnx

    return export_onnx(member.run_dir, work).out_dir


def write_run_dir(out: Path, members: list[Member], config: Any, combination: Combination,
                  graphs: list[Path], facts: dict[str, Any]) -> None:
    """Everything but eval/: the first member's config (renamed), data records and preprocessing, the combined
    graph, model.json and ensemble.json (`facts`: members, method, rows)."""
    from modelfoundry.config import config_hash
    from modelfoundry.rundir import save_config

    first, layout = RunDir(members[0].run_dir), RunDir(out)
    out.mkdir(parents=True, exist_ok=True)
    for source, target in ((first.data_record, layout.data_record), (first.manifest, layout.manifest),
                           (first.preprocess, layout.preprocess)):
        shutil.copyfile(source, target)
    save_config(out, config)
    write_text(layout.metrics_log, "")
    saved = members[0].saved
    scales = None
    if saved.task == "regression":
        scales = [(m.saved.target_encoder.mean_, m.saved.target_encoder.std_) for m in members]
    onnx_dir = layout.export
    onnx_dir.path.mkdir(parents=True, exist_ok=True)
    ensemble_graph(graphs, combination, onnx_dir.graph, saved.record.n_outputs, scales)
    shutil.copyfile(first.preprocess, onnx_dir.preprocess)
    summary = {"method": combination.method, "members": [m["ref"] for m in facts["members"]]}
    kept = {k: v for k, v in saved.spec.items() if k not in MEMBER_ONLY}
    write_json(layout.model_record, {**kept, "name": config.name, "config_hash": config_hash(config),
                                     "runtime": "onnx", "ensemble": summary})
    write_json(out / RECORD, {**facts, "combination": combination.to_json(), "graph": "onnx"})


def write_group_dir(out: Path, members: list[Member], config: Any, combination: Combination,
                    exports: list[Path], facts: dict[str, Any]) -> None:
    """A served group's run directory: the first member's records, each member's export under
    model/members/m<k>/, model.json with "runtime": "group", ensemble.json."""
    from modelfoundry.config import config_hash
    from modelfoundry.rundir import save_config

    first, layout = RunDir(members[0].run_dir), RunDir(out)
    out.mkdir(parents=True, exist_ok=True)
    for source, target in ((first.data_record, layout.data_record), (first.manifest, layout.manifest),
                           (first.preprocess, layout.preprocess)):
        shutil.copyfile(source, target)
    save_config(out, config)
    write_text(layout.metrics_log, "")
    for k, (member, export) in enumerate(zip(members, exports)):
        target = layout.model_dir / "members" / f"m{k}"
        shutil.copytree(export, target / "onnx")
        shutil.copyfile(RunDir(member.run_dir).model_record, target / "model.json")
        shutil.copyfile(RunDir(member.run_dir).preprocess, target / "preprocess.json")
    summary = {"method": combination.method, "members": [m["ref"] for m in facts["members"]]}
    saved = members[0].saved
    kept = {k: v for k, v in saved.spec.items() if k not in MEMBER_ONLY}
    write_json(layout.model_record, {**kept, "name": config.name, "config_hash": config_hash(config),
                                     "runtime": "group", "ensemble": summary})
    write_json(out / RECORD, {**facts, "combination": combination.to_json(), "graph": "group"})


def check_graph(out: Path, inputs: dict[str, np.ndarray], expected: np.ndarray) -> dict[str, Any]:
    """Run the combined graph on the test inputs and compare with the Python combination (model scale);
    then write export.json. Refuses (ExportError) beyond TOLERANCE."""
    from modelfoundry.export import OnnxPredictor

    onnx_dir = RunDir(out).export
    predictor = OnnxPredictor.open(onnx_dir.path, read_json(onnx_dir.preprocess), {})
    got = predictor.predict_inputs(inputs).astype(np.float64).reshape(len(expected), -1)
    diff = float(np.abs(got - expected.reshape(len(expected), -1)).max()) if len(expected) else 0.0
    if not diff <= TOLERANCE:
        raise ExportError(f"The ensemble's ONNX graph differs from the Python combination by up to {diff:.3g}, "
                          f"more than {TOLERANCE:g}.", "Report the members' configs; meanwhile evaluate the "
                          "members separately.")
    _export_record(out, predictor, {"max_abs_diff": diff, "rows_checked": len(expected), "tolerance": TOLERANCE})
    return {"max_abs_diff": diff, "rows_checked": len(expected)}


def _export_record(out: Path, predictor: Any, parity: dict[str, Any]) -> None:
    import onnx

    from modelfoundry.artifacts.records import ModelRecord

    record = RunDir(out)
    spec = read_json(record.model_record)
    graph = onnx.load(str(record.export.graph), load_external_data=False)
    inputs = [{"name": f.name, "shape": ["batch", *f.shape], "dtype": f.dtype}
              for f in ModelRecord.read(record.model_record).input_spec]
    task = spec["task"]
    meaning = ("class probabilities, in the order of labels" if task == "classification" else
               "standardised prediction: value = output * target.std + target.mean (preprocess.json)")
    write_json(record.export.record, {
        "format": 1, "name": spec["name"], "architecture": "ensemble", "task": task,
        "labels": [str(c) for c in spec.get("classes") or []], "target": spec.get("target"),
        "config_hash": spec.get("config_hash"), "run_dir": str(out.resolve()), "input": inputs[0], "inputs": inputs,
        "output": {"name": predictor.output_name, "shape": ["batch", spec["n_outputs"]], "meaning": meaning},
        "opset": next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), "exporter": "ensemble",
        "files": [ExportDir.GRAPH, ExportDir.PREPROCESS, ExportDir.RECORD], "merged": False,
        "padding_invariant": False, "parity": parity, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def members_table(task: str, names: list[str], metrics: list[dict[str, float]], ensemble: dict[str, float],
                  shown: list[str]) -> str:
    """The report's markdown table: the ensemble, then each member, then the baselines, on `shown` metrics."""
    rows = [("**ensemble**", ensemble)] + list(zip(names, metrics))
    for base in ("dummy", "linear"):
        prefix = f"baseline_{base}_"
        values = {k.removeprefix(prefix): v for k, v in ensemble.items() if k.startswith(prefix)}
        if values:  # none on a --data file
            rows.append((f"baseline ({base})", values))
    lines = ["## Ensemble and members", "", "| model | " + " | ".join(shown) + " |",
             "|---" * (len(shown) + 1) + "|"]
    for name, values in rows:
        cells = [f"{values[m]:.4f}" if m in values else "-" for m in shown]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
