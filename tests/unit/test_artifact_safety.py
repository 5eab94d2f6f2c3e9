"""Nothing loaded from a run directory executes code: preprocessing is JSON, weights and checkpoints load
data-only, and 0.1's pickled preprocessing is only ever read by a restricted unpickler (`foundry migrate`)."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from modelfoundry.errors import RunDirError
from modelfoundry.legacy import migrate_run_dir
from modelfoundry.rundir import load_model

LEGACY = Path(__file__).parents[1] / "fixtures" / "legacy_run_0_1"


class Payload:
    """Pickles to a call of os.system that writes a marker file: the classic pickle trojan."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def legacy_run(tmp_path):
    run_dir = tmp_path / "legacy"
    shutil.copytree(LEGACY, run_dir)
    return run_dir


def test_a_legacy_run_is_refused_until_migrated_then_predicts(legacy_run):
    with pytest.raises(RunDirError, match=r"foundry migrate .*legacy") as info:
        load_model(legacy_run)
    assert "pickle" in info.value.message
    written = migrate_run_dir(legacy_run)
    assert written.name == "preprocess.json" and not (legacy_run / "preprocess.pkl").exists()
    assert (legacy_run / "preprocess.pkl.migrated").is_file()
    saved = load_model(legacy_run)
    import pandas as pd

    rows = pd.DataFrame({"sepal length (cm)": [5.1, 6.7], "sepal width (cm)": [3.5, 3.0],
                         "petal length (cm)": [1.4, 5.2], "petal width (cm)": [0.2, 2.3]})
    x = saved.preprocessor.transform(rows)["numeric"]  # a 0.1 run's one input is "numeric"
    assert x.shape == (2, 4) and np.isfinite(x).all() and saved.record.input_spec.names == ["numeric"]
    with torch.no_grad():
        assert saved.model(torch.from_numpy(x)).shape == (2, 3)
    with pytest.raises(RunDirError, match="already has preprocess.json"):
        migrate_run_dir(legacy_run)


def test_a_trojan_pickle_is_refused_by_migrate_and_runs_nothing(legacy_run, tmp_path):
    marker = tmp_path / "pwned"
    (legacy_run / "preprocess.pkl").write_bytes(pickle.dumps({"preprocessor": Payload(marker),
                                                              "target_encoder": None}))
    with pytest.raises(RunDirError, match=r"posix\.system|os\.system") as info:
        migrate_run_dir(legacy_run)
    assert "Nothing in it was run" in info.value.message
    with pytest.raises(RunDirError):
        load_model(legacy_run)
    assert not marker.exists()
    assert not (legacy_run / "preprocess.json").exists() and (legacy_run / "preprocess.pkl").is_file()


def test_trojan_weights_run_nothing(legacy_run, tmp_path):
    migrate_run_dir(legacy_run)
    marker = tmp_path / "pwned"
    with open(legacy_run / "model" / "weights.pt", "wb") as handle:
        torch.save({"layer.weight": Payload(marker)}, handle)
    with pytest.raises(RunDirError, match="not a readable weights file"):
        load_model(legacy_run)
    assert not marker.exists()


def test_trojan_checkpoint_runs_nothing_on_resume(tmp_path, make_config):
    from modelfoundry.train.loop import load_checkpoint

    marker = tmp_path / "pwned"
    path = tmp_path / "last.pt"
    torch.save({"epoch": 1, "model": {}, "optimizer": {}, "schedule": {}, "early_stopping": {}, "history": [],
                "rng": Payload(marker)}, path)
    with pytest.raises(RunDirError, match="could run code, so it was not loaded"):
        load_checkpoint(path)
    assert not marker.exists()
    path.write_bytes(b"\x80\x02truncated")
    with pytest.raises(RunDirError, match="Cannot resume from"):
        load_checkpoint(path)


def test_a_real_checkpoint_loads_data_only_and_resume_is_exact(tmp_path, make_config):
    """The checkpoint format with RNG state as tensors/plain values round-trips under weights_only=True."""
    from modelfoundry.api.training import run
    from modelfoundry.train.loop import load_checkpoint

    config = make_config(training={"epochs": 4})
    first = run(config, run_dir=tmp_path / "a", progress=False)
    state = load_checkpoint(first.run_dir / "checkpoints" / "last.pt")
    assert state["epoch"] == 4 and state["finished"] is True
    assert isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)


def test_corrupt_records_are_one_clear_error(legacy_run):
    migrate_run_dir(legacy_run)
    (legacy_run / "preprocess.json").write_text('{"format": 2, "kind"')
    with pytest.raises(RunDirError, match="preprocess.json' is corrupt"):
        load_model(legacy_run)
    (legacy_run / "preprocess.json").write_text('{"format": 99}')
    with pytest.raises(RunDirError, match="format 99"):
        load_model(legacy_run)
