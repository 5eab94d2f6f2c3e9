"""`foundry generate`: text from a language model, streamed to the terminal as it comes; `--chat` for a
conversation."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Annotated, Any

import typer

from modelfoundry.cli.console import friendly_errors
from modelfoundry.cli.options import UriOption

# control characters a model may produce (an escape sequence could rewrite the terminal): shown as nothing,
# except newline and tab
_UNPRINTABLE = {c: None for c in [*range(9), *range(11, 32), 127, *range(0x80, 0xA0)]}
CHAT_HELP = "Chat: type a message; /reset forgets the conversation, /exit (or end of input) quits."


@friendly_errors
def generate(model: Annotated[str, typer.Argument(help="A language model: a run directory or registered model "
                                                  "(NAME, NAME/VERSION, NAME@ALIAS) of a trained causal LM, a "
                                                  "base's short name (smollm2-135m) or a local Hugging Face "
                                                  "directory.", show_default=False)],
             prompt: Annotated[str | None, typer.Argument(help="The prompt (a user message in the model's "
                                                             "chat template, unless --raw).",
                                                             show_default=False)] = None,
             max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Most tokens to generate.")]
             = 128,
             temperature: Annotated[float, typer.Option("--temperature", help="0: greedy; higher: more varied "
                                                        "(up to 2).")] = 0.0,
             top_k: Annotated[int, typer.Option("--top-k", help="Sample from the k likeliest tokens (0: all).")]
             = 0,
             top_p: Annotated[float, typer.Option("--top-p", help="Sample from the likeliest tokens holding this "
                                                  "much probability (1: all).")] = 1.0,
             repetition_penalty: Annotated[float, typer.Option("--repetition-penalty", help="Above 1: tokens "
                                                               "already seen become less likely.")] = 1.0,
             stop: Annotated[list[str] | None, typer.Option("--stop", help="A string that ends the answer "
                                                               "(not shown); repeatable.", show_default=False)]
             = None,
             seed: Annotated[int | None, typer.Option("--seed", help="Sampling seed: the same seed gives the "
                                                         "same text.", show_default=False)] = None,
             dtype: Annotated[str, typer.Option("--dtype", help="Weights' dtype: float32 or bfloat16.")]
             = "float32",
             system: Annotated[str | None, typer.Option("--system", help="A system message before the "
                                                           "prompt (default: the model's own).",
                                                           show_default=False)] = None,
             raw: Annotated[bool, typer.Option("--raw", help="Continue the prompt as it is, without the chat "
                                               "template.")] = False,
             chat: Annotated[bool, typer.Option("--chat", help="A conversation: read messages from standard "
                                                "input, one per line, answering each.")] = False,
             uri: UriOption = None) -> None:
    """Generate text with a language model, streamed as it comes."""
    from modelfoundry.api.generation import (
        Chat,
        generate_text,
        language_model,
        sampling_params,
    )
    from modelfoundry.errors import ConfigError

    if chat and raw:
        raise ConfigError("--chat and --raw do not go together: a conversation uses the chat template.",
                          "Drop --raw (or --chat).")
    if not chat and prompt is None:
        raise ConfigError("No prompt given.", f'Pass one: `foundry generate {model} "Hello"`, or use --chat.')
    params = sampling_params(max_new_tokens, temperature, top_k, top_p, repetition_penalty, stop or (), seed)
    lm = language_model(model, dtype, uri)
    if not chat:
        _show(generate_text(lm, prompt, params, raw=raw, system=system))
        return
    conversation = Chat(lm, params, system)
    if prompt is not None:
        _show(conversation.ask(prompt))
    _converse(conversation)


def _converse(conversation: Any) -> None:
    """Read user lines until end of input or /exit, answering each."""
    interactive = sys.stdin.isatty()
    if interactive:
        print(CHAT_HELP, file=sys.stderr)
    while True:
        try:
            line = input("> ") if interactive else sys.stdin.readline()
        except EOFError:
            break
        if not interactive and not line:  # end of input
            break
        line = line.strip()
        if not interactive:
            print(f"> {line}", flush=True)  # the transcript reads like the terminal session
        if line == "/exit":
            break
        if line == "/reset":
            conversation.reset()
            print("(conversation reset)", flush=True)
        elif line:
            _show(conversation.ask(line))


def _show(pieces: Iterable[str]) -> None:
    """Write each piece as it comes, without control characters; one newline at the end."""
    out = sys.stdout
    if hasattr(out, "reconfigure"):  # a pipe with an ASCII locale must not end the answer with an error
        out.reconfigure(errors="replace")
    for piece in pieces:
        out.write(piece.translate(_UNPRINTABLE))
        out.flush()
    out.write("\n")
    out.flush()
