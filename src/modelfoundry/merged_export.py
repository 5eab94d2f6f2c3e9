"""A pretrained-encoder run written standalone: LoRA folded into the base, saved as a plain Hugging Face encoder
plus its head, after checking that it answers what the adapter model answers (`foundry export RUN --merge`).

    <out_dir>/                  (default: <run_dir>/model/merged/)
      encoder/          a plain Hugging Face model directory (config.json, model.safetensors, tokenizer files)
      head.safetensors  the head's weights
      merged.json       pooling, dropout, head widths, the model's inputs (what `load_merged` reads)
      preprocess.json   raw columns -> model inputs, as the run's
      export.json       the parity reached (merged vs adapters on the run's test rows); written last
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelfoundry.artifacts.rundir import RunDir
from modelfoundry.errors import ConfigError, ExportError
from modelfoundry.export import EXPORT_FORMAT, _test_rows
from modelfoundry.storage import write_json

if TYPE_CHECKING:
    import pandas as pd
    from torch import nn


@dataclass
class MergedExportResult:
    out_dir: Path
    max_abs_diff: float  # largest |merged - adapter model| over the rows checked and all outputs
    rows_checked: int
    tolerance: float
    files: list[str] = field(default_factory=list)
    wall_s: float = 0.0


MERGED_FILES = ("encoder", "head.safetensors", "merged.json", "preprocess.json", "export.json")


def export_merged(run_dir: str | Path, out_dir: str | Path | None = None, *, tolerance: float = 1e-4,
                  parity_rows: pd.DataFrame | None = None) -> MergedExportResult:
    """Write a run's pretrained-encoder model standalone, LoRA folded into the base, after checking that it
    answers what the adapter model answers, in the layout the module docstring shows (default `out_dir`:
    <run_dir>/model/merged/).

    It loads with `modelfoundry.models.pretrained.load_merged(out_dir)`, or the encoder alone with
    `transformers.AutoModel.from_pretrained(out_dir / "encoder")`: no peft, no reference to the base weights.
    The directory is built beside `out_dir` and renamed into place, so it is never half written.
    """
    from modelfoundry.models.inference import predict_outputs
    from modelfoundry.models.pretrained import MERGED_FORMAT, load_merged
    from modelfoundry.rundir import load_model

    started = time.perf_counter()
    if not tolerance >= 0:
        raise ConfigError(f"The 'tolerance' parameter of export_merged must be >= 0. Got {tolerance} instead.")
    saved = load_model(run_dir)
    classifier, window_pool = _merge_target(saved.model)
    if classifier is None:
        raise ExportError(f"The model of {saved.run_dir} ({saved.config.model.name}) has no pretrained encoder to "
                          "merge adapters into.", "Use `foundry export RUN_DIR` (ONNX) for it; --merge is for "
                          "model: {name: pretrained} runs.")
    rows = _test_rows(saved) if parity_rows is None else parity_rows
    if len(rows) == 0:
        raise ExportError(f"There are no rows to check the merged model of {saved.run_dir} on.",
                          "Pass rows with parity_rows, or give the run a non-empty test split.")
    out = Path(out_dir) if out_dir is not None else RunDir(saved.run_dir).model_dir / "merged"
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not (out / "merged.json").is_file():
        raise ExportError(f"'{out}' exists and is not a merged model, so it would be replaced.",
                          "Give -o a new or empty directory (or a previous merged export, which is replaced).")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))  # same filesystem: renames are atomic
    try:
        names = saved.record.input_spec.names
        desc = {"format": MERGED_FORMAT, **classifier.save_merged(staging), "inputs": names,
                "side": [names[i] for i in classifier.side], "window_pool": window_pool,
                "task": saved.task, "labels": saved.labels, "finetune": classifier.finetune}
        write_json(staging / "merged.json", desc)
        shutil.copyfile(RunDir(saved.run_dir).preprocess, staging / "preprocess.json")
        X = saved.preprocessor.transform(rows, "the parity rows")
        expected = predict_outputs(saved.model, X, saved.task).reshape(len(rows), -1)
        got = predict_outputs(load_merged(staging), X, saved.task).reshape(len(rows), -1)
        diff = float(np.abs(got - expected).max())
        if not diff <= tolerance:
            raise ExportError(f"The merged model differs from the adapter model by up to {diff:.3g} on {len(rows)} "
                              f"rows, more than the tolerance {tolerance:g}; nothing was written.",
                              "Raise --tolerance if the difference is acceptable, or report the model config.")
        parity = {"max_abs_diff": diff, "rows_checked": len(rows), "tolerance": tolerance,
                  "compared": "merged model vs the run's adapter model (probabilities or standardised values)"}
        write_json(staging / "export.json", {"format": EXPORT_FORMAT, "kind": "merged", "name": saved.record.name,
                                             "run_dir": str(saved.run_dir.resolve()), "files": list(MERGED_FILES),
                                             "trained_on_base": saved.record.extra.get("base"), "parity": parity,
                                             "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        _replace_dir(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return MergedExportResult(out, diff, len(rows), tolerance, list(MERGED_FILES), time.perf_counter() - started)


def _merge_target(model: nn.Module) -> tuple[Any, str | None]:
    """(the pretrained-encoder model to merge, the window pooling around it or None); (None, None) if none."""
    window_pool = None
    if hasattr(model, "inner") and hasattr(model, "pool"):  # models/windows.py: long texts as pooled windows
        model, window_pool = model.inner, model.pool
    return (model, window_pool) if callable(getattr(model, "save_merged", None)) else (None, None)


def _replace_dir(staging: Path, out: Path) -> None:
    """`staging` becomes `out`: an old `out` is renamed aside first and removed after."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}-old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
