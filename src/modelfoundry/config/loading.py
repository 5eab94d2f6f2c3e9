"""Loading a config from YAML (with the line of every key, for error messages), writing the resolved config
back, and its content hash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from modelfoundry.config.messages import describe
from modelfoundry.config.schema import Config
from modelfoundry.config.search_space import partial_tune_problems, tune_problems
from modelfoundry.errors import ConfigError

MAX_CONFIG_VALUES = 1_000_000  # a config holds hundreds; aliases of aliases can expand to billions


def load_config(source: str | Path | dict[str, Any]) -> Config:
    """Load and validate a config from a YAML path or a dict; raise ConfigError listing every problem."""
    if isinstance(source, dict):
        return _validate(source, origin="config", lines={})
    path = Path(source)
    if not path.is_file():
        what = "is a directory, not a YAML file" if path.is_dir() else \
            "is not a regular file" if path.exists() else "does not exist"
        raise ConfigError(f"Config file '{path}' {what}.",
                          "Check the path; the examples/ folder has ready configs (examples/digits.yaml).")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path} is not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at line {line} cannot "
                          "be decoded.", "Save the config as UTF-8 (most editors have an encoding option).") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and _expanded_size(node, {}) > MAX_CONFIG_VALUES:
            raise ConfigError(f"{path} expands to more than {MAX_CONFIG_VALUES:,} values (YAML aliases that "
                              "repeat aliases), far more than any config holds.",
                              "Write the values out, or use anchors (&name / *name) only for a few sections.")
        lines = _key_lines(node) if node is not None else {}
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}.",
                          "Check indentation and that each 'key: value' has a space after the colon.") from None
    except RecursionError:
        raise ConfigError(f"{path} is nested too deeply to read (more than a few hundred levels).",
                          "A config is a few levels deep (section: key: value); check for runaway brackets "
                          "or indentation.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (name, data, model, training, ...), "
                          f"got {type(data).__name__}.", "See docs/config.md for the layout.")
    return _validate(data, origin=str(path), lines=lines)


def dump_config(config: Config) -> str:
    """The fully resolved config (every default filled in) as YAML; no `tune: null` when there is no search."""
    return yaml.safe_dump(config.model_dump(mode="json", exclude={"tune"} if config.tune is None else None),
                          sort_keys=False, allow_unicode=True)


def config_hash(config: Config) -> str:
    """A short content hash of the resolved config, stable across key order. The `tune:`, `compress:`,
    `serve:` and `monitor:` sections are left out: they do not change what a run trains."""
    canonical = json.dumps(config.model_dump(mode="json", exclude={"tune", "compress", "serve", "monitor"}),
                           sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _validate(data: dict[str, Any], origin: str, lines: dict[tuple, int]) -> Config:
    try:
        config = Config.model_validate(data)
        problems = tune_problems(config, config.tune.space if config.tune else {}, lines)
    except ValidationError as exc:
        config = None
        problems = [describe(err, lines) for err in exc.errors()]
        problems += partial_tune_problems(data, lines)
    if not problems:
        return config
    noun = "problem" if len(problems) == 1 else "problems"
    body = "\n".join(f"  - {p}" for p in problems)
    raise ConfigError(f"{origin}: {len(problems)} {noun} in the config:\n{body}",
                      "Every key is documented in docs/config.md; `foundry validate CONFIG` re-checks.")


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many nodes a composed document holds once every alias is expanded (each shared node counted
    once per use, computed once per node)."""
    if id(node) not in sizes:
        children = node.value if isinstance(node, yaml.SequenceNode) else \
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
        sizes[id(node)] = 1 + sum(_expanded_size(child, sizes) for child in children)
    return sizes[id(node)]


def _key_lines(node: yaml.Node, prefix: tuple = ()) -> dict[tuple, int]:
    """Map each key path in a composed YAML document to its 1-based line number.

    A key given twice in one mapping is an error naming both lines: YAML loaders keep the last silently.
    """
    out: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        seen: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):  # a list or mapping as a key: the loader reports it
                continue
            path = prefix + (key.value,)
            line = key.start_mark.line + 1
            if (key.tag, key.value) in seen and key.tag != "tag:yaml.org,2002:merge":
                dotted = ".".join(str(p) for p in path)
                raise ConfigError(f"'{dotted}' is given twice, at lines {seen[key.tag, key.value]} and {line}; "
                                  "YAML would silently keep only the second.",
                                  "Delete one of the two (or merge them into one section).")
            seen[key.tag, key.value] = line
            out[path] = line
            out.update(_key_lines(value, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[prefix + (i,)] = item.start_mark.line + 1
            out.update(_key_lines(item, prefix + (i,)))
    return out
