"""The `model:` section. Each model declares its config class beside its builder in models/; the section is
the union of the classes in the model table (models/table.py), told apart by `name`."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field

from modelfoundry.models.table import MODELS


def model_union() -> Any:
    """The type of a `model:` section: any registered model's config, chosen by its `name` key."""
    return Annotated[Union[tuple(entry.config for entry in MODELS.values())], Field(discriminator="name")]


def model_names() -> list[str]:
    """The registered model names, sorted."""
    return sorted(MODELS)


ModelConfig = model_union()  # rebuilt by config.schema.rebuild_model_fields when a model is registered
