"""The arguments and options several commands share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

ConfigArg = Annotated[Path, typer.Argument(help="Experiment config (YAML).", show_default=False)]
RunDirArg = Annotated[Path, typer.Argument(help="A run directory made by `foundry run`, or a registered model: "
                                           "NAME, NAME/VERSION or NAME@ALIAS.", show_default=False)]
NoProgress = Annotated[bool, typer.Option("--no-progress", help="Hide the progress bar.")]
UriOption = Annotated[Optional[str], typer.Option("--uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                                                  "else the nearest foundry.db here or in a parent directory).")]

ReasonOption = Annotated[str, typer.Option("--reason", help="Why; kept in the alias history.")]
