"""`generate`: text from a language model - a trained causal-LM run, a registered one, or a base - one
prompt at a time or as a conversation (`Chat`) that keeps its history within the model's context."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelfoundry.errors import ConfigError, ModelNotFound, RunDirError, did_you_mean

if TYPE_CHECKING:
    from modelfoundry.models.generation import SamplingParams
    from modelfoundry.models.llm import LanguageModel


def language_model(ref: str, dtype: str = "float32", uri: str | None = None) -> LanguageModel:
    """The language model `ref` names, ready to generate.

    Args:
        ref: a run directory of a trained causal LM, a registered model (NAME, NAME/VERSION, NAME@ALIAS), a
            base's short name (smollm2-135m), a local Hugging Face causal-LM directory or a .gguf file.
        dtype: the weights' dtype: float32, bfloat16 or float16.
        uri: the MLflow tracking URI of the registry (registered references only).

    Raises:
        RunDirError: `ref` is a run of another kind of model (those take `foundry predict`), or is incomplete.
        ModelNotFound: no such registered model, version or alias.
        ConfigError: an unknown base or dtype.
    """
    from modelfoundry.models.llm import load_base_language_model
    from modelfoundry.models.llm_base import DTYPES

    if dtype not in DTYPES:
        raise ConfigError(f"The 'dtype' parameter must be one of {', '.join(DTYPES)}. Got {dtype!r} instead.")
    path = Path(ref).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return load_base_language_model(str(path), dtype)
    from modelfoundry.models.llm_base import SHORT_NAMES
    from modelfoundry.registry import REF

    if not path.exists() and ref not in SHORT_NAMES and not REF.match(ref):
        raise RunDirError(f"'{ref}' is neither a run directory, a registered model, a base's short name "
                          f"({', '.join(SHORT_NAMES)}) nor a model directory.{did_you_mean(ref, SHORT_NAMES)}",
                          "Pass a run directory of a trained language model, NAME, NAME/VERSION or NAME@ALIAS, "
                          "smollm2-135m, or a local Hugging Face causal-LM directory.")
    from modelfoundry.serve.store import store_for

    store = store_for(str(ref), uri, dtype=dtype)
    try:
        is_language = store.serves_language_model
    except ModelNotFound as exc:  # a short name mistyped reads as a registered model's name
        raise ModelNotFound(f"{exc.message}{did_you_mean(ref, SHORT_NAMES)}", exc.hint) from None
    if not is_language:
        raise RunDirError(f"'{ref}' is not a language model (its config's model is not `name: llm`), so it "
                          "does not generate text.", f"Use `foundry predict {ref} FILE` for it.")
    return store.load().language


def sampling_params(max_new_tokens: int = 128, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                    repetition_penalty: float = 1.0, stop: list[str] | tuple[str, ...] = (),
                    seed: int | None = None) -> SamplingParams:
    """Checked SamplingParams (a ConfigError naming the bad option and its range otherwise)."""
    from modelfoundry.models.generation import SamplingParams

    return SamplingParams(max_new_tokens, temperature, top_k, top_p, repetition_penalty, tuple(stop), seed).check()


def prompt_tokens(lm: LanguageModel, prompt: str, raw: bool = False, system: str | None = None) -> list[int]:
    """Token ids of one prompt: as it is with `raw`, else a user message in the model's chat template (after
    `system`, or the model's own system message)."""
    if raw:
        return lm.tokenizer(prompt)["input_ids"]
    return lm.prompt_ids(_with_system([{"role": "user", "content": prompt}], system))


def generate_text(lm: LanguageModel, prompt: str, params: SamplingParams, raw: bool = False,
                  system: str | None = None) -> Iterator[str]:
    """Stream the answer to one prompt, piece by piece (see models.generation.generate)."""
    from modelfoundry.models.generation import generate

    return generate(lm, prompt_tokens(lm, prompt, raw, system), params)


def _with_system(messages: list[dict[str, str]], system: str | None) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, *messages] if system else messages


@dataclass
class Chat:
    """A conversation with a language model: each `ask` sends the history plus the new message and streams the
    answer, which joins the history once it is complete. When the history no longer fits the context (with
    room for `params.max_new_tokens`), the oldest exchanges are left out of the prompt."""

    lm: Any  # LanguageModel
    params: Any  # SamplingParams
    system: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)
    dropped: int = 0  # exchanges left out of the prompt so far (too long for the context)

    def ask(self, text: str) -> Iterator[str]:
        """Stream the answer to the user message `text`."""
        from modelfoundry.models.generation import generate

        turn = [*self.history, {"role": "user", "content": text}]
        ids = self.lm.prompt_ids(_with_system(turn, self.system))
        while len(ids) + self.params.max_new_tokens > self.lm.context_length and len(turn) > 1:
            turn = turn[2:]  # the oldest user message and its answer
            self.dropped += 1
            ids = self.lm.prompt_ids(_with_system(turn, self.system))
        return self._answer(turn, generate(self.lm, ids, self.params))

    def _answer(self, turn: list[dict[str, str]], pieces: Iterator[str]) -> Iterator[str]:
        answer = []
        for piece in pieces:
            answer.append(piece)
            yield piece
        self.history = [*turn, {"role": "assistant", "content": "".join(answer)}]  # only a complete exchange

    def reset(self) -> None:
        """Forget the conversation."""
        self.history = []
        self.dropped = 0
