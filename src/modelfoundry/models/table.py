"""The model table: short name -> (config class, builder).

Adding a model is one module in models/ that declares its `<Name>Config` (a config `Section` whose `name` is
`Literal["<name>"]`) and its builder `build(config, inputs, n_outputs) -> nn.Module`, plus one entry here.
`inputs` is the data's `InputSpec` (artifacts/inputs.py): the model's `forward` takes those named inputs as
arguments in that order; a builder refuses, with a ConfigError saying what to use, inputs it cannot take.
The `model:` section of the config is the union of the config classes in this table, so neither config nor
the training loop changes for a new model. Builders import torch inside, so reading the table stays light.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelfoundry.artifacts.inputs import InputSpec
from modelfoundry.config.base import Section
from modelfoundry.errors import ConfigError, unknown_name
from modelfoundry.models.autoencoder import AutoencoderConfig, build_autoencoder
from modelfoundry.models.cnn import CNNConfig, build_cnn
from modelfoundry.models.gan import GANConfig, build_gan
from modelfoundry.models.llm import LLMConfig, build_llm
from modelfoundry.models.mlp import MLPConfig, build_mlp
from modelfoundry.models.pretrained import PretrainedConfig, build_pretrained
from modelfoundry.models.rnn import GRUConfig, LSTMConfig, build_rnn
from modelfoundry.models.transformer import TransformerConfig, build_transformer

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    config: type[Section]  # the `model:` section of this model; its `name` field is Literal["<name>"]
    build: Callable[[Any, InputSpec, int], nn.Module]  # (config, the named inputs, n_outputs)


MODELS: dict[str, ModelEntry] = {
    "mlp": ModelEntry(MLPConfig, build_mlp),
    "cnn": ModelEntry(CNNConfig, build_cnn),
    "lstm": ModelEntry(LSTMConfig, build_rnn),
    "gru": ModelEntry(GRUConfig, build_rnn),
    "transformer": ModelEntry(TransformerConfig, build_transformer),
    "pretrained": ModelEntry(PretrainedConfig, build_pretrained),
    "llm": ModelEntry(LLMConfig, build_llm),
    "autoencoder": ModelEntry(AutoencoderConfig, build_autoencoder),
    "gan": ModelEntry(GANConfig, build_gan),
}


def build_model(config: Any, inputs: InputSpec, n_outputs: int) -> nn.Module:
    """Build the model named by `config.name` for the named inputs `inputs`."""
    if config.name not in MODELS:
        raise ConfigError(unknown_name("model", config.name, MODELS))
    if not isinstance(inputs, InputSpec):
        raise TypeError(f"build_model takes the data's InputSpec, got {type(inputs).__name__}.")
    pool = inputs.window_pool()
    if pool is None:
        return MODELS[config.name].build(config, inputs, n_outputs)
    from modelfoundry.models.windows import WindowPooled  # long texts: the model reads each window

    return WindowPooled(MODELS[config.name].build(config, inputs.per_window(), n_outputs), inputs.names, pool)


def register_model(name: str, config: type[Section], build: Callable[..., nn.Module]) -> None:
    """Add a model at runtime (a plugin, or a test) and let the config schema accept `model: {name: <name>}`.

    A model shipped with the package is an entry in `MODELS` instead; this does the same after import.
    """
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ConfigError(f"The 'name' parameter of register_model must be lower_snake_case. Got {name!r} instead.")
    if name in MODELS:
        raise ConfigError(f"A model named '{name}' is already registered.", "Choose another name.")
    if not (isinstance(config, type) and issubclass(config, Section)):
        raise ConfigError(f"The config class of model '{name}' must subclass modelfoundry.config.base.Section. "
                          f"Got {config!r} instead.")
    field = config.model_fields.get("name")
    if field is None or typing.get_args(field.annotation) != (name,):
        raise ConfigError(f"{config.__name__} must declare `name: Literal[{name!r}]` so configs can select it.")
    MODELS[name] = ModelEntry(config, build)
    _refresh_config()


def unregister_model(name: str) -> None:
    """Remove a model added with `register_model`."""
    if name not in MODELS:
        raise ConfigError(unknown_name("model", name, MODELS))
    del MODELS[name]
    _refresh_config()


def _refresh_config() -> None:
    from modelfoundry.config.schema import rebuild_model_fields

    rebuild_model_fields()
