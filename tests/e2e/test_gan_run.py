"""`data.task: generative` end to end: `foundry run` trains a tiny conditional DCGAN on sklearn:digits and scores
it (C2ST, TSTR beside TRTR, Gaussian noise); `foundry sample` writes a PNG grid and a CSV of a chosen class; a
classifier cannot be sampled; `data.balance.method: gan` grows the minority class in `foundry run`."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from modelfoundry.cli import app
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow  # two GAN trainings and a classifier (~20 s on 2 cores)
runner = CliRunner()


def foundry(*args):
    return runner.invoke(app, [str(a) for a in args])


def _write(path, config):
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gan")
    config = tiny_config(name="digits-gan", data={"source": "sklearn:digits", "features": {
        "pixel_*": {"type": "image", "shape": [1, 8, 8], "scale": "minmax"}}},
        training={"epochs": 2, "batch_size": 64}, evaluation={"plots": True})
    config["model"] = {"name": "gan", "generator": [32, 16], "discriminator": [16, 32], "latent_dim": 16}
    result = foundry("run", _write(root / "gan.yaml", config), "--run-dir", root / "run")
    assert result.exit_code == 0, result.output
    return root, root / "run", result.output


def test_run_trains_a_conditional_gan_and_scores_it_beside_gaussian_noise(gan_run):
    _, run_dir, output = gan_run
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    for name in ("c2st_accuracy", "c2st_p_value", "fd", "tstr_accuracy", "trtr_accuracy"):
        assert name in metrics and f"baseline_noise_{name}" in metrics or name == "trtr_accuracy", name
    assert 0.5 <= metrics["c2st_accuracy"] <= 1.0 and 0.0 <= metrics["c2st_p_value"] <= 1.0
    assert metrics["trtr_accuracy"] > 0.9  # a logistic regression on the real digits
    assert metrics["baseline_noise_tstr_accuracy"] < 0.3  # noise with random classes: near chance (0.1)
    assert "test c2st_accuracy" in output and "test tstr_accuracy" in output
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2] and all("val_fd" in e and "d_loss" in e for e in epochs)
    assert (run_dir / "eval" / "samples.png").stat().st_size > 1000
    assert {"last.pt", "best.pt"} <= {p.name for p in (run_dir / "checkpoints").iterdir()}
    record = json.loads((run_dir / "model" / "model.json").read_text())
    assert record["task"] == "generative" and record["n_outputs"] == 10 and record["target"] == "target"


def test_sample_writes_a_png_grid_and_a_csv_of_one_class_in_pixel_units(gan_run):
    root, run_dir, _ = gan_run
    result = foundry("sample", run_dir, "-n", 12, "-o", root / "grid.png", "--seed", 3)
    assert result.exit_code == 0, result.output
    assert (root / "grid.png").read_bytes()[:4] == b"\x89PNG"
    result = foundry("sample", run_dir, "-n", 5, "-o", root / "fives.csv", "--class", "5")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(root / "fives.csv")
    assert len(table) == 5 and (table["target"] == 5).all()
    pixels = table.drop(columns="target")
    assert pixels.shape[1] == 64 and pixels.min().min() >= 0 and pixels.max().max() <= 16  # digits' 0..16 scale
    again = foundry("sample", run_dir, "-n", 5, "-o", root / "again.csv", "--class", "5")
    assert again.exit_code == 0 and pd.read_csv(root / "again.csv").equals(table)  # the same seed, the same rows
    unknown = foundry("sample", run_dir, "--class", "12", "-o", root / "x.csv")
    assert unknown.exit_code == 2 and "no such class" in unknown.output and "Traceback" not in unknown.output


def test_sample_refuses_a_classifier(tmp_path):
    config = _write(tmp_path / "iris.yaml", tiny_config(name="iris"))
    assert foundry("run", config, "--run-dir", tmp_path / "run").exit_code == 0
    result = foundry("sample", tmp_path / "run", "-o", tmp_path / "x.csv")
    assert result.exit_code == 2 and "classification model, not a generative one" in result.output
    assert "foundry predict" in result.output


def test_balance_method_gan_grows_the_minority_class_in_a_run(tmp_path):
    config = tiny_config(name="bc-gan", data={"source": "sklearn:breast_cancer", "balance": {"method": "gan"}})
    result = foundry("run", _write(tmp_path / "bc.yaml", config), "--run-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    balance = json.loads((tmp_path / "run" / "data.json").read_text())["balance"]
    assert balance["method"] == "gan" and balance["after"]["0"] == balance["after"]["1"] == balance["before"]["1"]
    assert balance["synthetic"] == balance["before"]["1"] - balance["before"]["0"] > 0
    assert balance["gan"]["steps"] > 0


def test_predict_on_a_gan_says_to_sample_instead(gan_run):
    root, run_dir, _ = gan_run
    from modelfoundry.data.sources import load_source

    load_source("sklearn:digits").head(3).to_csv(root / "rows.csv", index=False)
    result = foundry("predict", run_dir, root / "rows.csv", "-o", root / "p.csv")
    assert result.exit_code == 2 and "it does not predict" in result.output and "foundry sample" in result.output
    assert "Traceback" not in result.output


def test_evaluate_scores_the_rebuilt_test_split_again_and_cv_is_refused(gan_run):
    root, run_dir, _ = gan_run
    result = foundry("evaluate", run_dir)
    assert result.exit_code == 0, result.output
    again = json.loads((run_dir / "eval-test-split" / "metrics.json").read_text())
    first = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert again == pytest.approx(first)  # the same split, the same generator, the same seeds
    refused = foundry("cv", root / "gan.yaml")
    assert refused.exit_code == 2 and "not cross-validated" in refused.output and "Traceback" not in refused.output
