"""Chat messages -> the text and token ids a causal language model reads, by a chat template (the contract
between the data stage, which trains on it, and generation and serving, which prompt with it).

Templates: `model` is the base's own (its tokenizer's chat_template, rendered by transformers' sandboxed
Jinja - no code from the model directory runs), `chatml` is `<|im_start|>role\\ncontent<|im_end|>\\n` per
message, `plain` is `content` lines for base models without chat tokens (a completion then ends in the
tokenizer's end-of-sequence token). Training masks and served prompts both come from here, so a model is
prompted at serving time exactly as it was trained.
"""

from __future__ import annotations

from typing import Any

from modelfoundry.errors import DataError

TEMPLATES = ("model", "chatml", "plain")
ROLES = ("system", "user", "assistant")


def check_messages(messages: Any, origin: str) -> list[dict[str, str]]:
    """`messages` as a list of {role, content} dicts of strings with known roles; a DataError naming `origin`
    and what is wrong otherwise."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise DataError(f"{origin}: messages must be a non-empty list of {{role, content}} objects, got "
                        f"{type(messages).__name__}.", 'Write them as [{"role": "user", "content": "..."}, ...].')
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise DataError(f"{origin}: message {i} is not an object with string 'role' and 'content' fields.",
                            'Write each message as {"role": "user", "content": "..."}.')
        if message["role"] not in ROLES:
            raise DataError(f"{origin}: message {i} has role {message['role']!r}; roles are "
                            f"{', '.join(ROLES)}.", "Rename the role (for example 'human' -> 'user').")
        checked.append({"role": message["role"], "content": message["content"]})
    return checked


def render(tokenizer: Any, messages: list[dict[str, str]], template: str, add_generation_prompt: bool) -> str:
    """The text of `messages` in `template`; with `add_generation_prompt`, ending where the assistant's answer
    begins. A finished assistant turn ends with the end-of-turn token (chat templates) or the tokenizer's
    end-of-sequence token (`plain`)."""
    if template == "model":
        if not getattr(tokenizer, "chat_template", None):
            raise DataError("The base model's tokenizer has no chat template (data.lm.template: model).",
                            "Set data.lm.template: chatml (ChatML markers) or plain (no markers).")
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    if template == "chatml":
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")
    if template == "plain":
        parts = []
        for m in messages:
            parts.append(m["content"] + ("\n" if m["role"] != "assistant" else (tokenizer.eos_token or "")))
        return "".join(parts)
    raise DataError(f"Unknown chat template {template!r}; templates are {', '.join(TEMPLATES)}.")


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]], template: str, system: str | None = None) -> list[int]:
    """Token ids of a prompt: `messages` (with `system` first unless they start with one), ending where the
    assistant's answer begins - what generation continues from."""
    if system and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": system}, *messages]
    text = render(tokenizer, messages, template, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def stop_token_ids(tokenizer: Any, template: str) -> list[int]:
    """The ids that end an answer: the end-of-sequence token, and `<|im_end|>` for ChatML-style templates."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if template in ("model", "chatml"):
        end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(end, int) and end != tokenizer.unk_token_id:
            ids.add(end)
    return sorted(ids)
