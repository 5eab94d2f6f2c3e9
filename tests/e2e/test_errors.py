"""Broken configs and data files: each gives a one-paragraph error naming the culprit, never a traceback."""

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from modelfoundry.cli import app
from modelfoundry.data.sources import load_source
from tests.conftest import tiny_config

runner = CliRunner()


def csv(tmp_path, frame, name="data.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return str(path)


def iris():
    return load_source("sklearn:iris")


CASES = {
    # name: (make config sections from tmp_path, text the message must contain, exit code)
    "unknown key": (lambda t: {"training": {"epochs": 2, "optimiser": {}}}, "Did you mean 'optimizer'", 2),
    "negative lr": (lambda t: {"training": {"optimizer": {"lr": -1}}}, "training.optimizer.lr", 2),
    "unknown model": (lambda t: {"model": {"name": "mlpp"}}, "Did you mean 'mlp'? Valid names: autoencoder, cnn, ", 2),
    "missing file": (lambda t: {"data": {"source": str(t / "nope.csv")}}, "nope.csv' does not exist", 3),
    "unknown bundled": (lambda t: {"data": {"source": "sklearn:mnist"}}, "sklearn:digits", 3),
    "unreadable suffix": (lambda t: {"data": {"source": str(t / "x.xls")}}, "does not exist", 3),
    "unknown target": (lambda t: {"data": {"source": csv(t, iris()), "target": "species"}}, "'species'", 3),
    "unknown feature key": (lambda t: {"data": {"source": "sklearn:iris", "features": {"petal": {"type": "numeric"}}}},
                            "'petal'", 3),
    "text in numeric": (lambda t: {"data": {"source": csv(t, iris().astype({"sepal width (cm)": object}).assign(
        **{"sepal width (cm)": ["3.5"] * 149 + ["n/a!"]}))}}, "sepal width (cm)", 3),
    "one class": (lambda t: {"data": {"source": csv(t, iris().assign(target=1))}}, "single class", 3),
    "nothing left": (lambda t: {"data": {"source": csv(t, iris().assign(**{"petal width (cm)": np.nan})),
                                         "features": {"petal width (cm)": {"missing": "drop"}}}}, "Nothing is left", 3),
    "empty file": (lambda t: {"data": {"source": str(t / "empty.csv") if (t / "empty.csv").write_text("") == 0
                                       else ""}}, "empty", 3),
    "cnn on tabular": (lambda t: {"model": {"name": "cnn"}}, "needs image inputs", 2),
    "fp16 on cpu": (lambda t: {"training": {"precision": "fp16"}}, "bf16", 2),
    "monitor of the other task": (lambda t: {"training": {"early_stopping": {"monitor": "val_r2"}}},
                                  "val_r2 is a regression monitor", 2),
    "loss of the other task": (lambda t: {"training": {"loss": "mse"}}, "training.loss: mse", 2),
    "mean of a category": (lambda t: {"data": {"source": csv(t, iris().assign(kind="x")),
                                               "features": {"kind": {"missing": "mean"}}}}, "'kind'", 3),
    "rare class stratified": (lambda t: {"data": {"source": csv(t, pd.concat([iris(), iris().head(1).assign(target=7)]))}},
                              "stratify: false", 3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_input_gives_a_clean_error(tmp_path, case):
    import torch

    if case == "fp16 on cpu" and torch.cuda.is_available():
        pytest.skip("fp16 is valid with CUDA")
    sections, expected, code = CASES[case]
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config(**sections(tmp_path))))
    result = runner.invoke(app, ["run", str(path), "--run-dir", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == code, result.output
    assert "Error:" in result.output and expected in result.output, result.output
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


def test_bad_run_dirs_and_prediction_inputs(tmp_path):
    result = runner.invoke(app, ["evaluate", str(tmp_path / "nowhere")])
    assert result.exit_code == 4 and "neither a run directory" in result.output
    result = runner.invoke(app, ["run", "--resume", str(tmp_path)])
    assert result.exit_code == 4 and "not a run directory" in result.output
    result = runner.invoke(app, ["run"])
    assert result.exit_code == 2 and "--resume" in result.output
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config()))
    assert runner.invoke(app, ["run", str(cfg), "--run-dir", str(tmp_path / "r"), "--no-progress"]).exit_code == 0
    rows = csv(tmp_path, iris().drop(columns=["target", "petal length (cm)"]), "rows.csv")
    result = runner.invoke(app, ["predict", str(tmp_path / "r"), rows, "-o", str(tmp_path / "p.csv")])
    assert result.exit_code == 3 and "petal length (cm)" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["run", str(cfg), "--run-dir", str(tmp_path / "r"), "--no-progress"])
    assert result.exit_code == 4 and "already holds a run" in result.output


def test_an_unwritable_output_directory_is_reported_cleanly(tmp_path):
    import os

    if os.geteuid() == 0:  # root writes anywhere: block the path with a file instead
        blocker = tmp_path / "blocked"
        blocker.write_text("a file where the run directory should go")
        run_dir = blocker / "run"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        run_dir = locked / "run"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config()))
    result = runner.invoke(app, ["run", str(cfg), "--run-dir", str(run_dir), "--no-progress"])
    assert result.exit_code == 1 and "Error: could not access" in result.output and "Traceback" not in result.output


def one_paragraph(result, code, *expected):
    """Exit `code`, an 'Error:' paragraph holding every `expected` text, and no traceback."""
    assert result.exit_code == code, result.output
    assert "Error:" in result.output and all(e in result.output for e in expected), result.output
    assert "Traceback" not in result.output and (result.exception is None or isinstance(result.exception, SystemExit))


def test_failures_before_training_leave_no_run_directory(tmp_path):
    frame = iris()
    frame.loc[3, "sepal length (cm)"] = np.inf
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(data={"source": csv(tmp_path, frame)}, output={"dir": str(tmp_path / "runs")})))
    one_paragraph(runner.invoke(app, ["run", str(cfg), "--no-progress"]), 3, "sepal length (cm)", "infinite")
    one_paragraph(runner.invoke(app, ["run", str(cfg), "--run-dir", str(tmp_path / "run"), "--no-progress"]), 3,
                  "infinite")
    assert not (tmp_path / "run").exists() and not list((tmp_path / "runs").glob("*"))
    big = tmp_path / "big.yaml"  # 160 GB of weights: refused by the allocator, reported as one paragraph
    big.write_text(yaml.safe_dump(tiny_config(model={"name": "mlp", "hidden": [10_000_000_000]})))
    one_paragraph(runner.invoke(app, ["run", str(big), "--run-dir", str(tmp_path / "big"), "--no-progress"]), 5,
                  "does not fit in memory", "hidden: [10000000000]")
    assert not (tmp_path / "big").exists()
    big.write_text(yaml.safe_dump(tiny_config(model={"name": "mlp", "hidden": [10 ** 30]})))  # past int64
    one_paragraph(runner.invoke(app, ["run", str(big), "--run-dir", str(tmp_path / "big"), "--no-progress"]), 5,
                  "beyond what torch can represent")
    big.write_text(yaml.safe_dump(tiny_config(training={"epochs": 1, "scheduler": {"name": "onecycle",
                                                                                  "max_lr": 1e300}})))
    one_paragraph(runner.invoke(app, ["run", str(big), "--run-dir", str(tmp_path / "big"), "--no-progress"]), 5,
                  "overflowed during training", "max_lr")


def test_broken_inputs_to_a_trained_run_are_one_paragraph(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(training={"epochs": 2})))
    assert runner.invoke(app, ["run", str(cfg), "--run-dir", str(tmp_path / "r"), "--no-progress"]).exit_code == 0
    rows = iris().drop(columns="target")
    rows.loc[5, "petal width (cm)"] = -np.inf
    one_paragraph(runner.invoke(app, ["predict", str(tmp_path / "r"), csv(tmp_path, rows, "rows.csv"), "-o",
                                      str(tmp_path / "p.csv")]), 3, "petal width (cm)", "infinite")
    (tmp_path / "out").mkdir()
    result = runner.invoke(app, ["predict", str(tmp_path / "r"), csv(tmp_path, iris().drop(columns="target"),
                                                                      "ok.csv"), "-o", str(tmp_path / "out")])
    one_paragraph(result, 1, "is a directory")
    assert not [p.name for p in tmp_path.rglob("*tmp*")], "a temporary file was left behind"
    one_paragraph(runner.invoke(app, ["evaluate", str(cfg)]), 4, "is a file, not a run directory")
    one_paragraph(runner.invoke(app, ["run", "--resume", str(tmp_path / "gone")]), 4, "it does not exist")
    one_paragraph(runner.invoke(app, ["run", "--resume", str(cfg)]), 4, "is not a run directory: it is a file")
    one_paragraph(runner.invoke(app, ["predict", str(tmp_path / "r"), str(tmp_path / "out")]), 3,
                  "is a directory, not a file")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(yaml.safe_dump(tiny_config()).encode().replace(b"tiny", b"t\xefny"))
    one_paragraph(runner.invoke(app, ["validate", str(latin)]), 2, "not UTF-8")
    one_paragraph(runner.invoke(app, ["run", str(latin), "--no-progress"]), 2, "not UTF-8")
    (tmp_path / "r/checkpoints/last.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    (tmp_path / "r/model/weights.pt").unlink()  # so that resume has work to do and must read the checkpoint
    one_paragraph(runner.invoke(app, ["run", "--resume", str(tmp_path / "r"), "--no-progress"]), 4, "Cannot resume",
                  "last.pt")
