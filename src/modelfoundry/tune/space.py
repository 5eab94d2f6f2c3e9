"""A config's `tune.space` as Optuna sees it: suggestions, the grid, and the base config's own point.

Optuna stores categorical choices only as None/bool/int/float/str, so a space whose choices include
lists or mappings (`model.hidden: [[64], [128, 64]]`) is stored as JSON text and decoded here.
"""

from __future__ import annotations

import json
import math
from typing import Any

from modelfoundry.config import Config, ParamSpace

_PRIMITIVE = (type(None), bool, int, float, str)


def encoded_choices(space: ParamSpace) -> list[Any]:
    """The choices as Optuna stores them: as given when all are plain values, else each as JSON text."""
    choices = list(space.choices or [])
    if all(isinstance(c, _PRIMITIVE) for c in choices):
        return choices
    return [json.dumps(c) for c in choices]


def decode(space: ParamSpace, stored: Any) -> Any:
    """A value from Optuna's storage as the config value it stands for."""
    if space.type == "categorical" and encoded_choices(space) != list(space.choices or []):
        return json.loads(stored)
    return stored


def suggest(trial: Any, spaces: dict[str, ParamSpace]) -> dict[str, Any]:
    """Ask `trial` for one value per dimension; returns {dotted path: config value}."""
    params = {}
    for path, space in spaces.items():
        if space.type == "float":
            value = trial.suggest_float(path, space.low, space.high, step=space.step, log=space.log)
        elif space.type == "int":
            value = trial.suggest_int(path, int(space.low), int(space.high), step=int(space.step or 1), log=space.log)
        else:
            value = trial.suggest_categorical(path, encoded_choices(space))
        params[path] = decode(space, value)
    return params


def decoded(spaces: dict[str, ParamSpace], stored: dict[str, Any]) -> dict[str, Any]:
    """A trial's stored params as config values."""
    return {path: decode(spaces[path], value) for path, value in stored.items() if path in spaces}


def grid(spaces: dict[str, ParamSpace]) -> dict[str, list[Any]]:
    """Every point of each dimension, for the grid sampler (floats need a step; the config checks that)."""
    out: dict[str, list[Any]] = {}
    for path, space in spaces.items():
        if space.type == "categorical":
            out[path] = encoded_choices(space)
            continue
        step = space.step or 1
        count = int(math.floor((space.high - space.low) / step + 1e-9)) + 1
        values = [space.low + i * step for i in range(count)]
        out[path] = [int(v) for v in values] if space.type == "int" else [round(v, 12) for v in values]
    return out


def grid_size(spaces: dict[str, ParamSpace]) -> int:
    return math.prod(len(values) for values in grid(spaces).values())


def base_point(config: Config, spaces: dict[str, ParamSpace]) -> dict[str, Any] | None:
    """The base config's own value of every dimension, as Optuna stores it, when each lies in the space
    (so the search starts from the config as written); None otherwise."""
    data = config.model_dump(mode="json")
    point = {}
    for path, space in spaces.items():
        value: Any = data
        for part in path.split("."):
            value = value[int(part)] if isinstance(value, list) else (value or {}).get(part)
        if space.type == "categorical":
            if value not in (space.choices or []):
                return None
            point[path] = encoded_choices(space)[list(space.choices).index(value)]
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not space.low <= value <= space.high:
            return None
        if space.step and abs((value - space.low) / space.step - round((value - space.low) / space.step)) > 1e-9:
            return None
        point[path] = int(value) if space.type == "int" else float(value)
    return point
