"""The members of an ensemble: checked to be combinable (same task, labels and target; evaluated on the same
rows), and their outputs on a split: probabilities (N, K), or predictions in the target's units (N,)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelfoundry.artifacts.records import DataRecord
from modelfoundry.artifacts.rundir import RunDir
from modelfoundry.errors import ConfigError, DataError

TASKS = ("classification", "regression")


@dataclass
class Member:
    """One member: the reference given, its local run directory, its loaded model (rundir.SavedModel)."""

    ref: str
    saved: Any
    version: str | None = None  # NAME/VERSION when it is (or was registered as) a registry version
    origin: str | None = None  # where it comes from when its directory is temporary (a run's weight snapshot)

    @property
    def run_dir(self) -> Path:
        return Path(self.saved.run_dir)

    @property
    def desc(self) -> dict[str, Any]:
        """Its preprocessing description without the target (what a shared graph input depends on)."""
        return {k: v for k, v in self.saved.preprocessor.desc.items() if k != "target"}

    def outputs(self, inputs: Any) -> np.ndarray:
        """Probabilities (N, K) or predictions in the target's units (N,) on its own preprocessed inputs."""
        from modelfoundry.models.inference import predict_outputs

        out = predict_outputs(self.saved.model, inputs, self.saved.task)
        return out if self.saved.task == "classification" else self.saved.target_encoder.decode(out)


def check_members(members: list[Member]) -> None:
    """Refuse members that cannot be combined, naming the first that differs from member 1 and how."""
    if len(members) < 2:
        raise ConfigError(f"An ensemble needs at least two members; got {len(members)}.",
                          "Pass two or more: `foundry ensemble NAME/1 NAME/2 --method average`.")
    first = members[0]
    record = first.saved.record
    if record.task not in TASKS or first.saved.preprocessor.desc.get("kind") == "time_series":
        kind = "time series" if record.task in TASKS else record.task
        raise ConfigError(f"Member 1 ({first.ref}) is a {kind} model; ensembles combine classifiers or regressors "
                          "of tables, images or text.", "Ensemble classification or regression models.")
    for i, member in enumerate(members[1:], start=2):
        other = member.saved.record
        for what, mine, theirs in (("task", record.task, other.task), ("target column", record.target, other.target),
                                   ("labels", first.saved.labels, member.saved.labels)):
            if mine != theirs:
                raise ConfigError(f"Member {i} ({member.ref}) has {what} {theirs!r}, member 1 ({first.ref}) "
                                  f"{mine!r}; an ensemble's members must agree on the task, target and labels.",
                                  "Ensemble versions trained on the same data and target.")


def rows_key(member: Member) -> dict[str, Any]:
    """What decides a run's validation and test rows: its data (fingerprint), cleaning and split."""
    from modelfoundry.data.prepare import split_seed

    cfg = member.saved.config
    record = DataRecord.read(RunDir(member.run_dir).data_record)
    return {"data fingerprint": record.sha256[:12], "cleaning": record.cleaning,
            "split": {**cfg.data.split.model_dump(mode="json", exclude={"seed", "train_fraction"}),
                      "seed": split_seed(cfg.data, cfg.seed)}}


def check_same_rows(members: list[Member]) -> None:
    """Members are evaluated on the first one's splits: refuse any whose validation/test rows would differ
    (another source, cleaning or split seed), which could also have trained on the first one's test rows."""
    mine = rows_key(members[0])
    for i, member in enumerate(members[1:], start=2):
        theirs = rows_key(member)
        differs = [k for k in mine if mine[k] != theirs[k]]
        if differs:
            what = "; ".join(f"{k} {theirs[k]} vs {mine[k]}" for k in differs)
            raise DataError(f"Member {i} ({member.ref}) was trained on other rows than member 1 ({members[0].ref}): "
                            f"{what}. Its validation and test rows differ, and it may have trained on member 1's "
                            "test rows.", "Train the members on the same data with the same split seed "
                            "(data.split.seed), or evaluate the ensemble on a labelled file all members held out: "
                            "--data FILE.")


def snapshot_dirs(run_dir: Path, keep: int, work: Path) -> list[tuple[str, Path]]:
    """Snapshot ensembling: the last `keep` epochs' weights of a run (checkpoints/snapshot-<epoch>.pt, kept by
    training.average.snapshots), each made a run directory under `work` (the run's records, that epoch's
    weights); [(label "<run>@epoch-<N>", directory)], oldest first."""
    import re
    import shutil

    layout = RunDir(run_dir)
    found = sorted((int(m.group(1)), p) for p in layout.checkpoints.glob("snapshot-*.pt")
                   if (m := re.fullmatch(r"snapshot-(\d+)\.pt", p.name)))[-keep:]
    if len(found) < 2:
        raise ConfigError(f"{run_dir} holds {len(found)} weight snapshot(s) (checkpoints/snapshot-<epoch>.pt); "
                          f"--snapshots {keep} needs at least two.", "Train it with `training.average.snapshots: "
                          f"{max(keep, 2)}` (the last epochs' weights are kept), then run this again.")
    out = []
    for epoch, snapshot in found:
        target = RunDir(work / f"epoch-{epoch}")
        target.model_dir.mkdir(parents=True)
        for name in (RunDir.CONFIG, RunDir.DATA_RECORD, RunDir.MANIFEST, RunDir.PREPROCESS, RunDir.MODEL_RECORD):
            shutil.copyfile(layout.path / name, target.path / name)
        shutil.copyfile(snapshot, target.weights)
        out.append((f"{run_dir}@epoch-{epoch}", target.path))
    return out
