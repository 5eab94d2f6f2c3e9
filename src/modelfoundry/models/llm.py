"""Causal language models (`model: {name: llm, base: smollm2-135m}`), fine-tuned in full, with LoRA, or with
all but chosen layers frozen.

Training sees `CausalLM`: forward(tokens, attention_mask) -> the last hidden states (B, T, H), and its
`training_loss()` applies the output layer only where a label is (the completion tokens): with 49k-token
vocabularies the output layer is ~20% of the model's compute and its (B, T, V) logits most of the
activation memory, and prompt positions need neither. Generation and serving see `LanguageModel`: the
Hugging Face model (adapters merged in), its tokenizer and chat template.

A LoRA or frozen model saves only what it trained (`saved_state()`: the adapters are MBs, not the base), and
records the base's identity and sha256 (`base_reference()`), which loading checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from modelfoundry.config.base import Section
from modelfoundry.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from modelfoundry.artifacts.inputs import InputSpec

class LLMLoRAConfig(Section):
    r: int = Field(16, ge=1, le=1024)  # the adapters' rank
    alpha: float = Field(32.0, gt=0)  # scaling: the update is (alpha / r) * B A
    dropout: float = Field(0.05, ge=0, lt=1)
    # all-linear: every linear layer of the blocks (attention and MLP projections), not the output layer
    target_modules: Literal["all-linear"] | list[str] = "all-linear"


class LLMConfig(Section):
    name: Literal["llm"]
    base: str = "smollm2-135m"  # a short name, a local Hugging Face causal-LM directory, or a .gguf file
    finetune: Literal["full", "lora", "freeze"] = "lora"
    lora: LLMLoRAConfig = LLMLoRAConfig()
    # freeze: the transformer blocks that train (0 is the first, -1 the last); the rest stay as they are
    trainable_layers: list[int] = [-1]
    train_head: bool = False  # freeze: also train the output layer (often tied to the input embeddings)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~30% slower
    dtype: Literal["float32", "bfloat16"] = "float32"  # the weights' dtype (bfloat16 halves their memory)

    @model_validator(mode="after")
    def _check(self) -> LLMConfig:
        if self.finetune == "freeze" and not self.trainable_layers and not self.train_head:
            raise ValueError("finetune: freeze with no trainable_layers and train_head: false trains nothing; "
                             "name layers (for example trainable_layers: [-1]) or set train_head: true")
        return self


def build_llm(config: LLMConfig, inputs: InputSpec, n_outputs: int) -> nn.Module:
    """The base model of `config.base`, prepared for its fine-tuning mode."""
    from modelfoundry.models.llm_base import load_causal_lm, resolve_base

    if "tokens" not in inputs.names or "attention_mask" not in inputs.names:
        raise ConfigError("model llm reads token ids and their attention mask; the data has inputs "
                          f"{', '.join(inputs.names)}.", "Set data.task: causal_lm (see data.lm).")
    base = resolve_base(config.base)
    hf = load_causal_lm(base, config.dtype)
    limit = getattr(hf.config, "max_position_embeddings", None) or getattr(hf.config, "n_positions", None)
    length = inputs["tokens"].shape[0]
    if limit is not None and length > limit:
        raise ConfigError(f"data.lm.max_length gives examples of {length} tokens, more than model {config.base} "
                          f"takes ({limit}).", f"Set data.lm.max_length: {limit} or less.")
    from modelfoundry.models.llm_module import CausalLM

    return CausalLM(prepare_finetuning(hf, config), config, base.identity())


def prepare_finetuning(hf: nn.Module, config: LLMConfig) -> nn.Module:
    """`hf` with the parameters of the fine-tuning mode trainable (LoRA adapters added), the rest frozen."""
    hf.config.use_cache = False  # training: no KV cache
    if config.finetune == "lora":
        from peft import LoraConfig, get_peft_model

        target = config.lora.target_modules
        try:
            hf = get_peft_model(hf, LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha,
                                               lora_dropout=config.lora.dropout, target_modules=target,
                                               bias="none", task_type="CAUSAL_LM"))
        except ValueError as exc:
            raise ConfigError(f"model.lora.target_modules {target} do not name layers of {config.base} "
                              f"({str(exc).splitlines()[0]}).", "Use all-linear, or names of its linear layers "
                              "(q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj for Llama).") from None
    elif config.finetune == "freeze":
        hf.requires_grad_(False)
        blocks = transformer_blocks(hf)
        for index in config.trainable_layers:
            if not -len(blocks) <= index < len(blocks):
                raise ConfigError(f"model.trainable_layers names layer {index}, but {config.base} has "
                                  f"{len(blocks)} (0 to {len(blocks) - 1}, or -1 to -{len(blocks)}).",
                                  "Pick layers in that range.")
            blocks[index].requires_grad_(True)
        if config.train_head:
            hf.get_output_embeddings().requires_grad_(True)
    if config.gradient_checkpointing:
        enable = getattr(hf, "activation_checkpointing_enable", None)  # transformers >= 5.2; the older name warns
        if callable(enable):
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return hf


def transformer_blocks(hf: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks of a causal LM (model.layers in Llama, transformer.h in GPT-2)."""
    from torch import nn

    stacks = [m for m in plain_model(hf).get_decoder().modules() if isinstance(m, nn.ModuleList)]
    if not stacks:
        raise ConfigError("Cannot find the transformer blocks of this model.", "Use finetune: lora or full.")
    return max(stacks, key=len)


def plain_model(hf: nn.Module) -> nn.Module:
    """The Hugging Face model under a peft wrapper (the same one, with LoRA layers in it), or `hf` itself."""
    getter = getattr(hf, "get_base_model", None)
    return getter() if callable(getter) and hasattr(hf, "peft_config") else hf


@dataclass
class LanguageModel:
    """What generation and serving use: a Hugging Face causal LM in eval mode and how it is prompted."""

    model: Any  # the Hugging Face causal LM (adapters merged), eval mode, KV cache on
    tokenizer: Any  # its fast tokenizer, with a pad token
    name: str  # what it is called: a run's name, a registered reference, or the base's short name
    template: str = "model"  # artifacts.chat TEMPLATES
    system: str | None = None  # the system message put before every prompt (data.lm.system of the run)
    identity: dict[str, Any] = field(default_factory=dict)  # the base's identity (+ the run, if any)

    @property
    def context_length(self) -> int:
        """Tokens the model reads at most (prompt + generated)."""
        cfg = self.model.config
        return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048)

    def stop_ids(self) -> list[int]:
        from modelfoundry.artifacts.chat import stop_token_ids

        return stop_token_ids(self.tokenizer, self.template)

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a chat prompt, ending where the assistant's answer begins."""
        from modelfoundry.artifacts.chat import prompt_ids

        return prompt_ids(self.tokenizer, messages, self.template, self.system)

    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())


def load_base_language_model(base: str, dtype: str = "float32", template: str = "model",
                             system: str | None = None) -> LanguageModel:
    """A base model (short name or local directory) as a LanguageModel, ready to generate."""
    from modelfoundry.models.llm_base import load_causal_lm, load_tokenizer, resolve_base

    resolved = resolve_base(base)
    model = load_causal_lm(resolved, dtype)
    model.config.use_cache = True
    return LanguageModel(model, load_tokenizer(resolved), base, template, system, resolved.identity())


def perplexity(loss: float) -> float:
    """exp(loss), capped where it would overflow."""
    return math.exp(min(loss, 700.0))
