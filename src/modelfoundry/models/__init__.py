"""Models: the model table (name -> config class, builder), one module per model, shared layers, inference."""

from modelfoundry.models.table import MODELS, ModelEntry, build_model, register_model, unregister_model

__all__ = ["MODELS", "ModelEntry", "build_model", "register_model", "unregister_model"]
