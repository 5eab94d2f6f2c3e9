"""docs/config.md documents every config key (with its default), and every example config is valid.

The keys are found by walking the pydantic models from `Config`: sections recurse, `data.features` (a
mapping of column name or glob -> FeatureConfig) is written `data.features.<column>.<key>`, and each
variant of the discriminated `model` union contributes its own `model.<key>` paths.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any, Union

import pytest
import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined, to_jsonable_python

from modelfoundry.config import Config, load_config
from modelfoundry.config.paths import unwrap as _unwrap  # the same unwrapping the config errors use

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "config.md"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
PLACEHOLDER = "<column>"  # stands for a key of a mapping of sections (data.features.<column>.type)
PLACEHOLDERS = {"tune.space": "<path>", "compress.guard": "<metric>"}  # mappings whose keys are not column names: tune.space.<path>.low
REFERENCES = {"compress.distill.student"}  # sections of an already documented kind (a `model:` section)
SECTIONS = tuple(Config.model_fields)


# --------------------------------------------------------------------------------------- the models
def _nested(tp: Any) -> list[tuple[tuple[str, ...], type[BaseModel]]]:
    """The models reachable inside a field type, each with the path segments in between."""
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [((), tp)]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):  # e.g. the model variants, or Literal[...] | dict[...]
        return [found for arg in args for found in _nested(arg)]
    if origin is dict:
        return [((PLACEHOLDER, *segments), model) for segments, model in _nested(args[1])]
    if origin in (list, tuple, set, frozenset):
        return [found for arg in args if arg is not Ellipsis for found in _nested(arg)]
    return []


def _fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, type[BaseModel], str]]:
    """(dotted path, owning model, field name) for every field reachable from `model`."""
    out = []
    for name, info in model.model_fields.items():
        path = (*prefix, name)
        out.append((".".join(path), model, name))
        if ".".join(path) in REFERENCES:
            continue
        for segments, sub in _nested(info.annotation):
            key = PLACEHOLDERS.get(".".join(path), PLACEHOLDER)
            segments = tuple(key if s == PLACEHOLDER else s for s in segments)
            if segments:  # the mapping's own entry, data.features.<column>, is a documented key too
                out.append((".".join((*path, *segments)), model, name))
            out += _fields(sub, (*path, *segments))
    return out


FIELDS = _fields(Config)
PATHS = {path for path, _, _ in FIELDS}


def test_the_walk_reaches_every_kind_of_section():
    expected = {"name", "seed", "data.source", "data.features", "data.features.<column>",
                "data.features.<column>.type", "data.features.<column>.shape", "data.clean.outliers.factor",
                "data.split.seed", "data.balance.class_weights", "model.name", "model.hidden", "model.channels",
                "model.kernel_size", "model.residual", "model.pool", "training.optimizer.betas",
                "training.scheduler.warmup_epochs", "training.early_stopping.monitor",
                "training.checkpoint.min_interval_s", "evaluation.top_k", "output.dir"}
    assert expected <= PATHS, sorted(expected - PATHS)


# ---------------------------------------------------------------------------------------------- the docs
def _docs() -> str:
    assert DOCS.is_file(), f"{DOCS} is missing"
    return DOCS.read_text(encoding="utf-8")


def _code_spans(text: str) -> set[str]:
    return set(re.findall(r"`([^`\n]+)`", text))


@pytest.mark.parametrize("path", sorted(PATHS))
def test_every_config_key_is_documented(path):
    assert path in _code_spans(_docs()), f"docs/config.md does not document `{path}`"


def test_docs_name_no_key_that_does_not_exist():
    pattern = re.compile(rf"(?:{'|'.join(SECTIONS)})(?:\.[A-Za-z0-9_<>]+)+")
    documented = {span for span in _code_spans(_docs()) if pattern.fullmatch(span)}
    stale = sorted(documented - PATHS)
    assert not stale, f"docs/config.md names keys that Config does not have: {stale}"


def _table_rows(text: str):
    """(heading, {column header: cell}) for every row of every markdown table."""
    heading, header, lines = "", None, text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#"):
            heading, header = line, None
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if header is None:
            header = [c.lower() for c in cells]
        elif not re.fullmatch(r"[\s:|-]+", line):
            yield heading, dict(zip(header, cells))


def _variant(section: type[BaseModel]) -> str:
    """The model name a `model:` section class (or a section nested in one, such as its `lora`) belongs to."""
    from modelfoundry.models import MODELS

    if "name" in section.model_fields:
        return section.model_fields["name"].annotation.__args__[0]
    for entry in MODELS.values():
        if any(field.annotation is section for field in entry.config.model_fields.values()):
            return entry.config.model_fields["name"].annotation.__args__[0]
    raise AssertionError(f"{section.__name__} is not a model section or nested in one")


def _owner(path: str, heading: str) -> tuple[type[BaseModel], str]:
    """The model and field a documented path belongs to; for `model.*`, the variant of the heading."""
    owners = [(model, name) for p, model, name in FIELDS if p == path]
    if path.startswith("model.") and len(owners) > 1:
        variant = [(model, name) for model, name in owners if _variant(model) in heading.lower()]
        assert len(variant) == 1, f"cannot tell which model variant the table under {heading!r} documents"
        return variant[0]
    assert len(owners) == 1, f"{path} belongs to several models: {owners}"
    return owners[0]


def test_every_model_in_the_table_has_its_own_section():
    from modelfoundry.models import MODELS

    missing = [name for name in MODELS if f"(`model.name: {name}`)" not in _docs()]
    assert not missing, f"docs/config.md has no '### ... (`model.name: NAME`)' section for {missing}"


def test_documented_defaults_match_the_code():
    checked = 0
    for heading, row in _table_rows(_docs()):
        if "key" not in row or "default" not in row:
            continue
        key = re.fullmatch(r"`([^`]+)`", row["key"])
        default = re.fullmatch(r"`([^`]*)`", row["default"])
        if key is None or key.group(1) not in PATHS:
            continue
        model, name = _owner(key.group(1), heading)
        if key.group(1).endswith((PLACEHOLDER, *PLACEHOLDERS.values())):
            continue
        info = model.model_fields[name]
        if default is None:  # prose such as "required" or "all defaults"
            if row["default"] == "required":
                assert info.is_required(), f"docs/config.md says `{key.group(1)}` is required; it is not"
            continue
        assert info.default is not PydanticUndefined, f"`{key.group(1)}` has no default, docs say {row['default']}"
        assert yaml.safe_load(default.group(1)) == to_jsonable_python(info.default), (
            f"docs/config.md gives `{key.group(1)}` the default {default.group(1)}; {model.__name__}.{name} "
            f"in {model.__module__} has {info.default!r}")
        checked += 1
    assert checked >= 60, f"only {checked} documented defaults were found to check"


def test_the_worked_example_in_the_docs_is_a_valid_config(tmp_path):
    block = re.search(r"```yaml\n(.*?)```", _docs(), re.S)
    assert block, "docs/config.md has no ```yaml example"
    path = tmp_path / "example.yaml"
    path.write_text(block.group(1), encoding="utf-8")
    load_config(path)


# -------------------------------------------------------------------------------------------- the examples
def test_there_are_examples():
    assert EXAMPLES, "examples/*.yaml is empty"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_says_how_to_run_it_and_is_valid(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    config = load_config(path)
    command = "tune" if config.tune is not None else "run"  # a config with a search space is made to be tuned
    assert first == f"# foundry {command} examples/{path.name}", f"{path.name} starts with {first!r}"
