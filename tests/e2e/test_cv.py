"""`foundry cv`: k folds over every cleaned row, per-fold and mean ± std metrics, cv.json, clean errors."""

import json

import numpy as np
import pytest

from modelfoundry.config import load_config
from modelfoundry.data.prepare import load_clean
from modelfoundry.data.sources import load_source
from tests.conftest import tiny_config
from tests.e2e.test_cli import foundry, write_config


@pytest.fixture(scope="module")
def iris_cv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cv")
    result = foundry("cv", write_config(tmp), "--folds", 3, "--out", tmp / "out")  # with progress lines
    assert result.exit_code == 0, result.output
    return tmp / "out", result.output


def test_cv_prints_folds_and_mean_and_writes_cv_json(iris_cv):
    out, output = iris_cv
    report = json.loads((out / "cv.json").read_text())
    assert report["k"] == 3 and len(report["folds"]) == 3 and report["stratified"] is True
    assert report["task"] == "classification" and report["seed"] == 0 and len(report["data_sha256"]) == 64
    assert len(report["config_hash"]) == 16 and report["headline"] == ["accuracy", "f1_macro", "roc_auc"]
    for name, value in report["mean"].items():
        per_fold = [f["metrics"][name] for f in report["folds"]]
        assert value == pytest.approx(np.mean(per_fold))
        assert report["std"][name] == pytest.approx(np.std(per_fold, ddof=1))
    assert {"accuracy", "f1_macro", "roc_auc", "log_loss"} <= set(report["std"])
    assert load_config(out / "config.yaml").name == "tiny"  # the resolved config sits next to cv.json
    for line in ("fold 1/3  accuracy", "fold 3/3", "3-fold cross-validation", "mean ± std", str(out / "cv.json")):
        assert line in output
    mean_row = next(line for line in output.splitlines() if "mean ± std" in line)
    assert f"{report['mean']['accuracy']:.4f} ± {report['std']['accuracy']:.4f}" in mean_row


def test_cv_folds_partition_the_cleaned_rows_and_never_train_on_held_out_rows(iris_cv):
    out, _ = iris_cv
    report = json.loads((out / "cv.json").read_text())
    clean = load_clean(load_config(tiny_config()).data)
    total = len(clean.frame)
    assert report["rows"] == total == 149  # iris has one duplicate row, dropped by cleaning
    assert sum(f["rows_heldout"] for f in report["folds"]) == total
    held = [set(f["heldout_rows"]) for f in report["folds"]]
    assert set().union(*held) == set(clean.frame.index) and sum(map(len, held)) == total  # disjoint, complete
    for fold in report["folds"]:
        assert fold["rows_train"] + fold["rows_val"] + fold["rows_heldout"] == total
        assert fold["rows_val"] == int(np.ceil(0.15 * (total - fold["rows_heldout"])))
        assert fold["epochs_run"] == 3


def test_train_and_val_rows_of_each_fold_exclude_its_held_out_rows(monkeypatch, tmp_path):
    """The rows early stopping validates on come from the fold's training part."""
    import modelfoundry.experiment as experiment
    from modelfoundry.api.cross_validation import cross_validate

    seen, real_fit = [], experiment.fit_config
    monkeypatch.setattr(experiment, "fit_config", lambda config, data, **kw: seen.append(data.rows) or
                        real_fit(config, data, **kw))
    result = cross_validate(write_config(tmp_path), folds=4, out=tmp_path / "out", progress=False)
    assert len(seen) == 4
    for rows, fold in zip(seen, result.folds):
        assert list(rows["test"]) == fold["heldout_rows"]
        assert not set(rows["test"]) & (set(rows["train"]) | set(rows["val"]))
        assert not set(rows["train"]) & set(rows["val"])


def test_held_out_targets_do_not_influence_that_folds_training(monkeypatch, tmp_path):
    """Corrupt the targets of fold 1's held-out rows: fold 1 trains exactly as before, only its score moves."""
    import modelfoundry.experiment as experiment
    from modelfoundry.api.cross_validation import cross_validate

    histories, real_fit = [], experiment.fit_config

    def recording_fit(config, data, **kw):
        fitted = real_fit(config, data, **kw)
        histories.append([(h["train_loss"], h["val_loss"]) for h in fitted.history])
        return fitted

    monkeypatch.setattr(experiment, "fit_config", recording_fit)
    frame = load_source("sklearn:diabetes")
    frame.to_csv(tmp_path / "clean.csv", index=False)
    sections = {"training": {"epochs": 4, "batch_size": 32}}

    def run(csv, out):
        cfg = write_config(tmp_path, data={"source": str(tmp_path / csv)}, **sections)
        return cross_validate(cfg, folds=3, out=tmp_path / out, progress=False)

    before = run("clean.csv", "a")
    held = before.folds[0]["heldout_rows"]
    frame.loc[held, "target"] *= 10
    frame.to_csv(tmp_path / "corrupt.csv", index=False)
    after = run("corrupt.csv", "b")
    assert histories[0] == histories[3]  # fold 1: the same training, epoch by epoch
    assert histories[1] != histories[4]  # fold 2 trains on the corrupted rows, so it changes
    assert after.folds[0]["metrics"]["rmse"] > 3 * before.folds[0]["metrics"]["rmse"]


def test_cv_on_a_regression_task(tmp_path):
    cfg = write_config(tmp_path, data={"source": "sklearn:diabetes"}, training={"epochs": 3, "batch_size": 64})
    result = foundry("cv", cfg, "--folds", 2, "--out", tmp_path / "out", "--no-progress")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out/cv.json").read_text())
    assert report["task"] == "regression" and report["stratified"] is False and len(report["folds"]) == 2
    assert report["headline"] == ["r2", "rmse", "mae"] and report["mean"]["rmse"] > 10  # target units, not z-scores
    assert sum(f["rows_heldout"] for f in report["folds"]) == report["rows"] == 442
    assert "mean ± std" in result.output and "rmse" in result.output and "fold 1/2" not in result.output


def test_stratified_regression_is_a_config_error(tmp_path):
    cfg = write_config(tmp_path, data={"source": "sklearn:diabetes"})
    result = foundry("cv", cfg, "--folds", 3, "--stratified", "--no-progress")
    assert result.exit_code == 2
    assert "Stratified folds keep class proportions" in result.output and "regression task" in result.output
    assert "Traceback" not in result.output


def test_cv_errors_are_clean(tmp_path):
    cfg = write_config(tmp_path)
    too_many = foundry("cv", cfg, "--folds", 60, "--no-progress")  # iris: 49 to 50 rows per class
    assert too_many.exit_code == 3 and "fewer rows than the 60 folds" in too_many.output
    assert "--folds 49 or fewer" in too_many.output and "Traceback" not in too_many.output
    assert foundry("cv", cfg, "--folds", 1).exit_code == 2  # rejected by the option itself
    (tmp_path / "out").mkdir()
    (tmp_path / "out/cv.json").write_text("{}")
    taken = foundry("cv", cfg, "--folds", 2, "--out", tmp_path / "out")
    assert taken.exit_code == 4 and "already holds a cv.json" in taken.output
