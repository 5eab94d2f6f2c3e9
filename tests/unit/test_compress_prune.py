"""Pruning (structured and unstructured) and distillation on tiny models and bundled data."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from modelfoundry.artifacts.inputs import InputSpec
from modelfoundry.compress import distill, prune
from modelfoundry.config import CNNConfig, MLPConfig, load_config
from modelfoundry.data.prepare import prepare_data
from modelfoundry.models import build_model
from modelfoundry.models.inference import predict_outputs
from modelfoundry.train.loop import fit
from modelfoundry.train.runtime import seed_everything
from tests.conftest import tiny_config

DIGITS_IMAGES = {"source": "sklearn:digits", "features": {"pixel_*": {"type": "image", "shape": [1, 8, 8]}}}


def trained(sections, seed=0):
    cfg = load_config(tiny_config(**sections))
    data = prepare_data(cfg.data, cfg.seed)
    seed_everything(seed, True)
    model = build_model(cfg.model, data.input_spec, data.n_outputs)
    fit(model, data.X, data.y, cfg.training, task=data.task, class_weights=data.class_weights, seed=seed,
        progress=False)
    return cfg, data, model


def val_accuracy(model, data):
    return float((predict_outputs(model, data.X["val"], "classification").argmax(1) == data.y["val"]).mean())


@pytest.fixture(scope="module")
def digits_cnn():
    """A residual CNN on the digits images: val accuracy 0.96 (10 epochs, about a second)."""
    return trained({"data": DIGITS_IMAGES, "model": {"name": "cnn", "channels": [8, 16], "residual": True},
                    "training": {"epochs": 10, "batch_size": 64, "optimizer": {"lr": 0.01}}})


@pytest.fixture(scope="module")
def digits_mlp():
    """An MLP teacher on the digits pixels: val accuracy 0.967."""
    return trained({"data": {"source": "sklearn:digits"}, "model": {"name": "mlp", "hidden": [128]},
                    "training": {"epochs": 40, "batch_size": 64, "optimizer": {"lr": 0.003}}})


def randomised(cfg, input_shape, n_outputs=3):
    """A model whose BN statistics and biases are random too, so that any misplaced slice shows."""
    torch.manual_seed(0)
    model = build_model(cfg, InputSpec.for_shape(input_shape), n_outputs)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.uniform_(0.2, 2.0)
                module.bias.normal_()
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
            elif isinstance(module, (nn.Linear, nn.Conv2d)) and module.bias is not None:
                module.bias.normal_()
    return model.eval()


ARCHITECTURES = {
    "mlp": (MLPConfig(hidden=[16, 8]), (4,)),
    "mlp_bn_dropout_image": (MLPConfig(hidden=[16, 8], batch_norm=True, dropout=0.1), (1, 8, 8)),
    "mlp_linear_skip": (MLPConfig(hidden=[16, 8], batch_norm=True, linear_skip=True), (4,)),
    "cnn_residual_dense": (CNNConfig(name="cnn", channels=[8, 16], residual=True, hidden=[12]), (1, 8, 8)),
    "cnn_plain_no_bn": (CNNConfig(name="cnn", channels=[8, 16, 4], batch_norm=False), (3, 8, 8)),
}


# ------------------------------------------------------------------------------------------ structured
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_keep_one_rebuilds_the_model_exactly(name):
    cfg, shape = ARCHITECTURES[name]
    model = randomised(cfg, shape)
    new, new_cfg = prune.shrink_structured(model, cfg, 1.0)
    x = torch.randn(5, *shape)
    assert new_cfg == cfg and new is not model
    assert torch.equal(new(x), model(x))
    # built for the saved record's input spec instead of inputs derived from the layers: the same model
    from_spec, _ = prune.shrink_structured(model, cfg, 1.0, InputSpec.for_shape(shape))
    assert torch.equal(from_spec(x), model(x))


def test_the_pruned_model_is_built_for_the_input_spec_it_is_given():
    cfg, shape = ARCHITECTURES["mlp"]
    from modelfoundry.errors import ConfigError

    with pytest.raises(ConfigError, match="tokens"):  # an mlp takes one float input: the spec given is used
        prune.shrink_structured(randomised(cfg, shape), cfg, 0.5, InputSpec.single("tokens", shape, "int64"))


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_keep_half_halves_the_widths_and_is_an_ordinary_model(name):
    cfg, shape = ARCHITECTURES[name]
    model = randomised(cfg, shape)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new, new_cfg = prune.shrink_structured(model, cfg, 0.5)
    assert new_cfg.hidden == [w // 2 for w in cfg.hidden]
    if isinstance(cfg, CNNConfig):
        assert new_cfg.channels == [c // 2 for c in cfg.channels]
        convs = [m for m in new.modules() if isinstance(m, nn.Conv2d)]
        assert convs[0].weight.shape[:2] == (cfg.channels[0] // 2, shape[0])
    assert prune.parameter_count(new) < 0.5 * prune.parameter_count(model)
    fresh = build_model(new_cfg, InputSpec.for_shape(shape), 3)
    fresh.load_state_dict(new.state_dict(), strict=True)
    x = torch.randn(4, *shape)
    assert torch.equal(fresh.eval()(x), new(x)) and new(x).shape == (4, 3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched


def silence_dropped(model, pruned):
    """The original model with the units that pruning dropped switched off (BN gamma and beta zero, so the
    unit outputs relu(0) = 0); units are matched by their (random, distinct) BN gammas."""
    silenced = copy.deepcopy(model)
    norms = [m for m in silenced.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    kept_norms = [m for m in pruned.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for norm, kept in zip(norms, kept_norms):
            dropped = ~torch.isin(norm.weight, kept.weight)
            assert int(dropped.sum()) == len(norm.weight) - len(kept.weight)
            norm.weight[dropped] = 0
            norm.bias[dropped] = 0
    return silenced


@pytest.mark.parametrize("cfg, shape", [(MLPConfig(hidden=[16, 8], batch_norm=True), (4,)),
                                        (CNNConfig(name="cnn", channels=[8, 16], residual=True), (1, 8, 8))])
def test_the_pruned_model_is_the_original_with_the_dropped_units_silenced(cfg, shape):
    # so every kept slice lands where it belongs, including the residual shortcut's shared channels
    model = randomised(cfg, shape)
    new, _ = prune.shrink_structured(model, cfg, 0.5)
    x = torch.randn(6, *shape)
    assert torch.allclose(new(x), silence_dropped(model, new)(x), atol=1e-5)
    assert not torch.allclose(new(x), model(x), atol=1e-3)


def test_channel_pruning_then_finetune_recovers_on_digits(digits_cnn):
    cfg, data, teacher = digits_cnn
    assert val_accuracy(teacher, data) > 0.9
    new, new_cfg = prune.shrink_structured(teacher, cfg.model, 0.5)
    assert new_cfg.channels == [4, 8]
    # measured: 0.91 with the run's lr (lr_scale 1), 0.63 with a tenth of it: halving a tiny CNN's
    # channels takes real retraining, not a nudge
    result = prune.finetune(new, data.X, data.y, cfg.training, task=data.task, epochs=5, lr_scale=1.0)
    assert result.model is new and val_accuracy(new, data) > 0.8
    assert prune.parameter_count(new) < 0.3 * prune.parameter_count(teacher)


def test_neuron_pruning_then_finetune_on_iris():
    cfg, data, model = trained({"model": {"name": "mlp", "hidden": [32, 16], "batch_norm": True},
                                "training": {"epochs": 40, "optimizer": {"lr": 0.01}}})
    assert val_accuracy(model, data) > 0.9
    new, new_cfg = prune.shrink_structured(model, cfg.model, 0.5)
    assert new_cfg.hidden == [16, 8]
    prune.finetune(new, data.X, data.y, cfg.training, task=data.task, epochs=10)
    assert val_accuracy(new, data) > 0.85  # measured 0.957 (22 of 23)


def test_structured_pruning_refuses_a_bad_fraction():
    from modelfoundry.errors import ConfigError

    cfg, shape = ARCHITECTURES["mlp"]
    with pytest.raises(ConfigError, match="keep"):
        prune.shrink_structured(randomised(cfg, shape), cfg, 0.0)


# ---------------------------------------------------------------------------------------- unstructured
@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_unstructured_pruning_reaches_the_requested_sparsity(digits_cnn, sparsity):
    _, _, teacher = digits_cnn
    model = prune.prune_unstructured(copy.deepcopy(teacher), sparsity)
    assert prune.sparsity_of(model) == pytest.approx(sparsity, abs=0.01)
    assert prune.sparsity_of(teacher) < 0.01


def test_masks_hold_while_finetuning_and_make_permanent_leaves_plain_weights(digits_cnn):
    cfg, data, teacher = digits_cnn
    model = prune.prune_unstructured(copy.deepcopy(teacher), 0.8)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    masks = [m.weight_mask.clone() for m in convs]
    before = [m.weight_orig.detach().clone() for m in convs]
    result = prune.finetune(model, data.X, data.y, cfg.training, task=data.task, epochs=3, lr_scale=1.0)
    assert val_accuracy(model, data) > 0.9  # measured 0.96
    assert any(not torch.equal(m.weight_orig, b) for m, b in zip(convs, before))  # it did train
    prune.make_permanent(result.model)
    for conv, mask in zip(convs, masks):
        assert torch.all(conv.weight[mask == 0] == 0)
    state = model.state_dict()
    assert not any(k.endswith(("_orig", "_mask")) for k in state)
    fresh = build_model(cfg.model, data.input_spec, data.n_outputs)
    fresh.load_state_dict(state, strict=True)
    assert prune.sparsity_of(fresh) == pytest.approx(0.8, abs=0.01)
    x = torch.from_numpy(data.X["val"]["image"][:16])
    assert torch.equal(fresh.eval()(x), model.eval()(x))


def test_finetune_settings():
    cfg = load_config(tiny_config(training={"epochs": 50, "optimizer": {"lr": 0.02},
                                            "scheduler": {"name": "onecycle", "warmup_epochs": 2},
                                            "early_stopping": {"monitor": "val_f1_macro", "patience": 20},
                                            "restore_best": False})).training
    tuned = prune.finetune_config(cfg, 6, 0.1)
    assert tuned.epochs == 6 and tuned.optimizer.lr == pytest.approx(0.002)
    assert tuned.optimizer.name == cfg.optimizer.name
    assert tuned.scheduler.name == "cosine" and tuned.scheduler.warmup_epochs == 0
    assert tuned.early_stopping.monitor == "val_loss" and tuned.early_stopping.patience == 3 and tuned.restore_best
    plain = load_config(tiny_config()).training
    assert prune.finetune_config(plain, 6, 0.1).scheduler.name == "none"


def test_finetune_with_no_epochs_leaves_the_model_alone(digits_cnn):
    cfg, data, teacher = digits_cnn
    model = copy.deepcopy(teacher)
    result = prune.finetune(model, data.X, data.y, cfg.training, task=data.task, epochs=0)
    assert result.model is model and result.history == []
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), teacher.state_dict().values()))


# -------------------------------------------------------------------------------------------- distill
def test_student_config_narrows_every_width_and_keeps_depth():
    mlp = distill.student_config(MLPConfig(hidden=[64, 32, 1], batch_norm=True), 0.5)
    assert mlp.hidden == [32, 16, 1] and mlp.batch_norm
    cnn = distill.student_config(CNNConfig(name="cnn", channels=[32, 64], residual=True, hidden=[10]), 0.25)
    assert cnn.channels == [8, 16] and cnn.hidden == [2] and cnn.residual


def test_a_distilled_student_of_half_the_width_stays_within_two_points_of_its_teacher(digits_mlp):
    cfg, data, teacher = digits_mlp
    teacher_accuracy = val_accuracy(teacher, data)
    student_cfg = distill.student_config(cfg.model, 0.5)
    seed_everything(0, True)
    student = build_model(student_cfg, data.input_spec, data.n_outputs)
    result = distill.distill(teacher, student, data.X, data.y, cfg.training, task=data.task, epochs=20)
    # measured on 5 seeds: teacher 0.967, students 0.963-0.970; from scratch the same student gets
    # 0.967-0.974, so on digits distillation does not beat it, it matches it
    assert result.model is student and val_accuracy(student, data) >= teacher_accuracy - 0.02
    assert prune.parameter_count(student) < 0.55 * prune.parameter_count(teacher)


class Shifted(nn.Module):
    """A teacher that names every digit d as d + 1 (mod 10)."""

    def __init__(self, teacher):
        super().__init__()
        self.teacher = teacher

    def forward(self, *inputs):
        return self.teacher(*inputs).roll(1, dims=1)


def test_the_student_learns_from_the_teacher_soft_labels(digits_mlp):
    # with alpha = 1 the labels are ignored: a student of a teacher that shifts every class learns the shift
    cfg, data, teacher = digits_mlp
    seed_everything(0, True)
    student = build_model(distill.student_config(cfg.model, 0.5), data.input_spec, data.n_outputs)
    distill.distill(Shifted(teacher), student, data.X, data.y, cfg.training, task=data.task, epochs=10, alpha=1.0)
    predicted = predict_outputs(student, data.X["val"], "classification").argmax(1)
    assert (predicted == data.y["val"]).mean() < 0.1
    assert (predicted == (data.y["val"] + 1) % 10).mean() > 0.6  # measured 0.77 (chance: 0.1)


class Constant(nn.Module):
    def forward(self, x):
        return torch.full((len(x), 1), 0.5)


def test_a_regression_student_follows_its_teacher():
    cfg = load_config(tiny_config(data={"source": "sklearn:diabetes"}, model={"name": "mlp", "hidden": [16]},
                                  training={"epochs": 30, "optimizer": {"lr": 0.01}}))
    data = prepare_data(cfg.data, cfg.seed)
    seed_everything(0, True)
    student = build_model(cfg.model, data.input_spec, 1)
    distill.distill(Constant(), student, data.X, data.y, cfg.training, task="regression", epochs=30, alpha=1.0)
    predicted = predict_outputs(student, data.X["val"], "regression")
    # measured: mean squared distance 0.04 to the teacher's 0.5, about 1 to the (standardised) labels
    assert np.mean((predicted - 0.5) ** 2) < 0.1 * np.mean((predicted - data.y["val"]) ** 2)


# --------------------------------------------------------------------------------- fit(train_loss=...)
def test_fit_trains_on_train_loss_and_validates_with_the_built_loss(make_config):
    cfg = make_config(training={"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.5}})
    data = prepare_data(cfg.data, cfg.seed)
    seed_everything(0, True)
    model = build_model(cfg.model, data.input_spec, data.n_outputs)
    before = [p.detach().clone() for p in model.parameters()]
    rows = []

    def no_loss(outputs, targets, batch_rows):
        assert outputs.shape == (len(targets), data.n_outputs)
        rows.append(batch_rows.cpu())
        return 0 * outputs.sum()

    result = fit(model, data.X, data.y, cfg.training, task=data.task, seed=0, progress=False, train_loss=no_loss)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))  # only train_loss drove training
    n = len(data.y["train"])
    assert sorted(torch.cat(rows).tolist()) == sorted(list(range(n)) * 2)  # positions in X['train'], each epoch
    assert result.history[0]["train_loss"] == 0.0
    assert result.history[0]["val_loss"] == result.history[1]["val_loss"] > 0.5  # the ordinary loss


class NumericAndTokens(nn.Module):
    """(B, 2) float + (B, 3) int64 token ids -> (B, 1): the float sum plus 100 x the ids' sum."""

    def forward(self, numeric, tokens):
        assert numeric.dtype == torch.float32 and tokens.dtype == torch.int64
        return numeric.sum(1, keepdim=True) + 100 * tokens.sum(1, keepdim=True).float()


def test_the_teacher_sees_every_named_input_in_order_across_batches():
    from modelfoundry.models.inference import BATCH

    rng = np.random.default_rng(0)
    n = BATCH + 5  # across two batches
    X = {"numeric": rng.normal(size=(n, 2)), "tokens": rng.integers(0, 10, size=(n, 3))}
    out = distill.teacher_outputs(NumericAndTokens(), X, torch.device("cpu"))
    expected = X["numeric"].sum(1) + 100 * X["tokens"].sum(1)
    assert out.shape == (n, 1) and out.dtype == torch.float32
    np.testing.assert_allclose(out[:, 0].numpy(), expected, rtol=1e-5)
