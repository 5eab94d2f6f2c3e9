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

import json
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
    import torch
    from torch import nn

    from modelfoundry.models.llm import LanguageModel


@dataclass
class MergedExportResult:
    out_dir: Path
    max_abs_diff: float  # largest |merged - adapter model| over the rows checked and all outputs
    rows_checked: int
    tolerance: float
    files: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    loads_with: str = "modelfoundry.models.pretrained.load_merged"  # what reads the directory back
    checked_on: str = "held-out rows"  # what rows_checked counts


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
    from modelfoundry.rundir import is_language_model, load_model

    started = time.perf_counter()
    if not tolerance >= 0:
        raise ConfigError(f"The 'tolerance' parameter of export_merged must be >= 0. Got {tolerance} instead.")
    if is_language_model(run_dir):
        return export_merged_language_model(run_dir, out_dir, tolerance=tolerance)
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
    out = _output_dir(saved.run_dir, out_dir)
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


def _output_dir(run_dir: Path, out_dir: str | Path | None) -> Path:
    """Where a merged export goes (default <run_dir>/model/merged/), its parent made; refused if something
    other than a previous merged export is there."""
    out = Path(out_dir) if out_dir is not None else RunDir(run_dir).model_dir / "merged"
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not (out / "merged.json").is_file():
        raise ExportError(f"'{out}' exists and is not a merged model, so it would be replaced.",
                          "Give -o a new or empty directory (or a previous merged export, which is replaced).")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


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


# --- causal language models -------------------------------------------------------------------------------
# A causal-LM run merges into one plain Hugging Face directory (config.json, model.safetensors, tokenizer files
# whose chat template is the run's, system message included; merged.json says what it is; export.json, written
# last, the parity reached): `load_base_language_model(out_dir)` or `AutoModelForCausalLM.from_pretrained`
# read it, with no peft and no reference to the base weights.
MERGED_LM_FORMAT = 1
PARITY_PROMPTS = (  # the fixed prompt set merged logits are compared on (every position of each prompt)
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Classify the sentiment of this text: I loved the film, it was great."}],
    [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Translate to French: cat"},
     {"role": "assistant", "content": "chat"}, {"role": "user", "content": "And dog?"}],
    [{"role": "user", "content": "Écris « bonjour » 3 fois | then stop.\nThanks!"}],
)
PLAIN_TEMPLATE = ("{% for message in messages %}{{ message['content'] }}{% if message['role'] != 'assistant' %}"
                  "{{ '\\n' }}{% else %}{{ eos_token }}{% endif %}{% endfor %}")


def chat_template_for(tokenizer: Any, template: str, system: str | None) -> str:
    """A Jinja chat template that prompts as `template` (artifacts.chat TEMPLATES) with `system` first does, so the
    merged directory is prompted as the run was by anyone who calls `apply_chat_template`."""
    from modelfoundry.artifacts.chat import TEMPLATES

    if template == "model":
        body = getattr(tokenizer, "chat_template", None)
        if not body:
            raise ExportError("The run's tokenizer has no chat template to write (data.lm.template: model).")
    elif template == "chatml":
        body = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
                "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                "{% endif %}")
    elif template == "plain":
        body = PLAIN_TEMPLATE
    else:
        raise ExportError(f"Unknown chat template {template!r}; templates are {', '.join(TEMPLATES)}.")
    if not system:
        return body
    literal = json.dumps(system, ensure_ascii=False)  # a Jinja string literal: quotes and newlines escaped
    return ("{% if not messages or messages[0]['role'] != 'system' %}{% set messages = [{'role': 'system', "
            f"'content': {literal}}}] + messages %}}{{% endif %}}" + body)


def export_merged_language_model(run_dir: str | Path, out_dir: str | Path | None = None, *,
                                 tolerance: float = 1e-4) -> MergedExportResult:
    """Write a causal-LM run's model standalone, LoRA adapters merged into the weights, as one plain Hugging Face
    directory (default <run_dir>/model/merged/), after checking its logits against the adapter model's on a
    fixed prompt set (see `write_merged_language_model`); export.json, written last, records the parity.

    The run is loaded as generation and serving load it (checking the base's sha256; it gives the tokenizer, chat
    template and system message), with its adapters kept apart for the parity check.
    """
    from modelfoundry.rundir import load_language_model, load_run_config

    started = time.perf_counter()
    run_dir = Path(run_dir)
    adapter = load_language_model(run_dir, merge=False)
    config = load_run_config(run_dir)
    out = _output_dir(run_dir, out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    base = {k: v for k, v in adapter.identity.items() if k != "run"}
    try:
        diff, checked, scale = write_merged_language_model(adapter, staging, tolerance=tolerance, description={
            "name": adapter.name, "trained_on_base": base, "finetune": config.model.finetune})
        files = sorted(p.name for p in staging.iterdir()) + ["export.json"]
        parity = {"max_abs_diff": diff, "rows_checked": checked, "tolerance": tolerance, "logit_scale": scale,
                  "compared": f"logits at every position of {checked} fixed chat prompts: the merged model read "
                              "back from disk vs the run's model with its adapters apart; allowed: tolerance x "
                              "logit_scale (the largest |logit|, at least 1)"}
        write_json(staging / "export.json", {"format": EXPORT_FORMAT, "kind": "merged", "name": adapter.name,
                                             "run_dir": str(run_dir.resolve()), "files": files,
                                             "trained_on_base": base, "parity": parity,
                                             "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        _replace_dir(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return MergedExportResult(out, diff, checked, tolerance, files, time.perf_counter() - started,
                              "modelfoundry.models.llm.load_base_language_model or transformers' "
                              "AutoModelForCausalLM", "fixed prompts (logits at every position)")


def write_merged_language_model(lm: LanguageModel, out: Path, *, tolerance: float,
                                description: dict[str, Any]) -> tuple[float, int, float]:
    """Write `lm` (its model possibly with LoRA adapters, not merged) merged into `out` (an empty directory),
    after checking that the merged model, read back from `out`, gives the logits `lm` gives on PARITY_PROMPTS
    (every position, prompted through the saved chat template) to within `tolerance` relative to the logits'
    scale: |merged - adapter| <= tolerance x max(1, largest |logit|). Float32 rounding grows with the logits
    (SmolLM2-135M's reach ~42; a merge there differs by ~1e-4 in absolute terms, ~2.5e-6 relative).

    `description` goes into merged.json. Returns (the largest |merged - adapter| logit, prompts checked, the
    logit scale).
    """
    from modelfoundry.models.llm import load_base_language_model

    expected = [(ids, _logits(lm.model, ids)) for ids in (lm.prompt_ids(m) for m in PARITY_PROMPTS)]
    hf = lm.model.merge_and_unload() if hasattr(lm.model, "peft_config") else lm.model
    hf.config.use_cache = True
    hf.save_pretrained(str(out), safe_serialization=True)
    tokenizer = lm.tokenizer
    saved_template = tokenizer.chat_template
    tokenizer.chat_template = chat_template_for(tokenizer, lm.template, lm.system)
    try:
        tokenizer.save_pretrained(str(out))
    finally:
        tokenizer.chat_template = saved_template
    write_json(out / "merged.json", {"format": MERGED_LM_FORMAT, "kind": "causal_lm", **description,
                                     "template": lm.template, "system": lm.system})
    merged = load_base_language_model(str(out))
    diff, scale = 0.0, max(1.0, *(float(logits.abs().max()) for _, logits in expected))
    for messages, (ids, logits) in zip(PARITY_PROMPTS, expected, strict=True):
        if merged.prompt_ids(messages) != ids:
            raise ExportError("The merged model's chat template prompts differently from the run's "
                              f"(template {lm.template}); nothing was written.", "Report the run's data.lm.")
        diff = max(diff, float((_logits(merged.model, ids) - logits).abs().max()))
    if not diff <= tolerance * scale:
        raise ExportError(f"The merged model's logits differ from the adapter model's by up to {diff:.3g} on "
                          f"{len(expected)} prompts, more than the tolerance {tolerance:g} x the largest |logit| "
                          f"{scale:.3g}; nothing was written.",
                          "Raise --tolerance if the difference is acceptable (bfloat16 weights differ more).")
    return diff, len(expected), scale


def _logits(model: nn.Module, ids: list[int]) -> torch.Tensor:
    """The model's float32 logits at every position of one prompt: (T, V)."""
    import torch

    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()
