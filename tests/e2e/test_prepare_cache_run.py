"""`foundry run` on prepared data from the cache: the summary says so, the results are those of a fresh
preparation, tune trials of a new study prepare nothing, and a changed source is still seen by resume and evaluate."""

import json
import os

import pytest

from modelfoundry.config import load_config
from tests.conftest import tiny_config
from tests.e2e.test_cli import foundry, write_config
from tests.unit.test_text_data import reviews


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FOUNDRY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    reviews(160).to_csv(tmp_path / "r.csv", index=False)
    return tmp_path


def sections(tmp_path, **more):
    return {"data": {"source": str(tmp_path / "r.csv"), "text": {"max_length": 16, "min_freq": 1}},
            "model": {"name": "lstm", "embedding_dim": 8, "hidden": 8},
            "training": {"epochs": 2, "batch_size": 16, "num_threads": 1}, **more}


@pytest.mark.slow  # three runs and an evaluation: ~7 s on 2 busy cores
def test_a_second_run_reads_the_cache_and_ends_like_the_first(private_cache):
    tmp = private_cache
    cfg = write_config(tmp, **sections(tmp))
    first = foundry("run", cfg, "--run-dir", tmp / "one", "--no-progress")
    assert first.exit_code == 0, first.output
    assert "prepared data" in first.output and "cached for the next run" in first.output
    other = write_config(tmp, "other.yaml", **sections(tmp, model={"name": "lstm", "embedding_dim": 4, "hidden": 6}))
    second = foundry("run", other, "--run-dir", tmp / "two", "--no-progress")  # another model: the same data
    assert second.exit_code == 0, second.output
    assert "cache hit (saved" in second.output, second.output
    again = foundry("run", cfg, "--run-dir", tmp / "three", "--no-progress")
    assert again.exit_code == 0 and "cache hit" in again.output
    records = [json.loads((tmp / name / "data.json").read_text()) for name in ("one", "two", "three")]
    assert [r["cache"]["hit"] for r in records] == [False, True, True]
    assert records[0]["fingerprint"] == records[2]["fingerprint"] and records[0]["split"] == records[2]["split"]
    metrics = [json.loads((tmp / name / "eval" / "metrics.json").read_text()) for name in ("one", "three")]
    assert metrics[1] == metrics[0]  # the same config on cached data: the same model, the same test metrics
    assert (tmp / "three" / "model" / "reference.json").read_text() == \
        (tmp / "one" / "model" / "reference.json").read_text()  # the raw split rows came back from the cache too
    evaluated = foundry("evaluate", tmp / "three")
    assert evaluated.exit_code == 0, evaluated.output


def test_a_changed_source_is_seen_by_evaluate_and_resume(private_cache):
    from modelfoundry.api.resume import check_same_data
    from modelfoundry.errors import RunDirError
    from modelfoundry.experiment import prepare

    tmp = private_cache
    cfg = write_config(tmp, **sections(tmp))
    assert foundry("run", cfg, "--run-dir", tmp / "run", "--no-progress").exit_code == 0
    config = load_config(tiny_config(**sections(tmp)))
    check_same_data(tmp / "run", prepare(config).info)  # unchanged: a hit, the same fingerprint
    source = tmp / "r.csv"
    stat, text = source.stat(), source.read_text()
    source.write_text(text.replace("Rome", "Roma", 1))
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime: only the bytes differ
    with pytest.raises(RunDirError, match="changed since the run started"):
        check_same_data(tmp / "run", prepare(config).info)
    result = foundry("evaluate", tmp / "run")
    assert result.exit_code != 0 and "changed since" in result.output, result.output


@pytest.mark.slow  # two studies of two trials: ~6 s on 2 busy cores
def test_tune_trials_of_a_new_study_prepare_nothing(private_cache, monkeypatch):
    import modelfoundry.data.prepare as prepare_module
    from modelfoundry.api.tuning import tune

    fitted = []
    real = prepare_module.fit_transform
    monkeypatch.setattr(prepare_module, "fit_transform", lambda *a, **k: fitted.append(1) or real(*a, **k))
    tmp = private_cache
    space = {"training.optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}}
    config = load_config(tiny_config(**sections(tmp), output={"dir": str(tmp / "runs")},
                                     tune={"space": space, "n_trials": 2, "sampler": {"name": "random", "seed": 1}}))
    tune(config, out=tmp / "study1", progress=False)
    assert len(fitted) == 1  # prepared once for the whole study
    result = tune(config, out=tmp / "study2", progress=False)
    assert len(fitted) == 1 and len(result.rows) == 2  # a new study (as a new process would): from the disk cache
