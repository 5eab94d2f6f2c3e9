"""Config problems as sentences for people: the dotted key, its line in the YAML file, what was wrong and
the choices (with a did-you-mean) — one line per pydantic error."""

from __future__ import annotations

import re
from typing import Any

from modelfoundry.config.model import model_names
from modelfoundry.config.paths import fields_at
from modelfoundry.config.schema import Config
from modelfoundry.errors import did_you_mean, unknown_name


def describe(err: dict[str, Any], lines: dict[tuple, int]) -> str:
    """One pydantic error as `key (line N): what is wrong`."""
    loc = display_loc(err["loc"])
    kind, ctx, value = err["type"], err.get("ctx", {}), err.get("input")
    if kind == "extra_forbidden":
        allowed = fields_at(Config, err["loc"][:-1])
        msg = f"unknown key.{did_you_mean(loc[-1], allowed)}"
        if allowed:
            msg += f" Allowed here: {', '.join(allowed)}."
    elif kind == "union_tag_invalid":
        loc = loc + ("name",)
        msg = unknown_name("model", ctx.get("tag"), re.findall(r"'([^']+)'", ctx.get("expected_tags", "")))
    elif kind == "union_tag_not_found":
        loc = loc + ("name",)
        msg = f"required key is missing; choose a model: {', '.join(model_names())}."
    elif kind == "literal_error":
        choices = re.findall(r"'([^']*)'", ctx.get("expected", ""))
        msg = f"got '{value}'.{did_you_mean(value, choices)} Choose one of: {', '.join(choices)}."
    elif kind == "missing":
        msg = "required key is missing."
    else:
        text = err["msg"].removeprefix("Value error, ")
        msg = text[0].lower() + text[1:]
        if kind not in {"value_error", "assertion_error"} and not isinstance(value, dict):
            msg += f"; got {value!r}"
        msg += "." if not msg.endswith(".") else ""
    path = ".".join(str(p) for p in loc) or "(top level)"
    line = line_of(loc, lines)
    return f"{path}{f' (line {line})' if line else ''}: {msg}"


def display_loc(loc: tuple) -> tuple:
    """Drop the discriminator tag pydantic inserts (('model', 'mlp', 'hidden') -> ('model', 'hidden'))."""
    if len(loc) >= 2 and loc[0] == "model" and loc[1] in model_names():
        return (loc[0],) + tuple(loc[2:])
    return tuple(loc)


def line_of(loc: tuple, lines: dict[tuple, int]) -> int | None:
    """The YAML line of the key at `loc`, else of its nearest parent."""
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None
