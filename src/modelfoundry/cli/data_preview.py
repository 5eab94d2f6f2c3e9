"""`foundry data preview CONFIG -o grid.png`: a few training rows with the configured augmentation applied."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelfoundry.cli.console import friendly_errors, open_console
from modelfoundry.cli.options import ConfigArg


@friendly_errors
def preview(config: ConfigArg,
            output: Annotated[Path, typer.Option("-o", "--output", help="Where to save it: a .png grid for images, "
                                                 "a .md or .txt table for texts and numeric rows.",
                                                 show_default=False)],
            rows: Annotated[int, typer.Option("--rows", min=1, max=256, help="Training rows to show.")] = 16,
            versions: Annotated[int, typer.Option("--versions", min=1, max=16,
                                                  help="Augmented versions of each row.")] = 6,
            seed: Annotated[int, typer.Option("--seed", help="Picks the rows and seeds the changes.")] = 0) -> None:
    """Save a few training rows next to augmented versions of them (data.augment), to see what training will see."""
    from modelfoundry.api.data_preview import preview_augmentation

    result = preview_augmentation(config, output, rows=rows, seed=seed, versions=versions)
    console = open_console()
    mixed = sum(1 for m in result.mixed if m)
    console.print(f"Saved {result.rows} training rows x {result.versions} augmented versions ({result.kind}) to "
                  f"{result.path}", markup=False, soft_wrap=True)
    console.print(f"Transforms: {', '.join(result.transforms)}" +
                  (f"; {mixed} of {result.versions} versions mixed ({', '.join(m for m in result.mixed if m)})"
                   if mixed else ""), markup=False, soft_wrap=True)
    if result.table is not None:  # the first row's table; the file holds them all
        console.print(result.table.split("\n\n### ")[0].split("\n\nrow ")[0].rstrip(), markup=False, soft_wrap=True)
