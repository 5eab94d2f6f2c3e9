"""The app factory uvicorn imports in each worker process (`foundry serve --workers N`).

Settings travel in environment variables because uvicorn starts workers from an import string.
"""

from __future__ import annotations

import json
import os

from modelfoundry.serve.app import ServeSettings, create_app
from modelfoundry.serve.store import store_for

ENV_MODEL, ENV_URI, ENV_BACKEND = "FOUNDRY_SERVE_MODEL", "FOUNDRY_SERVE_URI", "FOUNDRY_SERVE_BACKEND"
ENV_SETTINGS = "FOUNDRY_SERVE_SETTINGS"  # ServeSettings fields as JSON


def build():  # noqa: ANN201 - FastAPI app
    store = store_for(os.environ[ENV_MODEL], os.environ.get(ENV_URI) or None, os.environ.get(ENV_BACKEND, "onnx"))
    return create_app(ServeSettings(**json.loads(os.environ.get(ENV_SETTINGS) or "{}")), store)
