"""`foundry sample`: rows or images from a trained GAN (`data.task: generative`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelfoundry.cli.console import friendly_errors, open_console
from modelfoundry.cli.options import RunDirArg


@friendly_errors
def sample(run_dir: RunDirArg,
           n: Annotated[int, typer.Option("-n", "--rows", help="How many rows or images to generate.")] = 64,
           output: Annotated[Path, typer.Option("-o", "--output", help="Where to write them: .png (a grid of "
                                                "images), .csv or .parquet (a table in the data's units, with the "
                                                "class column of a conditional GAN).")] = Path("samples.csv"),
           label: Annotated[str | None, typer.Option("--class", help="Generate this class only (a conditional "
                                                        "GAN); default: classes drawn at random.",
                                                        show_default=False)] = None,
           seed: Annotated[int, typer.Option("--seed", help="The noise's seed: the same seed gives the same "
                                             "rows.")] = 0) -> None:
    """Generate new rows or images with a trained GAN (model: {name: gan})."""
    from modelfoundry.api.sampling import sample as draw

    result = draw(run_dir, n, output, label=label, seed=seed)
    what = "images" if result.images is not None and output.suffix.lower() == ".png" else "rows"
    open_console().print(f"Wrote {len(result.rows)} generated {what}{f' of class {label}' if label else ''} to "
                         f"[bold]{output}[/].", soft_wrap=True)
