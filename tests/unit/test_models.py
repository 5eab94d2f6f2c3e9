import pytest
import torch
from torch import nn

from modelfoundry.artifacts.inputs import InputSpec
from modelfoundry.config import load_config
from modelfoundry.errors import ConfigError
from modelfoundry.models import build_model
from tests.conftest import tiny_config


def spec(shape):
    return InputSpec.for_shape(shape)  # "image" for (C, H, W), else "numeric"


def model_cfg(**model):
    return load_config(tiny_config(model=model)).model


def test_mlp_layers_follow_the_config():
    model = build_model(model_cfg(name="mlp", hidden=[16, 8], batch_norm=True, dropout=0.3, activation="gelu"),
                        spec((5,)), 3)
    kinds = [type(m) for m in model]
    assert kinds.count(nn.Linear) == 3 and kinds.count(nn.BatchNorm1d) == 2 and kinds.count(nn.Dropout) == 2
    assert nn.GELU in kinds
    assert model(torch.randn(4, 5)).shape == (4, 3)
    flat = build_model(model_cfg(name="mlp", hidden=[4]), spec((1, 8, 8)), 10)  # images are flattened
    assert flat(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("init", ["xavier", "kaiming"])
def test_init_schemes_zero_biases_and_change_weights(init):
    torch.manual_seed(0)
    default = build_model(model_cfg(name="mlp", hidden=[64], init="default"), spec((64,)), 2)
    torch.manual_seed(0)
    other = build_model(model_cfg(name="mlp", hidden=[64], init=init), spec((64,)), 2)
    assert torch.all(other[0].bias == 0)
    assert not torch.allclose(default[0].weight, other[0].weight)


def test_cnn_with_residual_blocks_and_batch_norm():
    model = build_model(model_cfg(name="cnn", channels=[4, 8], residual=True, hidden=[16], dropout=0.1),
                        spec((1, 8, 8)), 10)
    names = {type(m).__name__ for m in model.modules()}
    assert {"ResidualBlock", "BatchNorm2d", "MaxPool2d", "Dropout"} <= names
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    block = next(m for m in model.modules() if type(m).__name__ == "ResidualBlock")
    for p in block.parameters():  # with zeroed convs the block is the identity (after the activation)
        nn.init.zeros_(p)
    x = torch.rand(2, 4, 8, 8)
    assert torch.allclose(block(x), torch.relu(x))


def test_cnn_needs_images():
    with pytest.raises(ConfigError, match="needs image inputs"):
        build_model(model_cfg(name="cnn"), spec((30,)), 2)


def test_linear_skip_contains_the_linear_model():
    model = build_model(model_cfg(name="mlp", hidden=[8], linear_skip=True), spec((5,)), 1)
    x = torch.randn(6, 5)
    for p in model.deep.parameters():  # silence the deep branch: what is left is the linear model
        nn.init.zeros_(p)
    torch.testing.assert_close(model(x), model.linear(x))


def test_an_unknown_model_name_lists_the_table():
    class Named:
        name = "mpl"

    from modelfoundry.models import MODELS

    valid = ", ".join(sorted(MODELS))
    with pytest.raises(ConfigError, match=rf"Unknown model 'mpl'\. Did you mean 'mlp'\? Valid names: {valid}\."):
        build_model(Named(), spec((5,)), 2)


def test_a_builder_refuses_inputs_it_cannot_take_and_says_what_it_needs():
    two = InputSpec([*InputSpec.single("numeric", (4,)), *InputSpec.single("tokens", (6,), "int64")])
    with pytest.raises(ConfigError, match=r"model mlp takes one float input.*numeric: float32 \[4\], tokens: int64"):
        build_model(model_cfg(name="mlp"), two, 2)
    with pytest.raises(ConfigError, match="needs image inputs"):
        build_model(model_cfg(name="cnn"), InputSpec.single("numeric", (1, 8, 8)), 2)  # a 3-d shape, not an image
    with pytest.raises(TypeError, match="InputSpec"):
        build_model(model_cfg(name="mlp"), (5,), 2)


def test_the_activation_choices_of_the_configs_are_the_ones_the_layers_build():
    import typing

    from modelfoundry.models.choices import Activation
    from modelfoundry.models.layers import ACTIVATIONS

    assert set(typing.get_args(Activation)) == set(ACTIVATIONS)
