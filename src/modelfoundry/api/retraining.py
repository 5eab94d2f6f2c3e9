"""`retrain`: champion-challenger. A challenger is trained on new data (warm: from the champion's weights at a lower
learning rate, on the champion's preprocessing; full: a fresh run of the champion's config on its reference data plus
the new rows), both are scored on the same recent holdout, and the gate decides whether the challenger takes the
alias; the decision and its numbers go to the alias history either way. The recent holdout and the gate are
monitor/champion.py's.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelfoundry.api.arguments import fresh_dir
from modelfoundry.artifacts.rundir import RunDir
from modelfoundry.errors import ConfigError, DataError, TrainingError
from modelfoundry.monitor.champion import (Decision, check_columns, check_holdout, gate, gate_metrics,
                                             split_recent)
from modelfoundry.storage import write_json

if TYPE_CHECKING:
    import pandas as pd

    from modelfoundry.config import Config, RetrainConfig
    from modelfoundry.reporting import Reporter
    from modelfoundry.rundir import SavedModel

HOLDOUT_FILE, DATA_FILE, RECORD_FILE = "retrain-holdout.parquet", "retrain-data.parquet", "retrain.json"


@dataclass
class RetrainResult:
    mode: str
    run_dir: Path  # the challenger's run directory
    champion: dict[str, Any]  # ref, name, version (None for a run directory), run_dir
    challenger_version: str | None  # None: not registered (a dry run, or tracking off for a run-directory champion)
    metric: str
    holdout: dict[str, dict[str, float]]  # "champion" / "challenger" -> metrics on the holdout
    decision: Decision
    rows: dict[str, int]  # "train" (new training rows), "holdout"
    test_metrics: dict[str, float]  # the challenger on its own test split
    moves: list[dict[str, Any]] = field(default_factory=list)  # alias history entries written
    dry_run: bool = False
    wall_s: float = 0.0


def retrain(model: str | Path, data: str | Path, *, mode: str | None = None, alias: str | None = None,
            metric: str | None = None, margin: float | None = None, tolerance: float | None = None,
            holdout: float | None = None, epochs: int | None = None, dry_run: bool = False, uri: str | None = None,
            run_dir: str | Path | None = None, progress: Reporter | bool | None = None) -> RetrainResult:
    """Train a challenger of `model` on `data`, compare both on the recent holdout, and let the gate decide.

    Args:
        model: the champion: NAME@ALIAS, NAME/VERSION, NAME (= NAME@`alias`), or a run directory (nothing is
            promoted then; the challenger is registered when its config tracks).
        data: a labelled file with the champion's columns and target, oldest rows first.
        mode, alias, metric, margin, tolerance, holdout, epochs: override the champion's monitor.retrain.
        dry_run: train and compare, register and move nothing.
        uri: the registry the champion is looked up in (and the challenger registered in).
    Returns:
        The decision, the holdout metrics of both, the versions and the alias history entries written.
    """
    from modelfoundry.data.sources import read_table

    started = time.perf_counter()
    champion = _champion(model, alias, uri)
    saved = champion["saved"]
    settings = _settings(saved.config.monitor.retrain, mode=mode, alias=alias, metric=metric, margin=margin,
                         tolerance=tolerance, holdout=holdout, epochs=epochs)
    _check_task(saved, settings.mode)
    primary, others = gate_metrics(saved, settings.metric)
    frame = read_table(Path(data), "--data")
    check_columns(saved, frame, str(data))
    train_rows, recent = split_recent(frame, settings.holdout, saved.record.target, str(data))
    check_holdout(recent, saved.record.target, primary, str(data))
    cfg = saved.config
    out = Path(run_dir) if run_dir else fresh_dir(Path(cfg.output.dir), f"{champion['name'] or cfg.name}-retrain")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        recent.to_parquet(out / HOLDOUT_FILE, index=False)
        config = _challenger_config(saved, champion, settings, out, uri)
        if settings.mode == "warm":
            _train_warm(config, saved, train_rows, out, progress)
        else:
            _train_full(config, saved, train_rows, out, progress)
    except BaseException:  # an error or Ctrl-C: no half challenger left behind
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return _judge(champion, config, settings, out, recent, (primary, others), len(train_rows), dry_run, started)


def _judge(champion: dict[str, Any], config: Config, settings: RetrainConfig, out: Path, recent: pd.DataFrame,
           names: tuple[str, list[str]], train_rows: int, dry_run: bool, started: float) -> RetrainResult:
    """Score both on the holdout, decide, write retrain.json, and (unless a dry run) register and move aliases."""
    from modelfoundry.api.evaluation import evaluate
    from modelfoundry.data.fingerprint import fingerprint
    from modelfoundry.rundir import load_model

    test_metrics = evaluate(out).metrics
    challenger = load_model(out)
    origin = f"the holdout ({len(recent)} last rows)"
    scores = {"champion": holdout_metrics(champion["saved"], recent, origin),
              "challenger": holdout_metrics(challenger, recent, origin)}
    decision = gate(scores["champion"], scores["challenger"], names[0], names[1], settings.margin, settings.tolerance)
    source = fingerprint(recent, config.data.target, challenger.task, str(out / HOLDOUT_FILE))
    record = {"mode": settings.mode, "champion": {k: champion[k] for k in ("ref", "name", "version")},
              "champion_run": str(champion["saved"].run_dir.resolve()), "data_sha256": _data_sha(out, config),
              "holdout_sha256": source["sha256"], "rows": {"train": train_rows, "holdout": len(recent)},
              "metric": names[0], "margin": settings.margin, "tolerance": settings.tolerance,
              "holdout_metrics": scores, "promote": decision.promote, "reason": decision.reason}
    result = RetrainResult(settings.mode, out, {k: champion[k] for k in ("ref", "name", "version")} |
                           {"run_dir": str(champion["saved"].run_dir)}, None, names[0], scores, decision,
                           {"train": train_rows, "holdout": len(recent)}, test_metrics, dry_run=dry_run)
    if not dry_run and (champion["name"] is not None or config.tracking.enabled):
        _register(result, champion, config, settings, record, test_metrics)
    write_json(out / RECORD_FILE, {**record, "challenger_version": result.challenger_version,
                                   "moves": result.moves, "dry_run": dry_run})
    result.wall_s = time.perf_counter() - started
    return result


def _register(result: RetrainResult, champion: dict[str, Any], config: Config, settings: RetrainConfig,
              record: dict[str, Any], test_metrics: dict[str, float]) -> None:
    """Register the challenger with its lineage; move the challenger alias, then let the gate move the alias."""
    from modelfoundry.api.registration import parent_version, track_run
    from modelfoundry.registry import promote, refuse, tag_version

    parent = champion["version"] or parent_version(champion["saved"].run_dir, champion["saved"].run_dir,
                                                   champion["saved"])
    uri = config.tracking.uri
    logged = track_run(result.run_dir, config, test_metrics, parent_version=parent)
    version = result.challenger_version = logged["version"]
    if version is None:  # tracking.register_model is off: logged, not registered
        return
    tag = {k: record[k] for k in ("mode", "data_sha256", "holdout_sha256", "rows", "metric", "promote")}
    tag_version(f"{config.name}/{version}", {"foundry.retrain": json.dumps(tag)}, uri)
    if champion["name"] is None:  # a run directory: no alias to defend
        return
    why = f"retrain ({settings.mode}) of v{champion['version']} on {result.rows['holdout']} holdout rows: "
    result.moves.append(promote(config.name, version, settings.challenger_alias,
                                why + f"the challenger ({'promoted' if result.decision.promote else 'refused'} "
                                f"for {settings.alias})", uri))
    move = promote if result.decision.promote else refuse
    result.moves.append(move(config.name, version, settings.alias, why + result.decision.reason, uri))


def _data_sha(out: Path, config: Config) -> str:
    from modelfoundry.artifacts.records import DataRecord

    return DataRecord.read(RunDir(out).data_record).sha256


# ------------------------------------------------------------------------------------- the inputs
def _champion(model: str | Path, alias: str | None, uri: str | None) -> dict[str, Any]:
    """The champion loaded, with its registered name and version (None for a run directory)."""
    from modelfoundry.registry import download, parse_ref
    from modelfoundry.rundir import load_model

    if Path(model).exists():
        return {"saved": load_model(Path(model)), "ref": str(model), "name": None, "version": None}
    name, version, named_alias = parse_ref(str(model))
    ref = f"{name}/{version}" if version else f"{name}@{named_alias or alias or 'production'}"
    local = download(ref, uri)
    return {"saved": load_model(local), "ref": ref, "name": name, "version": local.name}


def _settings(base: RetrainConfig, **overrides: Any) -> RetrainConfig:
    from pydantic import ValidationError

    from modelfoundry.config import RetrainConfig

    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return RetrainConfig.model_validate({**base.model_dump(), **given})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors())
        raise ConfigError(f"Retrain options: {problems}.", "See docs/config.md#monitor.") from None


def _check_task(saved: SavedModel, mode: str) -> None:
    if saved.task not in ("classification", "regression") or saved.config.data.time_series is not None:
        raise ConfigError(f"`foundry retrain` handles tabular and image classifiers and regressors; "
                          f"{saved.run_dir} is a {saved.task} model"
                          f"{' on a time series' if saved.config.data.time_series else ''}.",
                          "Train a new run on the new data with `foundry run` instead.")
    if mode == "warm" and saved.record.runtime == "onnx":
        raise ConfigError(f"{saved.run_dir} is a compressed ONNX graph: its weights cannot be trained further.",
                          "Use --mode full, or retrain its parent.")


def holdout_metrics(saved: SavedModel, frame: pd.DataFrame, origin: str) -> dict[str, float]:
    """A model's metrics on labelled raw rows, through its own preprocessing."""
    from modelfoundry.evaluate.metrics import task_metrics
    from modelfoundry.models.inference import predict_outputs

    X = saved.preprocessor.transform(frame, origin)
    y = saved.target_encoder.encode(frame[saved.record.target], origin)
    output = predict_outputs(saved.model, X, saved.task)
    return task_metrics(saved.task, y, output, saved.target_encoder.decode, saved.config.evaluation.top_k)


# --------------------------------------------------------------------------------- the challenger
def _challenger_config(saved: SavedModel, champion: dict[str, Any], settings: RetrainConfig, out: Path,
                       uri: str | None) -> Config:
    """The champion's config, on the challenger's data file, with the retrain epochs and (warm) learning rate;
    registered where the champion was found."""
    cfg = saved.config
    training = cfg.training
    epochs = settings.epochs or (max(1, training.epochs // 3) if settings.mode == "warm" else training.epochs)
    update: dict[str, Any] = {"epochs": epochs}
    if settings.mode == "warm":
        factor = settings.lr_factor
        update["optimizer"] = training.optimizer.model_copy(update={"lr": training.optimizer.lr * factor})
        if training.scheduler.max_lr is not None:
            update["scheduler"] = training.scheduler.model_copy(update={"max_lr": training.scheduler.max_lr * factor})
    tracking = cfg.tracking
    if champion["name"] is not None:  # registered: the challenger goes to the registry the champion came from
        tracking = tracking.model_copy(update={"enabled": True, "register_model": True, "uri": uri})
    elif uri is not None:
        tracking = tracking.model_copy(update={"uri": uri})
    return cfg.model_copy(update={"name": champion["name"] or cfg.name, "tracking": tracking,
                                  "training": training.model_copy(update=update),
                                  "data": cfg.data.model_copy(update={"source": str((out / DATA_FILE).resolve())})})


def _train_full(config: Config, saved: SavedModel, rows: pd.DataFrame, out: Path,
                progress: Reporter | bool | None) -> None:
    """A fresh run of the champion's config on its reference data (data.source, read again) plus the new rows."""
    import pandas as pd

    from modelfoundry.api.training import train
    from modelfoundry.data.sources import load_source

    try:
        reference = load_source(saved.config.data.source)
    except DataError as exc:
        raise DataError(f"A full retrain reads the champion's reference data again: {exc.message}",
                        "Restore it, or retrain with --mode warm (the new rows only).") from None
    combined = pd.concat([reference, rows.reindex(columns=reference.columns)], ignore_index=True)
    combined.to_parquet(out / DATA_FILE, index=False)
    _finished(train(config, run_dir=out, progress=progress).interrupted, out)


def _train_warm(config: Config, saved: SavedModel, rows: pd.DataFrame, out: Path,
                progress: Reporter | bool | None) -> None:
    """The champion's weights trained further on the new rows (split into train/val/test as any run), through the
    champion's preprocessing unchanged: its weights expect those inputs."""
    from modelfoundry.config import config_hash
    from modelfoundry.experiment import fit_config
    from modelfoundry.manifest import build_manifest
    from modelfoundry.rundir import save_config, save_model
    from modelfoundry.train.loop import trained_state
    from modelfoundry.train.runtime import seed_everything, select_device

    rows.to_parquet(out / DATA_FILE, index=False)
    data = warm_data(config, saved)
    save_config(out, config)
    write_json(RunDir(out).data_record, data.info)
    determinism = seed_everything(config.seed, config.training.deterministic)
    write_json(RunDir(out).manifest, build_manifest(
        seed=config.seed, split_seed=data.info["split"]["seed"], device=str(select_device(config.training.device)),
        determinism=determinism, config_hash=config_hash(config), fingerprint=data.info["fingerprint"],
        project_dir=Path.cwd()))
    fit_result = fit_config(config, data, run_dir=out, progress=progress, initial_state=trained_state(saved.model))
    _finished(fit_result.interrupted, out)
    spec = {**saved.spec, "name": config.name, "best_epoch": fit_result.best_epoch, "config_hash": config_hash(config)}
    from modelfoundry.api.training import save_reference_profile, tuned_threshold

    if data.task == "classification":  # the decision threshold, tuned again for the new weights
        tuned = config.evaluation.threshold.metric != "none"
        spec["threshold"] = tuned_threshold(config, data, fit_result.model) if tuned else None
    save_model(out, fit_result.model.cpu(), spec, data.preprocessor, data.target_encoder)

    save_reference_profile(config, data, fit_result.model, out)  # the monitor's reference: the new training rows


def warm_data(config: Config, saved: SavedModel) -> Any:
    """PreparedData of the challenger's data file split as any run's (so `foundry evaluate` rebuilds it), through
    the champion's fitted preprocessing and target encoding (never refitted)."""
    from modelfoundry.data.balance import class_weights
    from modelfoundry.data.prepare import SPLITS, PreparedData, load_clean, split_frame, split_seed

    seed = split_seed(config.data, config.seed)
    clean = load_clean(config.data, seed)
    if clean.task != saved.task:
        raise DataError(f"The new data looks like a {clean.task} target, the champion is a {saved.task} model.",
                        "Set data.task in the champion's config, or check the target column.")
    positions = split_frame(clean, config.data, config.seed)
    parts = {name: clean.frame.iloc[positions[name]] for name in SPLITS}
    pre, target = saved.preprocessor, saved.target_encoder
    try:
        X = {name: pre.transform(part, f"the {name} split of the new data") for name, part in parts.items()}
        y = {name: target.encode(part[config.data.target], f"the {name} split of the new data")
             for name, part in parts.items()}
    except DataError as exc:
        raise DataError(exc.message, "A warm retrain keeps the champion's preprocessing and classes; "
                        "--mode full refits them on the reference and new data.") from None
    weights = None
    if clean.task == "classification":
        weights = class_weights(y["train"], target.classes_, config.data.balance.class_weights)
    stratified = config.data.split.stratify and clean.task == "classification"
    info = {**clean.info, "split": {"seed": seed, "stratified": stratified,
                                    **{name: int(len(part)) for name, part in parts.items()}},
            "input_shape": list(pre.input_shape_) if len(pre.input_spec_) == 1 else None,
            "inputs": pre.input_spec_.to_json(), "warm_start": True}
    rows = {name: part.index.to_numpy() for name, part in parts.items()}
    return PreparedData(clean.task, X, y, rows, pre, target, weights, info, frames=parts)


def _finished(interrupted: bool, out: Path) -> None:
    if interrupted:
        raise TrainingError(f"Retraining was interrupted; the challenger in {out} is not finished.",
                            "Run `foundry retrain` again.")

