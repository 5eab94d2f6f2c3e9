"""A plain app factory for uvicorn's worker processes: the model and its settings, no extensions.

Settings travel in environment variables because uvicorn starts workers from an import string. `foundry serve
--workers N` starts `modelfoundry.api.serving:build_worker_app` instead, which reads the same variables and adds
each worker's monitoring extensions (the serve stage does not import the monitor stage).
"""

from __future__ import annotations

import json
import os

from modelfoundry.config import ServeConfig
from modelfoundry.serve.app import create_app
from modelfoundry.serve.store import store_for

ENV_MODEL, ENV_URI = "FOUNDRY_SERVE_MODEL", "FOUNDRY_SERVE_URI"
ENV_SETTINGS = "FOUNDRY_SERVE_SETTINGS"  # the resolved serve: section (ServeConfig) as JSON


def build():  # noqa: ANN201 - FastAPI app
    settings = ServeConfig.model_validate(json.loads(os.environ.get(ENV_SETTINGS) or "{}"))
    return create_app(settings, store_for(os.environ[ENV_MODEL], os.environ.get(ENV_URI) or None, settings.backend,
                                          settings.llm_dtype))
