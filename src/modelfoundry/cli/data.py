"""`foundry data`: look at data before training - a quality report (`check`), augmented samples (`preview`)."""

from __future__ import annotations

import typer

data_app = typer.Typer(no_args_is_help=True, help="Look at data before training: quality check, augmentation preview.")
