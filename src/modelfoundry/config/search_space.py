"""Checks of a `tune.space` against the config it tunes: each dotted path must name a key a search may
change, and each bound (low, high, every choice) must give a valid config, so no trial fails on it."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from modelfoundry.config.messages import display_loc, line_of
from modelfoundry.config.paths import annotation_at, path_problem, unwrap
from modelfoundry.config.schema import Config
from modelfoundry.config.tune import FROZEN_PATHS, ParamSpace


def tune_problems(config: Config, spaces: dict[str, ParamSpace], lines: dict[tuple, int]) -> list[str]:
    """Path problems of each dimension (unknown, frozen, overlapping, invalid bounds), with YAML lines."""
    problems = []
    for path, space in spaces.items():
        line = line_of(("tune", "space", path), lines)
        overlap = [p for p in spaces if p != path and path.startswith(p + ".")]
        found = [f"overlaps {overlap[0]}, which is tuned too; keep one of the two."] if overlap else \
            space_problems(config, path, space)
        problems += [f"tune.space.{path}{f' (line {line})' if line else ''}: {p}" for p in found]
    return problems


def partial_tune_problems(data: dict[str, Any], lines: dict[tuple, int]) -> list[str]:
    """When the config has other errors, still check the paths of the well-formed dimensions against the
    rest of the config, so one run of `foundry validate` lists everything."""
    tune = data.get("tune")
    space = tune.get("space") if isinstance(tune, dict) else None
    if not isinstance(space, dict):
        return []
    try:
        config = Config.model_validate({k: v for k, v in data.items() if k != "tune"})
    except ValidationError:
        return []
    valid = {}
    for path, raw in space.items():
        try:
            valid[path] = ParamSpace.model_validate(raw)
        except ValidationError:
            continue
    return tune_problems(config, valid, lines)


def space_problems(config: Config, path: str, space: ParamSpace) -> list[str]:
    """What is wrong with tuning `path` over `space` on top of `config` (empty when nothing): a frozen or
    unknown path, or a bound (low, high, a choice) that does not give a valid config."""
    parts = path.split(".")
    for n in range(1, len(parts) + 1):
        reason = FROZEN_PATHS.get(".".join(parts[:n]))
        if reason:
            return [f"cannot be tuned: {reason}."]
    where = path_problem(config, parts)
    if where:
        return [where]
    annotation = unwrap(annotation_at(config, parts))
    if space.type == "float" and annotation is int:
        return ["this key takes whole numbers; use type: int."]
    problems = []
    for value in space.extremes():  # every bound must give a valid config, so no trial fails on it
        try:
            config.with_params({path: value})
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in display_loc(first["loc"]))
            problems.append(f"{json.dumps(value)} is not a valid value here ({field}: "
                            f"{first['msg'].removeprefix('Value error, ')}); narrow the range or change the base config.")
    return problems
