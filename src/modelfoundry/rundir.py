"""The run directory, the unit of reproducibility: creating one, and saving and loading its model.

    runs/<name>-<timestamp>/
      config.yaml  data.json  manifest.json  preprocess.json  metrics.jsonl
      checkpoints/{last,best}.pt   eval/   model/{weights.pt,model.json}

Its paths are named by artifacts/rundir.py (RunDir), its JSON records typed by artifacts/records.py; this
module is where they meet the model table and the preprocessing (so it comes after data and models).

Nothing loaded from a run directory can execute code: preprocessing is the JSON description of
data/portable.py, weights and checkpoints load with `torch.load(weights_only=True)`. Run directories of
modelfoundry 0.1 stored preprocessing as a pickle (preprocess.pkl); they are refused until `foundry
migrate RUN_DIR` converts them (see legacy.py, which reads the pickle without executing it).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelfoundry.artifacts.records import MODEL_FORMAT_VERSION, ModelRecord, read_object
from modelfoundry.artifacts.rundir import RunDir
from modelfoundry.config import Config, dump_config, load_config
from modelfoundry.errors import RunDirError, first_line
from modelfoundry.storage import write_bytes_atomic, write_json, write_text

FORMAT_VERSION = MODEL_FORMAT_VERSION  # model.json's format_version (1 before issue 10 wrote "format": 1)


def create_run_dir(config: Config, run_dir: str | Path | None = None) -> Path:
    """`run_dir` if given (created if needed), else a fresh `<output.dir>/<name>-<timestamp>/`."""
    root = plan_run_dir(config, run_dir)
    root.mkdir(parents=True, exist_ok=True)
    return root


def plan_run_dir(config: Config, run_dir: str | Path | None = None) -> Path:
    """The directory `create_run_dir` would use, checked (not holding a run, not a file) but not created."""
    if run_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        root = Path(config.output.dir) / f"{config.name}-{stamp}"
        suffix = 1
        while root.exists():
            suffix += 1
            root = Path(config.output.dir) / f"{config.name}-{stamp}-{suffix}"
    else:
        root = Path(run_dir)
        if root.exists() and not root.is_dir():
            raise RunDirError(f"Run directory '{root}' is a file, not a directory.", "Pick a new --run-dir.")
        if RunDir(root).model_dir.exists() or RunDir(root).last_checkpoint.exists():
            raise RunDirError(f"Run directory '{root}' already holds a run.",
                              f"Pick a new --run-dir, or continue it with `foundry run --resume {root}`.")
    return root


def save_config(run_dir: Path, config: Config) -> None:
    write_text(RunDir(run_dir).config, dump_config(config))


def load_run_config(run_dir: Path) -> Config:
    path = RunDir(run_dir).config
    if not path.is_file():
        why = ("it has no config.yaml" if Path(run_dir).is_dir() else
               "it is a file" if Path(run_dir).exists() else "it does not exist")
        raise RunDirError(f"'{run_dir}' is not a run directory: {why}.",
                          "Pass a directory made by `foundry run` (they live under runs/ by default).")
    return load_config(path)


PREPROCESS = RunDir.PREPROCESS
LEGACY_PREPROCESS = RunDir.LEGACY_PREPROCESS


def save_model(run_dir: Path, model: Any, spec: dict[str, Any], preprocessor: Any, target_encoder: Any) -> None:
    """model/weights.pt (state_dict, loadable with weights_only), model/model.json (a ModelRecord of `spec`),
    preprocess.json.

    A model built on pretrained weights it does not change (a frozen or LoRA-tuned encoder) saves only what it
    trained - its `saved_state()` - and model.json records the base weights it needs (`base_reference()`:
    their path and sha256), which loading checks.
    """
    import io

    import torch

    from modelfoundry.data.anomaly import describe_target
    from modelfoundry.data.portable import describe_preprocessor
    from modelfoundry.train.loop import trained_state

    base = model.base_reference() if callable(getattr(model, "base_reference", None)) else None
    if base:
        spec = {**spec, "base": base}
    record = ModelRecord.from_json(spec, "the model spec")  # checked before anything is written
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in trained_state(model).items()}, buffer)
    desc = describe_preprocessor(preprocessor)  # the target as any task describes it (an anomaly's threshold)
    desc["target"] = describe_target(target_encoder, spec.get("target"))
    layout = RunDir(run_dir)
    write_bytes_atomic(layout.preprocess, (json.dumps(desc, indent=1) + "\n").encode(), durable=True)
    write_bytes_atomic(layout.weights, buffer.getvalue(), durable=True)
    write_json(layout.model_record, record.to_json())


@dataclass
class SavedModel:
    run_dir: Path
    config: Config
    model: Any
    spec: dict[str, Any]  # record.spec(): the fields of model.json as a plain dict (what save_model takes)
    preprocessor: Any
    target_encoder: Any
    record: ModelRecord  # model.json, typed

    @property
    def task(self) -> str:
        return self.record.task

    @property
    def labels(self) -> list[str]:
        return [str(c) for c in self.record.classes or []]


def load_model(run_dir: str | Path) -> SavedModel:
    """Rebuild the trained model of a run directory, with its preprocessing, on the CPU (executing nothing)."""
    from modelfoundry.models import build_model

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is a file, not a run directory" if run_dir.exists() else "does not exist"
        raise RunDirError(f"Run directory '{run_dir}' {what}.", "List runs with `ls runs/`.")
    config = load_run_config(run_dir)
    layout = RunDir(run_dir)
    spec_path = layout.model_record
    spec = read_record(spec_path, run_dir) if spec_path.is_file() else {}
    runtime = spec.get("runtime")
    if runtime == "group":
        raise RunDirError(f"'{run_dir}' is an ensemble of members that preprocess their inputs differently: it runs "
                          "as a served group, not as one model.", f"Serve it (`foundry serve {run_dir}`); its test "
                          "metrics are in eval/ (written by `foundry ensemble`).")
    weights = layout.export.graph if runtime == "onnx" else layout.weights
    if not layout.preprocess.is_file() and layout.legacy_preprocess.is_file():
        raise RunDirError(f"'{run_dir}' stores its preprocessing as a pickle ({LEGACY_PREPROCESS}, made by "
                          "modelfoundry 0.1), which could execute code when loaded, so it is not loaded.",
                          f"Convert it once with `foundry migrate {run_dir}` (it reads the pickle without running "
                          "it and writes preprocess.json).")
    needed = [weights, spec_path, layout.preprocess]
    missing = [str(p.relative_to(run_dir)) for p in needed if not p.is_file()]
    if missing:
        raise RunDirError(f"Run directory '{run_dir}' has no trained model (missing {', '.join(missing)}).",
                          f"Finish training first: `foundry run --resume {run_dir}`.")
    record = ModelRecord.from_json(spec, spec_path)  # a missing or mistyped field: named, with the file
    spec = record.spec()
    preprocessor, target_encoder = load_preprocessing(layout.preprocess, run_dir)
    if runtime == "onnx":  # a compressed (int8, fp16) graph: evaluate and predict run what is served
        from modelfoundry.models.onnx_graph import OnnxGraph

        model = OnnxGraph(weights, record.task)
    else:
        try:
            model = build_model(config.model, record.input_spec, record.n_outputs)
        except (KeyError, TypeError) as exc:
            raise RunDirError(f"{spec_path} is malformed ({first_line(exc)}).",
                              "Use a run directory made by `foundry run`.") from None
        _load_state(model, load_weights(weights, run_dir), record, spec_path)
    model.eval()
    return SavedModel(run_dir, config, model, spec, preprocessor, target_encoder, record)


def _load_state(model: Any, state: dict[str, Any], record: ModelRecord, spec_path: Path) -> None:
    """Weights into a built model: all of them, or what a model on unchanged pretrained weights trained (after
    checking that the base weights are the ones it was trained on)."""
    base = record.extra.get("base")
    if isinstance(base, dict) and base.get("sha256"):
        found = getattr(model, "base_reference", lambda: {})().get("sha256")
        if found != base["sha256"]:
            raise RunDirError(f"{spec_path} was trained on base weights {base.get('path')} with sha256 "
                              f"{str(base['sha256'])[:12]}..., but the weights found now have "
                              f"{str(found)[:12]}....", "Restore the original base model files (or reinstall its "
                              "package at the same version), or train again on the new ones.")
    from modelfoundry.train.loop import load_weights as load_trained_state

    load_trained_state(model, state)


def load_weights(path: Path, run_dir: Path | None = None) -> dict[str, Any]:
    """A state_dict saved by save_model, loaded data-only (weights_only=True); anything else is refused."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated file, a pickle with code, a foreign format
        raise RunDirError(f"'{path}' is not a readable weights file ({first_line(exc)}).",
                          "It may be truncated or not made by modelfoundry; use a complete run directory "
                          "or registered version.") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RunDirError(f"'{path}' holds no model weights (a mapping of tensors).",
                          "Use a run directory made by `foundry run`.")
    return state


def load_preprocessing(path: Path, run_dir: Path | None = None) -> tuple[Any, Any]:
    """(PortablePreprocessor, TargetEncoder) from a preprocess.json."""
    from modelfoundry.data.anomaly import target_from_description
    from modelfoundry.data.portable import PortablePreprocessor
    from modelfoundry.errors import DataError

    desc = read_record(path, run_dir)
    try:
        return PortablePreprocessor(desc), target_from_description(desc["target"])
    except DataError as exc:
        raise RunDirError(f"{path}: {exc.message}", exc.hint) from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise RunDirError(f"{path} is not a valid preprocessing description ({first_line(exc)}).",
                          "Use a run directory made by `foundry run`.") from None


def read_record(path: Path, run_dir: Path | None = None) -> dict[str, Any]:
    """A JSON object from a run directory; a corrupt or truncated file is a RunDirError naming it."""
    return read_object(path)


TOKENIZER_DIR = "model/tokenizer"  # a language model's tokenizer files (JSON): it is prompted as it was trained


def save_language_model(run_dir: Path, model: Any, spec: dict[str, Any], fmt: Any, tokenizer: Any) -> None:
    """A causal LM's run: model/weights.pt (what training changed: the LoRA adapters, the unfrozen layers, or
    everything for full fine-tuning; loadable with weights_only), model/model.json (with the base's identity and
    sha256), model/tokenizer/ (tokenizer.json and its config, data only) and preprocess.json (how examples
    were formatted: data.lm and the chat template)."""
    import io
    import shutil

    import torch

    from modelfoundry.train.loop import trained_state

    base = model.base_reference() if callable(getattr(model, "base_reference", None)) else None
    spec = {**spec, "base": base or {"name": getattr(model, "model_name", None)}}
    record = ModelRecord.from_json(spec, "the model spec")
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in trained_state(model).items()}, buffer)
    layout = RunDir(run_dir)
    staging = Path(run_dir) / f".tokenizer.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer.save_pretrained(str(staging))
    target = Path(run_dir) / TOKENIZER_DIR
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    write_json(layout.preprocess, fmt.describe())
    write_bytes_atomic(layout.weights, buffer.getvalue(), durable=True)
    write_json(layout.model_record, record.to_json())


def is_language_model(run_dir: str | Path) -> bool:
    """Whether a run directory holds a causal language model (from its model.json, else its config)."""
    record = RunDir(run_dir).model_record
    if record.is_file():
        try:
            return json.loads(record.read_text(encoding="utf-8")).get("task") == "causal_lm"
        except (OSError, ValueError, AttributeError):
            return False
    return False


def load_language_model(run_dir: str | Path, dtype: str = "float32", merge: bool = True) -> Any:
    """A trained causal-LM run as a LanguageModel ready to generate: the base rebuilt, the trained weights loaded
    (the base's sha256 checked), LoRA adapters merged into the weights (`merge=False`: kept apart, in eval mode,
    what a merge is checked against), weights in `dtype`; prompted with the run's tokenizer, chat template and
    system message."""
    import torch

    from modelfoundry.models import build_model
    from modelfoundry.models.llm import LanguageModel
    from modelfoundry.models.llm_base import DTYPES

    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    layout = RunDir(run_dir)
    missing = [str(p.relative_to(run_dir)) for p in (layout.weights, layout.model_record, layout.preprocess,
                                                     run_dir / TOKENIZER_DIR / "tokenizer_config.json")
               if not p.is_file()]
    if missing:
        raise RunDirError(f"Run directory '{run_dir}' has no trained language model (missing {', '.join(missing)}).",
                          f"Finish training first: `foundry run --resume {run_dir}`.")
    record = ModelRecord.from_json(read_record(layout.model_record, run_dir), layout.model_record)
    if record.task != "causal_lm":
        raise RunDirError(f"'{run_dir}' holds a {record.task} model, not a language model.",
                          f"Use `foundry predict {run_dir} FILE` for it.")
    if dtype not in DTYPES:
        raise RunDirError(f"The dtype of a language model must be one of {', '.join(DTYPES)}. Got {dtype!r} instead.")
    model = build_model(config.model, record.input_spec, record.n_outputs)
    _load_state(model, load_weights(layout.weights, run_dir), record, layout.model_record)
    hf = (model.generation_model() if merge else model.hf.eval()).to(getattr(torch, dtype))
    fmt = read_record(layout.preprocess, run_dir)
    lm = fmt.get("lm", {}) if isinstance(fmt, dict) else {}
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(run_dir / TOKENIZER_DIR), local_files_only=True,
                                              trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    identity = {**(record.extra.get("base") or {}), "run": str(run_dir.resolve())}
    return LanguageModel(hf, tokenizer, config.name, lm.get("template", "model"), lm.get("system"), identity)
