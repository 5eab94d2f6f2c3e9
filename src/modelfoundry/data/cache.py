"""A disk cache of tokenized text, so a second run on the same data (or every tuning trial, every resume)
skips fitting the vocabulary and tokenizing.

An entry is keyed by everything the tokens depend on: the source's content (its fingerprint), the text
columns, the tokenizer settings (and a pretrained tokenizer's JSON), and the rows of each split (which the
split seed, fractions, cleaning and CV folds decide). It holds the fitted tokenizer's description (JSON) and
the token ids and masks of each split (.npz, read with allow_pickle=False: data only). Entries are written
atomically; a damaged or foreign entry is a miss, never an error.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelfoundry.storage import cache_root, write_bytes_atomic

def cache_dir() -> Path:
    """$FOUNDRY_CACHE_DIR/tokens, by default .foundry-cache/tokens under the current directory."""
    return cache_root() / "tokens"

FORMAT = 3  # 2: tokens in the smallest unsigned type that holds the vocabulary, masks as lengths; 3: per window


@dataclass
class CachedText:
    description: dict[str, Any]  # TextEncoder.describe()
    arrays: dict[str, dict[str, np.ndarray]]  # split -> {"tokens", "attention_mask"}


def cache_key(fingerprint: str, settings: dict[str, Any], columns: list[str], rows: dict[str, np.ndarray]) -> str:
    """The entry name for these inputs of tokenization (sha256, hex)."""
    digest = hashlib.sha256()
    plain = {k: v for k, v in settings.items() if k != "pretrained"}
    pretrained = settings.get("pretrained")
    meta = {"format": FORMAT, "fingerprint": fingerprint, "settings": plain, "columns": columns,
            "pretrained": hashlib.sha256(pretrained.encode()).hexdigest() if pretrained else None}
    digest.update(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(rows):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(rows[name], dtype=np.int64).tobytes())
    return digest.hexdigest()


def load(key: str, directory: Path | None = None) -> CachedText | None:
    """The entry `key`, or None when it is absent or unreadable."""
    directory = directory or cache_dir()
    meta_path, data_path = directory / f"{key}.json", directory / f"{key}.npz"
    if not (meta_path.is_file() and data_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            return None
        with np.load(data_path, allow_pickle=False) as data:
            arrays: dict[str, dict[str, np.ndarray]] = {}
            for split in meta["splits"]:
                tokens, lengths = data[f"{split}.tokens"].astype(np.int64), data[f"{split}.lengths"]
                mask = (np.arange(tokens.shape[-1]) < lengths[..., None]).astype(np.int64)  # (N, T) or (N, W, T)
                arrays[split] = {"tokens": tokens, "attention_mask": mask}
        return CachedText(meta["description"], arrays)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(key: str, description: dict[str, Any], arrays: dict[str, dict[str, np.ndarray]],
         directory: Path | None = None) -> None:
    """Write the entry `key` (arrays first, then the JSON that makes it visible); failures are ignored."""
    directory = directory or cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        flat = {}
        for split, inputs in arrays.items():
            top = int(inputs["tokens"].max(initial=0))
            flat[f"{split}.tokens"] = inputs["tokens"].astype(np.uint16 if top < 2**16 else np.uint32)
            # masks are 1s then 0s (per window of a long text): their lengths say it all
            flat[f"{split}.lengths"] = inputs["attention_mask"].sum(axis=-1).astype(np.int32)
        buffer = io.BytesIO()
        np.savez(buffer, **flat)
        write_bytes_atomic(directory / f"{key}.npz", buffer.getvalue())
        meta = {"format": FORMAT, "splits": sorted(arrays), "description": description}
        write_bytes_atomic(directory / f"{key}.json", json.dumps(meta).encode())
    except OSError:  # a read-only or full disk: the run goes on without a cache
        return
