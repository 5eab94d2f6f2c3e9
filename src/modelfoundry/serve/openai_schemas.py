"""The request bodies of the OpenAI-compatible routes (openai.py), read and checked into SamplingParams.

Every problem is a ConfigError (HTTP 400) naming the field: bad JSON or UTF-8, a wrong type, a value out of
range, max_tokens above the server's limit, a prompt that leaves no room in the context, an invalid chat
role. OpenAI fields this server does not implement are refused by name when they ask for something
(n: 2, logprobs: 5, ...), accepted when they hold their neutral value; a few harmless ones (user,
metadata, ...) are ignored. top_k and repetition_penalty are extensions.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from modelfoundry.errors import ConfigError, DataError
from modelfoundry.serve.payloads import parse_json

# OpenAI fields not implemented -> the values that ask for nothing (accepted)
NEUTRAL = {"n": (None, 1), "best_of": (None, 1), "logprobs": (None, False, 0), "top_logprobs": (None, 0),
           "echo": (None, False), "suffix": (None, ""), "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
           "logit_bias": (None, {}), "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []),
           "function_call": (None, "none"), "response_format": (None, {"type": "text"})}
IGNORED = ("user", "metadata", "store", "parallel_tool_calls", "service_tier")
HINT = ("See docs/serving.md (Language models): model, prompt or messages, max_tokens, temperature, top_p, top_k, "
        "repetition_penalty, stop, seed, stream, stream_options.")
COMPLETIONS_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat defaults to the server's limit


class _Generation(BaseModel):
    """The fields both routes share."""

    model_config = ConfigDict(extra="forbid", strict=True)
    default_max_tokens: ClassVar[int | None] = None  # None: the server's limit

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None  # OpenAI's default: 1
    top_p: float | None = None
    top_k: int | None = None  # extension
    repetition_penalty: float | None = None  # extension
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None

    def sampling(self, lm: Any, prompt_tokens: int, limit: int) -> Any:
        """The checked SamplingParams for a prompt of `prompt_tokens`; `limit` is serve.max_new_tokens."""
        from modelfoundry.models.generation import SamplingParams

        context = lm.context_length
        room = context - prompt_tokens
        if prompt_tokens == 0:
            raise ConfigError("The prompt is empty: there is nothing to continue from.", "Send a prompt.")
        wanted = self.max_tokens
        if wanted is not None and not 1 <= wanted <= limit:
            raise ConfigError(f"max_tokens must be between 1 and this server's limit of {limit} "
                              f"(serve.max_new_tokens). Got {wanted} instead.", f"Ask for at most {limit} tokens.")
        if room < 1 or (wanted is not None and wanted > room):
            asked = f" and max_tokens is {wanted}: {prompt_tokens + wanted} tokens in all," if wanted else ""
            raise ConfigError(f"The prompt has {prompt_tokens} tokens{asked} more than model {lm.name}'s context of "
                              f"{context} tokens (prompt and answer together)" + ("." if wanted else ", leaving no "
                                                                                  "room for an answer."),
                              "Shorten the prompt" + (f" or lower max_tokens (at most {room} with this prompt)."
                                                      if wanted and room >= 1 else "."))
        budget = wanted if wanted is not None else min(self.default_max_tokens or limit, limit, room)
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        params = SamplingParams(max_new_tokens=budget, temperature=_or(self.temperature, 1.0),
                                top_k=_or(self.top_k, 0), top_p=_or(self.top_p, 1.0),
                                repetition_penalty=_or(self.repetition_penalty, 1.0), stop=stop, seed=self.seed)
        return params.check(limit)


class CompletionRequest(_Generation):
    """POST /v1/completions: `prompt` is a string (or a list of one string, or of token ids)."""

    default_max_tokens: ClassVar[int | None] = COMPLETIONS_MAX_TOKENS
    prompt: str | list[str] | list[int]

    def prompt_ids(self, lm: Any) -> list[int]:
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
            vocabulary = len(lm.tokenizer)
            if not all(0 <= p < vocabulary for p in prompt):
                raise ConfigError(f"prompt: token ids must be between 0 and {vocabulary - 1}.", HINT)
            return list(prompt)
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ConfigError(f"prompt: one prompt per request, got a list of {len(prompt)}.",
                                  "Send several requests (they are batched together).")
            prompt = prompt[0]
        return lm.tokenizer(prompt)["input_ids"]


class ChatRequest(_Generation):
    """POST /v1/chat/completions: `messages` in the model's chat template, with its system message."""

    messages: list[Any]
    max_completion_tokens: int | None = None  # OpenAI's newer name for max_tokens

    def prompt_ids(self, lm: Any) -> list[int]:
        from modelfoundry.artifacts.chat import check_messages

        try:
            return lm.prompt_ids(check_messages([_plain(m) for m in self.messages], "messages"))
        except DataError as exc:
            raise ConfigError(exc.message, exc.hint) from None

    def sampling(self, lm: Any, prompt_tokens: int, limit: int) -> Any:
        if self.max_completion_tokens is not None and self.max_tokens is None:
            self.max_tokens = self.max_completion_tokens
        return super().sampling(lm, prompt_tokens, limit)


def _plain(message: Any) -> Any:
    """An OpenAI message as {role, content} strings: text parts joined, 'developer' read as 'system'."""
    if not isinstance(message, dict):
        return message
    content = message.get("content")
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        content = "".join(p["text"] for p in content)
    role = "system" if message.get("role") == "developer" else message.get("role")
    return {"role": role, "content": content}


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


async def read_request(request: Any, schema: type[_Generation]) -> Any:
    """The request's body as `schema`; a ConfigError (400) naming every problem otherwise."""
    try:
        payload = parse_json(await request.body(), request.headers.get("content-type"))
    except DataError as exc:
        raise ConfigError(exc.message, exc.hint) from None
    if not isinstance(payload, dict):
        raise ConfigError(f"The request body must be a JSON object, not {type(payload).__name__}.", HINT)
    refused = [f"{k}={_short(payload[k])}" for k, neutral in NEUTRAL.items()
               if k in payload and not any(_same(payload[k], v) for v in neutral)]
    if refused:
        raise ConfigError(f"Unsupported field value(s): {', '.join(refused)}. This server makes one answer per "
                          "request, without log probabilities, penalties other than repetition_penalty, tools "
                          "or response formats.", "Leave these fields out. " + HINT)
    known = set(schema.model_fields) | set(NEUTRAL) | set(IGNORED)
    unknown = [str(k)[:40] for k in payload if k not in known]
    if unknown:
        raise ConfigError(f"Unknown field(s): {', '.join(repr(k) for k in unknown[:5])}.", HINT)
    try:
        return schema.model_validate({k: v for k, v in payload.items() if k in schema.model_fields})
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5]]
        raise ConfigError("; ".join(problems) + ".", HINT) from None


def _same(value: Any, neutral: Any) -> bool:
    if neutral is None or isinstance(neutral, bool):
        return value is neutral
    if isinstance(neutral, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value == neutral
    return value == neutral


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
