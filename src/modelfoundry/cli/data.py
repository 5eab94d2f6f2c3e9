"""`foundry data`: look at data before training - a quality report (`check`), augmented samples (`preview`)."""

from __future__ import annotations

import typer

data_app = typer.Typer(no_args_is_help=True, help="Look at data before training: quality check, augmentation preview.")

from modelfoundry.cli.data_check import check  # noqa: E402 - the commands register after the group exists
from modelfoundry.cli.data_preview import preview  # noqa: E402 - the commands register after the group exists

data_app.command("check")(check)
data_app.command("preview")(preview)
