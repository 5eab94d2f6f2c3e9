"""`evaluate`: a trained run on its own test split (re-derived, never refitted) or on a labelled file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from modelfoundry.api.arguments import model_dir
from modelfoundry.api.results import RunResult
from modelfoundry.artifacts.records import DataRecord
from modelfoundry.artifacts.rundir import RunDir
from modelfoundry.errors import DataError


def evaluate(run_dir: str | Path, data: str | Path | None = None, out: str | Path | None = None,
             progress: Any = None) -> RunResult:
    """Evaluate a trained run on its own test split, or on a labelled data file (`data`).

    Results go to `out` if given, else `run_dir/eval-<file stem>/` for a file, and for the test split
    `run_dir/eval/` unless that already holds the report `foundry run` wrote (then `run_dir/eval-test-split/`).
    Reports, plots and `extras["evaluated_on"]` name the rows evaluated: "test split" or the file's name.
    """
    from modelfoundry.evaluate.baselines import baseline_metrics
    from modelfoundry.evaluate.evaluation import evaluate_outputs
    from modelfoundry.evaluate.metrics import headline
    from modelfoundry.models.inference import predict_outputs
    from modelfoundry.rundir import load_model

    from modelfoundry.rundir import is_language_model

    started = time.perf_counter()
    run_dir = model_dir(run_dir)
    if is_language_model(run_dir):  # generated answers scored, beside the base model's
        from modelfoundry.api.language_models import evaluate_run

        return evaluate_run(run_dir, Path(data) if data else None, Path(out) if out else None, progress)
    saved = load_model(run_dir)
    if saved.task == "anomaly":  # scores against normal/anomaly labels, beside the anomaly baselines
        return _evaluate_anomaly(saved, Path(data) if data else None, Path(out) if out else None, started)
    if saved.task == "generative":  # a GAN's rows scored against its test split again (C2ST, TSTR, FD)
        from modelfoundry.api.sampling import evaluate_saved_gan

        return evaluate_saved_gan(saved, data, out, started)
    cfg = saved.config
    baselines = None
    if data is None:
        splits = reload_splits(saved)
        X, y, rows = splits["X"]["test"], splits["y"]["test"], splits["rows"]["test"]
        n_classes = saved.record.n_outputs if saved.task == "classification" else 1
        baselines = baseline_metrics(saved.task, splits["X"], splits["y"], n_classes, saved.target_encoder.decode,
                                     cfg.evaluation.top_k, splits["texts"],
                                     season=saved.preprocessor.desc["time_series"]["season"]
                                     if saved.preprocessor.desc["kind"] == "time_series" else None)
        split = "test split"
        layout = RunDir(saved.run_dir)  # the run's own report (learning curves, best epoch) is kept
        out_dir = Path(out or (layout.reeval_dir if layout.report.is_file() else layout.eval_dir))
        facts = {"run": str(saved.run_dir), "model": cfg.model.name, "task": saved.task, "rows (test)": len(y)}
        if saved.record.best_epoch:
            facts["best epoch"] = saved.record.best_epoch
    else:
        X, y, rows = _labelled_file(saved, Path(data))
        split = Path(data).name
        out_dir = Path(out or saved.run_dir / f"eval-{Path(data).stem}")
        facts = {"data": str(data), "rows": len(y), "run": str(saved.run_dir), "model": cfg.model.name}
    output = predict_outputs(saved.model, X, saved.task)
    metrics = evaluate_outputs(task=saved.task, y_true=y, output=output, rows=rows, target_encoder=saved.target_encoder,
                               cfg=cfg.evaluation, out_dir=out_dir, history=_history(saved.run_dir),
                               baselines=baselines, title=f"{cfg.name}: {split}", facts=facts, split=split,
                               threshold=saved.record.threshold)
    return RunResult(saved.run_dir, saved.task, metrics, headline(saved.task, cfg.evaluation.metrics, metrics),
                     0, 0, "", None, wall_s=time.perf_counter() - started,
                     extras={"out_dir": out_dir, "evaluated_on": split})


def reload_splits(saved: Any) -> dict[str, dict[str, Any]]:
    """Re-derive the run's splits from its source and apply the saved preprocessing (no refitting)."""
    from modelfoundry.data.prepare import rebuild_splits

    cfg = saved.config
    recorded = DataRecord.read(RunDir(saved.run_dir).data_record).sha256
    out: dict[str, Any] = {"X": {}, "y": {}, "rows": {}, "texts": None}
    encoder = None
    if "text" in saved.preprocessor.desc:
        from modelfoundry.data.portable import text_encoder

        encoder, out["texts"] = text_encoder(saved.preprocessor.desc), {}
    series = saved.preprocessor.desc["kind"] == "time_series"
    for name, part in rebuild_splits(cfg.data, cfg.seed, recorded, saved.run_dir).items():
        if series:  # a history: the split's windows and their forecast steps
            out["X"][name], y, out["rows"][name] = _windows(saved, part, f"the {name} split")
            out["y"][name] = y
            continue
        out["X"][name] = saved.preprocessor.transform(part, f"the {name} split")
        if encoder is not None:
            out["texts"][name] = encoder.texts(part, f"the {name} split")
        label = getattr(saved.target_encoder, "column_", cfg.data.target)  # an anomaly task's may be a stand-in
        out["y"][name] = saved.target_encoder.encode(part[label], f"the {name} split")
        out["rows"][name] = part.index.to_numpy()
    return out


def _evaluate_anomaly(saved: Any, data: Path | None, out: Path | None, started: float) -> RunResult:
    """An anomaly detector on its test split (beside the baselines, refitted on its normal training rows) or on a
    file: with the label column, against the labels; without it, the score distribution and the share flagged."""
    from modelfoundry.evaluate.anomaly import baseline_metrics, evaluate_anomaly, headline
    from modelfoundry.models.inference import predict_outputs

    cfg, target, layout = saved.config, saved.target_encoder, RunDir(saved.run_dir)
    baselines = None
    if data is None:
        splits = reload_splits(saved)
        X, rows, split = splits["X"]["test"], splits["rows"]["test"], "test split"
        truth = splits["y"]["test"] > 0.5 if target.labelled else None
        baselines = baseline_metrics(splits["X"], truth, target.false_alarm_rate, cfg.seed)
        out_dir = out or (layout.reeval_dir if layout.report.is_file() else layout.eval_dir)
    else:
        from modelfoundry.data.sources import read_table

        frame = read_table(data)
        labelled = saved.record.target is not None and saved.record.target in frame.columns
        X, rows, split = saved.preprocessor.transform(frame, origin=str(data)), frame.index.to_numpy(), data.name
        truth = target.is_anomaly(frame[saved.record.target]) if labelled else None
        out_dir = out or saved.run_dir / f"eval-{data.stem}"
    scores = predict_outputs(saved.model, X, saved.task)
    facts = {"run": str(saved.run_dir), "model": cfg.model.name, "task": saved.task, "rows": len(scores),
             "threshold": f"{target.threshold_:.6g}", "labels": "yes" if truth is not None else "none"}
    metrics = evaluate_anomaly(scores=scores, is_anomaly=truth, threshold=target.threshold_, rows=rows,
                               out_dir=out_dir, plots=cfg.evaluation.plots, top=cfg.evaluation.confused_examples,
                               history=_history(saved.run_dir), baselines=baselines, title=f"{cfg.name}: {split}",
                               facts=facts, split=split)
    return RunResult(saved.run_dir, saved.task, metrics, headline(metrics), 0, 0, "", None,
                     wall_s=time.perf_counter() - started, extras={"out_dir": out_dir, "evaluated_on": split})


def _labelled_file(saved: Any, path: Path) -> tuple[Any, Any, Any]:
    from modelfoundry.data.sources import read_table

    frame = read_table(path)
    if saved.preprocessor.desc["kind"] == "time_series":  # a history: every window with its forecast steps in it
        return _windows(saved, frame, str(path))
    target = saved.record.target
    if target not in frame.columns:
        raise DataError(f"'{path}' has no target column '{target}', so it cannot be evaluated.",
                        f"Add the '{target}' column, or use `foundry predict` for unlabelled rows.")
    frame = frame[frame[target].notna()]
    if frame.empty:
        raise DataError(f"'{path}' has no rows with a value in the target column '{target}'.",
                        "Evaluate on labelled rows.")
    X = saved.preprocessor.transform(frame, origin=str(path))
    y = saved.target_encoder.encode(frame[target], str(path))
    return X, y, frame.index.to_numpy()


def _windows(saved: Any, frame: Any, origin: str) -> tuple[Any, Any, Any]:
    """A time series history -> (windows, encoded targets (N,) or (N, H), rows of the first forecast steps)."""
    from modelfoundry.data.timeseries import labelled_windows

    X, truth, rows = labelled_windows(saved.preprocessor.desc, frame, origin)
    y = ((truth - saved.target_encoder.mean_) / saved.target_encoder.std_).astype("float32")  # standardised
    return X, (y[:, 0] if y.shape[1] == 1 else y), rows


def _history(run_dir: Path) -> list[dict[str, Any]]:
    import json

    path = RunDir(run_dir).metrics_log
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
