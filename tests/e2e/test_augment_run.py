"""Augmentation as a user meets it: `foundry data preview` (image grid, text table), `foundry run` with
data.augment, and an ill-fitting augmentation as a clean config error."""

import json

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from modelfoundry.cli import app
from tests.conftest import tiny_config

runner = CliRunner()
DIGITS = {"source": "sklearn:digits", "target": "target", "cache": False,
          "features": {"pixel_*": {"type": "image", "shape": [1, 8, 8], "scale": "minmax"}}}


def write_config(tmp_path, name="cfg.yaml", **sections):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tiny_config(**sections)))
    return path


def foundry(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_preview_saves_a_png_grid_of_augmented_images(tmp_path):
    cfg = write_config(tmp_path, data={**DIGITS, "augment": {"image": {"affine": {"p": 1.0, "rotate_deg": 20},
                                                                       "cutout": {"p": 0.5}},
                                                             "mixup": {"p": 0.5}}})
    result = foundry("data", "preview", cfg, "-o", tmp_path / "grid.png", "--rows", 4, "--versions", 3)
    assert result.exit_code == 0, result.output
    png = (tmp_path / "grid.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    assert "4 training rows x 3 augmented versions (image)" in result.output
    assert "image.affine, image.cutout, mixup" in result.output


def test_preview_of_texts_is_a_table_of_decoded_words(tmp_path):
    words = ["good", "bad", "fine", "great", "awful", "movie", "plot", "acting"]
    frame = pd.DataFrame({"review": [" ".join(words[(i + k) % 8] for k in range(6)) for i in range(80)],
                          "label": [i % 2 for i in range(80)]})
    frame.to_csv(tmp_path / "reviews.csv", index=False)
    cfg = write_config(tmp_path, data={"source": str(tmp_path / "reviews.csv"), "target": "label", "cache": False,
                                       "features": {"review": {"type": "text"}}, "text": {"min_freq": 1},
                                       "augment": {"text": {"delete": 0.3, "mask": 0.2}}},
                       model={"name": "lstm", "embedding_dim": 8, "hidden": 8})
    result = foundry("data", "preview", cfg, "-o", tmp_path / "texts.md", "--rows", 3)
    assert result.exit_code == 0, result.output
    table = (tmp_path / "texts.md").read_text()
    assert table.count("### row") == 3 and "| original |" in table and "| aug 6 |" in table
    original = table.split("| original | ")[1].split(" |")[0]
    assert set(original.split()) <= set(words)  # decoded back to the words
    assert "[UNK]" in table or any(len(line.split()) < len(original.split()) + 4 for line in table.splitlines()
                                   if line.startswith("| aug"))
    wrong = foundry("data", "preview", cfg, "-o", tmp_path / "texts.png")
    assert wrong.exit_code != 0 and "texts.md" in wrong.output


def test_preview_without_augmentation_says_what_to_add(tmp_path):
    cfg = write_config(tmp_path, data=DIGITS)
    result = foundry("data", "preview", cfg, "-o", tmp_path / "grid.png")
    assert result.exit_code != 0 and "sets no augmentation" in result.output and "Traceback" not in result.output


def test_run_with_augmentation_trains_and_misfits_are_config_errors(tmp_path):
    cfg = write_config(tmp_path, data={**DIGITS, "augment": {"image": {"affine": {"p": 0.8, "rotate_deg": 10}},
                                                             "cutmix": {"p": 0.5}}},
                       model={"name": "cnn", "channels": [4, 8]}, training={"epochs": 2, "batch_size": 64})
    plain = write_config(tmp_path, "plain.yaml", data=DIGITS, model={"name": "cnn", "channels": [4, 8]},
                         training={"epochs": 2, "batch_size": 64})
    losses = {}
    for name, path in (("augmented", cfg), ("plain", plain)):
        result = foundry("run", path, "--run-dir", tmp_path / name, "--no-progress")
        assert result.exit_code == 0, result.output
        assert "accuracy" in json.loads((tmp_path / name / "eval/metrics.json").read_text())
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        losses[name] = [json.loads(line) for line in lines]
    # the same seed, split and batch order: the first epoch's training loss differs only by the changed batches
    assert losses["augmented"][0]["train_loss"] != pytest.approx(losses["plain"][0]["train_loss"], abs=1e-4)
    assert len(losses["augmented"]) == len(losses["plain"]) == 2
    bad = write_config(tmp_path, "bad.yaml", data={"source": "sklearn:iris", "target": "target",
                                                   "augment": {"image": {"affine": {"p": 0.5}}, "cutmix": {}}})
    result = foundry("run", bad, "--run-dir", tmp_path / "bad", "--no-progress")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "data.augment.image: the data has no image input" in result.output and "data.augment.cutmix" in result.output
    assert not (tmp_path / "bad").exists()
