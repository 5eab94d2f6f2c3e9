"""The nn.Module of `model: {name: pretrained}` (models/pretrained.py holds its config and builder): torch,
transformers and peft are imported at the top here, so this module is only imported by the builder."""

from __future__ import annotations

import copy
import os
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelfoundry.models.layers import masked_mean
from modelfoundry.models.pretrained import PretrainedConfig, weights_sha256

TOKENIZER_FILES = ("special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
                   "sentencepiece.bpe.model")  # besides tokenizer*.json: what a tokenizer loads from a directory


class PretrainedClassifier(nn.Module):
    """forward(*inputs in spec order) -> (B, n_outputs): encoder -> pooling (+ side inputs) -> dropout -> head."""

    padding_invariant = True  # masked attention and pooling: the loop may cut batches to their longest text

    def __init__(self, config: PretrainedConfig, encoder: nn.Module, head: nn.Module, names: list[str],
                 side: list[str], directory: str):
        super().__init__()
        self.finetune, self.pooling, self.directory = config.finetune, config.pooling, directory
        self.layer_lr_decay, self.unfreeze_after = config.layer_lr_decay, config.unfreeze_after_epochs
        self.n_layers = int(getattr(encoder.config, "num_hidden_layers", 0) or 0)
        if config.finetune == "lora":
            from peft import LoraConfig, get_peft_model

            lora = config.lora
            with warnings.catch_warnings():  # peft probes a transformers attribute that warns it is deprecated
                warnings.simplefilter("ignore", FutureWarning)
                encoder = get_peft_model(encoder, LoraConfig(r=lora.r, lora_alpha=lora.alpha,
                                                             lora_dropout=lora.dropout, bias="none",
                                                             target_modules=list(lora.target_modules)))
        elif config.finetune == "freeze":
            encoder.requires_grad_(False)
        self.encoder, self.head = encoder, head
        self.dropout = nn.Dropout(config.dropout)
        self.tokens, self.mask = names.index("tokens"), names.index("attention_mask")
        self.side = [names.index(n) for n in side]
        if self.unfreeze_after:
            self._encoder_trainable(False)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        pooled = self.pooled(inputs[self.tokens], inputs[self.mask])  # (B, D)
        return _on_head(self.dropout, self.head, pooled, [inputs[i] for i in self.side])

    def pooled(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids and mask -> (B, D): the encoder's last hidden states, CLS or masked mean."""
        hidden = self.encoder(input_ids=tokens, attention_mask=mask).last_hidden_state  # (B, T, D)
        if self.pooling == "cls":
            return hidden[:, 0]
        return masked_mean(hidden, mask)

    # ----------------------------------------------------------------------------- hooks of the training loop
    def parameter_groups(self, lr: float) -> list[dict[str, Any]] | None:
        """Layer-wise learning-rate decay: the head at `lr`, encoder layer i at lr * decay^(L - i), the
        embeddings at lr * decay^(L + 1). Every parameter the mode can train is listed (also those that are
        frozen until `unfreeze_after_epochs`). None when there is no decay: one group."""
        if not self.layer_lr_decay and not self.unfreeze_after:
            return None
        decay = self.layer_lr_decay or 1.0
        groups: dict[int, list[nn.Parameter]] = {}
        for name, param in self.named_parameters():
            if not self._trainable_in_mode(name):
                continue
            groups.setdefault(self._depth(name), []).append(param)
        top = self.n_layers + 1
        return [{"params": params, "lr": lr * decay ** (top - depth)} for depth, params in sorted(groups.items())]

    def on_epoch_start(self, epoch: int) -> None:
        """Gradual unfreezing: the encoder's trainable parts train from epoch unfreeze_after_epochs + 1."""
        if self.unfreeze_after:
            self._encoder_trainable(epoch > self.unfreeze_after)

    def frozen_features(self) -> FrozenEncoder | None:
        """When training never changes the encoder (`freeze`, no gradual unfreezing): how to compute its pooled
        outputs once per split, and the part trained on them (train/features.py uses it); else None."""
        if self.finetune != "freeze" or self.unfreeze_after:
            return None
        return FrozenEncoder(self.pooled, _Top(self), {"base_sha256": weights_sha256(self.directory),
                                                       "pooling": self.pooling, "encoder": type(self.encoder).__name__},
                             self.tokens, self.mask, list(self.side))

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable now, total)."""
        params = list(self.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    # --------------------------------------------------------------------------------------------- saving
    def saved_state(self) -> dict[str, torch.Tensor]:
        """What this model trained: everything for `full`, the head (and adapters) for `freeze` and `lora`."""
        state = self.state_dict()
        if self.finetune == "full":
            return state
        return {k: v for k, v in state.items() if not k.startswith("encoder.") or "lora_" in k}

    def load_saved_state(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.saved_state())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
            raise KeyError(f"saved weights do not fit this model (missing {missing}, unexpected {extra})")
        self.load_state_dict(state, strict=False)

    def base_reference(self) -> dict[str, str] | None:
        """The base weights a frozen or LoRA model needs (path and sha256); None when everything is saved."""
        if self.finetune == "full":
            return None
        return {"path": self.directory, "sha256": weights_sha256(self.directory)}

    def merged(self) -> nn.Module:
        """A copy with the LoRA adapters folded into the base weights (the same outputs, plain modules)."""
        if self.finetune != "lora":
            return self
        clone = copy.deepcopy(self)
        clone.encoder = clone.encoder.merge_and_unload()
        clone.finetune = "full"
        return clone

    def save_merged(self, directory: Path) -> dict[str, Any]:
        """Write this model standalone into `directory`: `encoder/` a plain Hugging Face model (LoRA folded in,
        safetensors, with the base's tokenizer files) and `head.safetensors`; returns what `load_merged`
        (models/pretrained.py) needs besides them (pooling, dropout, head widths, inputs) for merged.json."""
        from safetensors.torch import save_file

        merged = self.merged()
        encoder_dir = Path(directory) / "encoder"
        merged.encoder.save_pretrained(encoder_dir, safe_serialization=True)
        for name in sorted(os.listdir(self.directory)):
            source = Path(self.directory) / name
            if source.is_file() and (name.startswith("tokenizer") or name in TOKENIZER_FILES):
                shutil.copyfile(source, encoder_dir / name)
        head = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        save_file(head, str(Path(directory) / "head.safetensors"))
        linears = [m for m in self.head if isinstance(m, nn.Linear)]
        return {"pooling": self.pooling, "dropout": float(self.dropout.p),
                "head": [m.out_features for m in linears[:-1]], "n_outputs": linears[-1].out_features,
                "side_width": linears[0].in_features - int(merged.encoder.config.hidden_size)}

    # ------------------------------------------------------------------------------------------ internals
    def _trainable_in_mode(self, name: str) -> bool:
        if not name.startswith("encoder."):
            return True
        return self.finetune == "full" or (self.finetune == "lora" and "lora_" in name)

    def _encoder_trainable(self, on: bool) -> None:
        for name, param in self.encoder.named_parameters():
            param.requires_grad_(on and self._trainable_in_mode(f"encoder.{name}"))

    def _depth(self, name: str) -> int:
        """0 for embeddings, i + 1 for encoder layer i, L + 1 for the head and anything outside the encoder."""
        if not name.startswith("encoder."):
            return self.n_layers + 1
        found = re.search(r"\.layers?\.(\d+)\.", name)
        if found:
            return int(found.group(1)) + 1
        return 0 if "embed" in name else self.n_layers + 1


class _Top(nn.Module):
    """forward(pooled (B, D), *side inputs) -> (B, n_outputs): the model's own dropout and head (the same
    parameters, so training this trains the model)."""

    def __init__(self, model: PretrainedClassifier):
        super().__init__()
        self.dropout, self.head = model.dropout, model.head

    def forward(self, pooled: torch.Tensor, *side: torch.Tensor) -> torch.Tensor:
        return _on_head(self.dropout, self.head, pooled, list(side))


def _on_head(dropout: nn.Module, head: nn.Module, pooled: torch.Tensor, side: list[torch.Tensor]) -> torch.Tensor:
    """The pooled encoding (B, D) with the side inputs beside it -> (B, n_outputs): dropout, then the head."""
    parts = [pooled, *(x.flatten(1) for x in side)]
    return head(dropout(torch.cat(parts, dim=1) if len(parts) > 1 else pooled))


@dataclass
class FrozenEncoder:
    """A model's frozen encoder as a feature extractor, and the module trained on its features."""

    pooled: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # tokens, mask (B, T) -> (B, D), deterministic in eval
    top: nn.Module  # forward(pooled, *side inputs) -> the model's outputs
    identity: dict[str, str]  # what the features depend on besides the tokens (cache key)
    tokens: int  # positions of tokens, attention_mask and the side inputs among the model's inputs
    mask: int
    side: list[int]
