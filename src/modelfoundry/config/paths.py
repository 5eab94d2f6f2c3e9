"""Dotted config paths (`training.optimizer.lr`, `model.hidden.0`): set a value, find the key's type, and say
why a path names no key. Used by `Config.with_params`, the tune search-space checks and the error messages."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel

from modelfoundry.errors import did_you_mean


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set `value` at a dotted path in a nested dict (list items by index: `model.hidden.0`)."""
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        if isinstance(node, list):
            node = node[int(part)]
        else:
            if node.get(part) is None:  # an unset optional section (early_stopping: null) gets its defaults
                node[part] = {}
            node = node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def path_problem(config: BaseModel, parts: list[str]) -> str | None:
    """Why `parts` names no field of `config`, or None."""
    node: Any = config
    for i, part in enumerate(parts):
        here = ".".join(parts[:i]) or "the top level"
        if isinstance(node, BaseModel):
            fields = list(type(node).model_fields)
            if part not in fields:
                return f"not a config key: {here} has no '{part}'.{did_you_mean(part, fields)} It has: {', '.join(fields)}."
            node = getattr(node, part)
            if node is None:  # an unset optional section: check the rest against its defaults
                node = default_instance(config, parts[:i + 1])
        elif isinstance(node, dict):
            if part not in node:
                return (f"not a config key: {here} has no '{part}' (it holds "
                        f"{', '.join(map(str, node)) or 'nothing'}).")
            node = node[part]
        elif isinstance(node, (list, tuple)):
            if not part.isdigit() or int(part) >= len(node):
                return (f"not a config key: {here} is a list of {len(node)}; use an index below {len(node)}, or "
                        "tune the whole list as a categorical of lists.")
            node = node[int(part)]
        else:
            return f"not a config key: {here} is a value, not a section."
    if isinstance(node, BaseModel):
        return f"this is a whole section; tune one of its keys ({', '.join(type(node).model_fields)})."
    return None


def default_instance(config: BaseModel, parts: list[str]) -> Any:
    """An instance with defaults of the (unset, optional) section at `parts`."""
    annotation = unwrap(annotation_at(config, parts))
    return annotation() if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def annotation_at(config: BaseModel, parts: list[str]) -> Any:
    """The type annotation of the key at `parts` in `config` (None inside free-form mappings)."""
    node: Any = config
    annotation: Any = None
    for part in parts:
        if isinstance(node, BaseModel):
            annotation = type(node).model_fields[part].annotation
            node = getattr(node, part)
        elif isinstance(node, dict):
            annotation, node = None, node.get(part)
        elif isinstance(node, (list, tuple)):
            args = typing.get_args(unwrap(annotation)) if annotation is not None else ()
            annotation, node = (args[0] if args else None), node[int(part)]
        if node is None and annotation is not None:
            inner = unwrap(annotation)
            node = inner() if isinstance(inner, type) and issubclass(inner, BaseModel) else None
    return annotation


def fields_at(root: type[BaseModel], loc: tuple) -> list[str]:
    """The allowed keys of the section at `loc` below `root` (pydantic's own loc, discriminator tags included)."""
    tp: Any = root
    for part in loc:
        tp = unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(part)
            if field is None:
                return []
            tp = field.annotation
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        elif typing.get_origin(tp) is list:
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) in (Union, types.UnionType):  # discriminated union: part is the tag
            members = [m for m in typing.get_args(tp) if typing.get_args(m.model_fields["name"].annotation)
                       == (part,)]
            if not members:
                return []
            tp = members[0]
    tp = unwrap(tp)
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def unwrap(tp: Any) -> Any:
    """Strip Annotated[...] and Optional[...] around a type."""
    while True:
        if typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp
