"""`ensemble`: registered versions or run directories combined (average, vote, stack) into one model, evaluated
beside its members and the baselines, exported as one ONNX graph, and registered with its members as lineage."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelfoundry.api.arguments import fresh_dir, model_dir
from modelfoundry.artifacts.rundir import ExportDir, RunDir
from modelfoundry.errors import ConfigError, RunDirError


@dataclass
class EnsembleResult:
    run_dir: Path
    task: str
    method: str
    metrics: dict[str, float]  # test split (or --data file): the ensemble's, then baseline_* entries
    headline: list[str]
    members: list[dict[str, Any]]  # {"ref", "run_dir", "version", "metrics"} each, in the order given
    combination: dict[str, Any]
    parity: dict[str, Any]  # the ONNX graph against the Python combination
    evaluated_on: str = "test split"
    wall_s: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)  # "registry": what was registered


def ensemble(members: list[str | Path], *, method: str = "average", weights: list[float] | None = None,
             name: str | None = None, register: bool | None = None, out: str | Path | None = None,
             data: str | Path | None = None, snapshots: int | None = None) -> EnsembleResult:
    """Combine trained models into an ensemble run directory.

    Args:
        members: run directories or registered versions (NAME, NAME/VERSION, NAME@ALIAS), two or more, with the
            same task, target and labels.
        method: average (soft voting / mean prediction), vote (hard majority, classification) or stack (a
            logistic / ridge meta-model fitted on the members' validation outputs).
        weights: one per member for average and vote (normalised); equal by default.
        name: the ensemble's name (default `<first member's name>-ensemble`), as registered.
        register: log and register it (default: the first member's tracking.enabled).
        out: the run directory to write (default `<output.dir>/<name>-<timestamp>/`).
        data: a labelled file to evaluate on instead of the members' own test split (needed when they were
            trained on different rows; not for stacking, which needs their validation split).
        snapshots: snapshot ensembling: `members` is one run directory trained with training.average.snapshots,
            and the members are its last `snapshots` epochs' weights.
    """
    if snapshots:
        return _snapshot_ensemble(members, snapshots, method=method, weights=weights, name=name, register=register,
                                  out=out, data=data)
    from modelfoundry.ensemble.combine import combine, member_weights
    from modelfoundry.ensemble.members import check_members, check_same_rows

    started = time.perf_counter()
    group = [_member(ref) for ref in members]
    check_members(group)
    weights = member_weights(weights, len(group), method)
    if data is None:
        check_same_rows(group)
    elif method == "stack":
        raise ConfigError("--method stack fits its meta-model on the members' validation split, which --data "
                          "replaces.", "Use --method average or vote with --data, or train the members on the same "
                          "split (data.split.seed) and leave --data out.")
    rows = _rows(group, Path(data) if data else None)
    first = group[0].saved
    val_truth = rows["val_truth"]
    combination = combine(method, first.task, weights, rows.get("val"), val_truth, first.config.seed)
    config = first.config.model_copy(update={"name": name or f"{first.config.name}-ensemble"})
    target = Path(out) if out else fresh_dir(Path(first.config.output.dir), config.name)
    if (target / "ensemble.json").exists() or RunDir(target).model_dir.exists():
        raise RunDirError(f"{target} already holds a run.", "Pass another -o DIR.")
    result = _build(group, config, combination, rows, target, started)
    if register if register is not None else first.config.tracking.enabled:
        result.extras["registry"] = _register(result, config, group)
    result.wall_s = time.perf_counter() - started
    return result


def _snapshot_ensemble(members: list[str | Path], keep: int, **options: Any) -> EnsembleResult:
    """The ensemble of one run's last `keep` epoch snapshots (each a temporary member run directory)."""
    from modelfoundry.ensemble.members import snapshot_dirs

    if len(members) != 1 or not Path(members[0]).is_dir():
        raise ConfigError(f"--snapshots ensembles the weight snapshots of one run directory; got {len(members)} "
                          f"member(s): {', '.join(map(str, members))}.",
                          "Pass one run directory trained with training.average.snapshots: "
                          "`foundry ensemble runs/RUN --snapshots 5`.")
    run = Path(members[0])
    work = Path(tempfile.mkdtemp(prefix=".snapshots-"))
    try:
        dirs = snapshot_dirs(run, keep, work)
        version = _member(run).version
        group = [_member(path) for _, path in dirs]
        for member, (label, _) in zip(group, dirs):
            member.ref, member.version, member.origin = label, version, str(run.resolve())
        options["name"] = options.get("name") or f"{group[0].saved.config.name}-snapshots"
        return ensemble(group, **options)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _member(ref: Any) -> Any:
    from modelfoundry.ensemble.members import Member
    from modelfoundry.rundir import is_language_model, load_model

    if isinstance(ref, Member):  # already loaded (a run's weight snapshot)
        return ref
    local = model_dir(ref)
    if is_language_model(local):
        raise ConfigError(f"{ref} is a language model; ensembles combine classifiers and regressors.",
                          "Ensemble classification or regression models.")
    saved = load_model(local)
    if not Path(ref).exists():  # a registry download is <cache>/registry/<name>/<run id>/<version>
        from modelfoundry.registry import parse_ref

        return Member(str(ref), saved, f"{parse_ref(str(ref))[0]}/{local.name}")
    registered = RunDir(local).registered  # a run `foundry run` registered notes its version there
    noted = json.loads(registered.read_text()) if registered.is_file() else {}
    version = f"{noted['model']}/{noted['version']}" if noted.get("model") and noted.get("version") else None
    return Member(str(ref), saved, version)


def _rows(group: list[Any], data: Path | None) -> dict[str, Any]:
    """Every member's outputs on the evaluated rows (and validation rows), the truth, member 1's inputs, the
    baselines: {"test": [...], "val": [...] | None, "truth", "val_truth", "inputs", "rows", "baselines", "split",
    "frame" (the evaluated raw rows), "raw" (the raw splits, None on a file)}."""
    from modelfoundry.api.evaluation import reload_splits
    from modelfoundry.data.prepare import rebuild_splits

    first = group[0].saved
    if data is not None:
        from modelfoundry.api.evaluation import _labelled_file  # one reading of a labelled file for evaluate

        inputs, truth, rows = _labelled_file(first, data)
        frame = _frame(data, first.record.target)
        test = [m.outputs(inputs if m.desc == group[0].desc else m.saved.preprocessor.transform(frame, str(data)))
                for m in group]
        return {"test": test, "val": None, "truth": truth, "val_truth": None, "inputs": inputs, "rows": rows,
                "baselines": None, "split": data.name, "frame": frame, "raw": None}
    from modelfoundry.artifacts.records import DataRecord

    splits = reload_splits(first)
    raw = rebuild_splits(first.config.data, first.config.seed,
                         DataRecord.read(RunDir(first.run_dir).data_record).sha256, first.run_dir)
    out: dict[str, Any] = {}
    for split in ("val", "test"):
        out[split] = [m.outputs(splits["X"][split] if m.desc == group[0].desc
                                else m.saved.preprocessor.transform(raw[split], f"the {split} split")) for m in group]
    truth = {s: splits["y"][s] for s in ("val", "test")}
    if first.task == "regression":  # the meta-model is fitted in the target's units
        truth["val"] = first.target_encoder.decode(truth["val"])
    return {**out, "truth": truth["test"], "val_truth": truth["val"], "inputs": splits["X"]["test"],
            "rows": splits["rows"]["test"], "baselines": _baselines(first, splits), "split": "test split",
            "frame": raw["test"], "raw": raw}


def _frame(path: Path, target: str) -> Any:
    from modelfoundry.data.sources import read_table

    frame = read_table(path)
    return frame[frame[target].notna()]


def _baselines(saved: Any, splits: dict[str, Any]) -> dict[str, float]:
    from modelfoundry.evaluate.baselines import baseline_metrics

    n_classes = saved.record.n_outputs if saved.task == "classification" else 1
    return baseline_metrics(saved.task, splits["X"], splits["y"], n_classes, saved.target_encoder.decode,
                            saved.config.evaluation.top_k, splits["texts"])


def _build(group: list[Any], config: Any, combination: Any, rows: dict[str, Any], out: Path,
           started: float) -> EnsembleResult:
    """Write the run directory (one graph, or a served group when the members' preprocessing differs), check it
    against the Python combination, evaluate it beside its members; an error leaves nothing behind."""
    from modelfoundry.ensemble.directory import check_graph, member_export, write_group_dir, write_run_dir

    created = not out.exists()
    work = Path(tempfile.mkdtemp(prefix=".ensemble-"))
    try:
        exports = [member_export(m, work / f"m{k}") for k, m in enumerate(group)]
        facts = {"method": combination.method, "evaluated_on": rows["split"],
                 "members": [{"ref": m.ref, "version": m.version, "run_dir": m.origin or str(m.run_dir.resolve())} for m in group]}
        expected = _model_scale(group[0].saved, combination.apply(rows["test"]))
        if all(m.desc == group[0].desc for m in group[1:]):
            write_run_dir(out, group, config, combination, [ExportDir(e).graph for e in exports], facts)
            parity = check_graph(out, rows["inputs"], expected)
        else:
            write_group_dir(out, group, config, combination, exports, facts)
            parity = _check_group(out, rows["frame"], expected)
        result = _evaluate(group, config, combination, rows, expected, out, parity)
        _save_reference(group[0].saved, config, combination, rows, out)
        return result
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check_group(out: Path, frame: Any, expected: np.ndarray) -> dict[str, Any]:
    """The served group (what `foundry serve` runs) on the evaluated raw rows against the Python combination."""
    from modelfoundry.ensemble.directory import TOLERANCE
    from modelfoundry.errors import ExportError
    from modelfoundry.serve.group import GroupBackend

    backend = GroupBackend(out)
    got = backend.predict_frame(frame)
    if backend.task == "regression":
        target = backend.desc["target"]
        got = (got - target["mean"]) / target["std"]
    diff = float(np.abs(got - expected).max()) if len(expected) else 0.0
    if not diff <= TOLERANCE:
        raise ExportError(f"The ensemble's served group differs from the Python combination by up to {diff:.3g}.",
                          "Report the members' configs; meanwhile evaluate the members separately.")
    return {"max_abs_diff": diff, "rows_checked": len(expected), "served_as": "group"}


def _save_reference(saved: Any, config: Any, combination: Any, rows: dict[str, Any], out: Path) -> None:
    """model/reference.json for `foundry serve --monitor`: the first member's data profile with the ensemble's own
    validation predictions and metrics. Like a run's, a profile that cannot be built is logged and skipped."""
    import logging

    from modelfoundry.errors import FoundryError, first_line
    from modelfoundry.evaluate.metrics import task_metrics
    from modelfoundry.monitor.profile import build_reference, save_reference

    if rows["raw"] is None or not len(rows["val_truth"]):
        return
    outputs = combination.apply(rows["val"])  # as the server gives them: probabilities, or the target's units
    labels = list(saved.target_encoder.classes_) if saved.task == "classification" else None
    truth = rows["val_truth"] if saved.task == "classification" else \
        (rows["val_truth"] - saved.target_encoder.mean_) / saved.target_encoder.std_
    try:
        metrics = task_metrics(saved.task, truth, _model_scale(saved, outputs), saved.target_encoder.decode,
                               config.evaluation.top_k)
        reference = build_reference(saved.preprocessor.desc, saved.task, labels, rows["raw"]["train"],
                                    rows["raw"]["val"], outputs, metrics, config.monitor)
    except (FoundryError, ValueError, KeyError, np.linalg.LinAlgError) as exc:
        logging.getLogger(__name__).warning("no reference profile for monitoring: %s", first_line(exc))
        return
    save_reference(out, reference)


def _model_scale(saved: Any, output: np.ndarray) -> np.ndarray:
    """What evaluation and the graph take: probabilities, or regression values standardised with member 1's target."""
    if saved.task == "classification":
        return output
    return (output - saved.target_encoder.mean_) / saved.target_encoder.std_


def _evaluate(group: list[Any], config: Any, combination: Any, rows: dict[str, Any], output: np.ndarray, out: Path,
              parity: dict[str, Any]) -> EnsembleResult:
    from modelfoundry.ensemble.directory import RECORD, members_table
    from modelfoundry.evaluate.evaluation import evaluate_outputs
    from modelfoundry.evaluate.metrics import headline, task_metrics
    from modelfoundry.storage import read_json, write_json

    first = group[0].saved
    decode, top_k = first.target_encoder.decode, config.evaluation.top_k
    layout = RunDir(out)
    facts = {"ensemble": combination.method, "members": ", ".join(m.ref for m in group), "task": first.task,
             "rows": len(rows["truth"])}
    metrics = evaluate_outputs(task=first.task, y_true=rows["truth"], output=output, rows=rows["rows"],
                               target_encoder=first.target_encoder, cfg=config.evaluation, out_dir=layout.eval_dir,
                               baselines=rows["baselines"], title=f"{config.name}: {rows['split']}", facts=facts,
                               split=rows["split"])
    member_metrics = [task_metrics(first.task, rows["truth"], _model_scale(first, o), decode, top_k)
                      for o in rows["test"]]
    shown = headline(first.task, config.evaluation.metrics, metrics)
    members = [{"ref": m.ref, "version": m.version, "run_dir": m.origin or str(m.run_dir.resolve()), "metrics": mm}
               for m, mm in zip(group, member_metrics)]
    write_json(layout.eval_dir / "members.json", members)
    table = members_table(first.task, [m.ref for m in group], member_metrics, metrics, shown)
    layout.report.write_text(layout.report.read_text() + "\n" + table)
    record = read_json(out / RECORD)
    write_json(out / RECORD, {**record, "members": members, "metrics": metrics, "parity": parity})
    return EnsembleResult(out, first.task, combination.method, metrics, shown, members, combination.to_json(), parity,
                          rows["split"])


def _register(result: EnsembleResult, config: Any, group: list[Any]) -> dict[str, Any]:
    """Log and register the ensemble; its version is tagged with its members (lineage) and method."""
    from modelfoundry.api.registration import track_run
    from modelfoundry.registry import tag_version

    logged = track_run(result.run_dir, config, {k: v for k, v in result.metrics.items()
                                                if isinstance(v, (int, float))})
    if logged.get("version"):
        refs = [m.ref if m.origin else m.version or str(m.run_dir.resolve()) for m in group]
        tag_version(f"{config.name}/{logged['version']}", {"foundry.ensemble_members": json.dumps(refs)[:5000],
                                                          "foundry.ensemble_method": result.method},
                    config.tracking.uri)
    return logged
