"""The torch modules of a causal language model in training (models/llm.py builds them)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from modelfoundry.models.llm import LLMConfig, plain_model

IGNORE = -100  # the label of a position that carries no loss


class CausalLM(nn.Module):
    """A Hugging Face causal LM in training: hidden states out; the loss applies the output layer."""

    padding_invariant = True  # right padding: the loop trims columns no row uses

    def __init__(self, hf: nn.Module, config: LLMConfig, base: dict[str, Any]):
        super().__init__()
        self.hf, self.finetune, self._base = hf, config.finetune, base
        self.model_name, self.checkpointing = config.base, config.gradient_checkpointing

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # (B, T) each
        decoder = plain_model(self.hf).get_decoder()
        return decoder(input_ids=tokens, attention_mask=attention_mask, use_cache=False).last_hidden_state

    def training_loss(self) -> nn.Module:
        return CompletionLoss(plain_model(self.hf).get_output_embeddings())

    def saved_state(self) -> dict[str, torch.Tensor]:
        if self.finetune == "full":
            return self.state_dict()
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def load_saved_state(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.saved_state())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise KeyError(f"saved weights do not match the model (missing {missing[:3]}, unexpected {extra[:3]})")
        self.load_state_dict(state, strict=self.finetune == "full")

    def base_reference(self) -> dict[str, Any] | None:
        return None if self.finetune == "full" else dict(self._base)

    def generation_model(self) -> nn.Module:
        """The Hugging Face model for generation, in eval mode with the KV cache on; LoRA adapters are merged
        into the weights (the same outputs, no adapter cost per token). Call once: it ends training."""
        hf = self.hf.merge_and_unload() if hasattr(self.hf, "peft_config") else self.hf
        if self.checkpointing:
            disable = getattr(hf, "activation_checkpointing_disable", None) or hf.gradient_checkpointing_disable
            disable()
        hf.config.use_cache = True
        hf.requires_grad_(False)
        return hf.eval()


class CompletionLoss(nn.Module):
    """Cross-entropy of the next token where a label is (labels come shifted: labels[t] is the token after
    position t, or IGNORE); the output layer is applied at those positions only."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # (B, T, H), (B, T0 >= T)
        total, count, _ = self.totals(hidden, labels)
        return total / count.clamp(min=1)

    def totals(self, hidden: torch.Tensor, labels: torch.Tensor,
               correct: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(summed loss, labelled tokens, correctly predicted tokens if asked)."""
        labels = labels[:, :hidden.shape[1]]  # the batch may have been trimmed to its longest row
        keep = labels != IGNORE
        logits = self.head(hidden[keep]).float()  # (M, V)
        target = labels[keep]
        total = F.cross_entropy(logits, target, reduction="sum") if len(target) else hidden.sum() * 0.0
        hits = (logits.argmax(-1) == target).sum() if correct else None
        return total, keep.sum(), hits


class _HiddenStates(nn.Module):
    """forward(tokens, attention_mask) -> the last hidden states of a plain Hugging Face causal LM (what CausalLM
    gives in training), for measuring the loss of a model loaded for generation."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.hf.get_decoder()(input_ids=tokens, attention_mask=attention_mask, use_cache=False).last_hidden_state


def hidden_states(hf: nn.Module) -> nn.Module:
    return _HiddenStates(hf)
