"""`export`: a run directory or registered model to ONNX, checked for parity, recorded on its registry version."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from modelfoundry.api.arguments import model_dir


def export(model: str | Path, out_dir: str | Path | None = None, *, fmt: str = "onnx",
           tolerance: float = 1e-4, merge: bool = False) -> Any:
    """Export a run directory or registered model (NAME[/VERSION|@ALIAS]) to ONNX, with a parity check.

    The ONNX file has a dynamic batch dimension; preprocessing travels as the pickle-free sidecar
    preprocess.json (see data/portable.py). With `merge`, a pretrained-encoder model is written instead as a
    standalone merged model (LoRA folded into a plain Hugging Face encoder, plus its head), and a causal language
    model as one plain Hugging Face causal-LM directory with the run's chat template (see
    merged_export.export_merged), checked against the adapter model. A registered model gets the result as
    version tags.
    """
    from modelfoundry.errors import ConfigError, unknown_name
    from modelfoundry.export import export_onnx
    from modelfoundry.merged_export import export_merged

    if fmt != "onnx":
        raise ConfigError(unknown_name("export format", fmt, ["onnx"]))
    local = model_dir(model)
    if merge:
        merged = export_merged(local, out_dir, tolerance=tolerance)
        if not Path(model).exists():
            from modelfoundry.registry import tag_version

            tag_version(str(model), {"foundry.merged.max_abs_diff": f"{merged.max_abs_diff:.3g}",
                                     "foundry.merged.rows_checked": str(merged.rows_checked)})
        return merged
    result = export_onnx(local, out_dir, tolerance=tolerance)
    if not Path(model).exists():  # a registry reference: record the export on that version
        from modelfoundry.registry import tag_version

        tag_version(str(model), {"foundry.onnx.max_abs_diff": f"{result.max_abs_diff:.3g}",
                                 "foundry.onnx.rows_checked": str(result.rows_checked),
                                 "foundry.onnx.opset": str(result.opset),
                                 "foundry.onnx.exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return result
