"""Property-based fuzzing of what users hand the CLI: mutated configs and mutated data files.

Whatever the mutation, the answer is a valid result or one FoundryError paragraph (which the CLI prints
without a traceback): never another exception. In-process and on tiny inputs, so it runs in seconds.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from modelfoundry.cli import app
from modelfoundry.config import check_task, dump_config, load_config
from modelfoundry.data.prepare import prepare_data
from modelfoundry.data.sources import load_source, read_table
from modelfoundry.errors import FoundryError
from tests.conftest import tiny_config

# fixed examples in CI; FOUNDRY_FUZZ_EXAMPLES=2000 explores new random ones
EXAMPLES = int(os.environ.get("FOUNDRY_FUZZ_EXAMPLES", "0"))
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=not EXAMPLES, database=None,
                max_examples=EXAMPLES or 100)
WORK = Path(tempfile.mkdtemp(prefix="foundry-fuzz-"))

# the fully resolved tiny config: every section and key is there to be deleted, retyped or misspelt
BASE: dict[str, Any] = yaml.safe_load(dump_config(load_config(tiny_config())))
KEYS = ["source", "target", "task", "features", "hidden", "epochs", "lr", "name", "type", "missing", "monitor",
        "val", "test", "patience", "batch_size", "class_weights", "optimiser", "x"]
LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10 ** 30, max_value=10 ** 30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["sklearn:iris", "sklearn:wine", "mlp", "cnn", "auto", "-1", "1e400", "nan", "[]", "{}"]),
    st.lists(st.integers(min_value=-3, max_value=10 ** 12), max_size=3),
    st.dictionaries(st.sampled_from(KEYS), st.integers(min_value=-2, max_value=5), max_size=2))


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += paths(value, prefix + (i,))
    return out


def mutate(config: dict[str, Any], op: str, path: tuple, key: str, leaf: Any) -> dict[str, Any]:
    config = copy.deepcopy(config)
    if not path:
        return {key: leaf} if op == "set" else config
    parent = config
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if op == "delete":
        del parent[last]
    elif op == "set":
        parent[last] = leaf
    elif isinstance(parent[last], dict):  # insert a key into a section
        parent[last][key] = leaf
    else:
        parent[last] = {key: leaf}
    return config


@st.composite
def mutated_configs(draw: Any) -> bytes:
    config = BASE
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        path = draw(st.sampled_from(paths(config)))
        config = mutate(config, draw(st.sampled_from(["delete", "set", "insert"])), path,
                        draw(st.sampled_from(KEYS) | st.text(max_size=6)), draw(LEAVES))
    text = yaml.safe_dump(config, allow_unicode=True).encode()
    if draw(st.integers(min_value=0, max_value=3)) == 0:  # garbage bytes: broken syntax, encodings, controls
        at = draw(st.integers(min_value=0, max_value=len(text)))
        text = text[:at] + draw(st.binary(max_size=8)) + text[at + draw(st.integers(min_value=0, max_value=4)):]
    return text


def check_error(exc: FoundryError) -> None:
    assert exc.message.strip() and "np." not in exc.message and "Traceback" not in str(exc), exc.message


def write(data: bytes, name: str) -> Path:
    path = WORK / name
    path.write_bytes(data)
    return path


@pytest.mark.slow  # a few seconds: the full suite runs it
@FUZZ
@given(mutated_configs())
def test_mutated_configs_load_or_fail_as_one_config_error(text):
    path = write(text, "config.yaml")
    try:
        config = load_config(path)
    except FoundryError as exc:
        check_error(exc)
        return
    assume(config.data.source.startswith("sklearn:"))  # a mutated path names no file: that is the data test
    try:
        data = prepare_data(config.data, config.seed)
        check_task(config, data.task)
    except FoundryError as exc:
        check_error(exc)
        return
    for part in data.X.values():
        assert all(np.isfinite(array).all() for array in part.values())


# ------------------------------------------------------------------------------------------------- data
FRAME = load_source("sklearn:iris").sample(45, random_state=0).reset_index(drop=True)
FRAME["island"] = np.where(FRAME.index % 3 == 0, "Biscoe", "Dream")
FRAME["target"] = FRAME["target"].astype(int)
COLUMNS = list(FRAME.columns)
CELLS = st.one_of(st.sampled_from(["inf", "-inf", "Infinity", "nan", "", "1e308", "1e400", "-1e400", "n/a", "?",
                                   "10" * 200, "0x1F", "1,5", "TRUE", "🦆", "\x00", "\"", "a,b", "\n"]),
                  st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-10 ** 40, max_value=10 ** 40),
                  st.text(max_size=10))


@st.composite
def mutated_tables(draw: Any) -> tuple[bytes, str]:
    frame = FRAME.astype(object).copy()
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        row = draw(st.integers(min_value=0, max_value=len(frame) - 1))
        frame.iat[row, draw(st.integers(min_value=0, max_value=len(COLUMNS) - 1))] = draw(CELLS)
    if draw(st.booleans()):
        frame = frame.drop(columns=draw(st.sampled_from(COLUMNS)))
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        frame = frame.iloc[:draw(st.integers(min_value=0, max_value=3))]
    fmt = draw(st.sampled_from(["csv", "csv", "csv", "jsonl"]))
    text = frame.to_csv(index=False) if fmt == "csv" else frame.to_json(orient="records", lines=True)
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-16", "latin-1", "cp1252"]))
    data = text.encode(encoding, errors="replace")
    if draw(st.integers(min_value=0, max_value=4)) == 0:  # truncated, or garbage appended or inserted
        at = draw(st.integers(min_value=0, max_value=len(data)))
        data = data[:at] + draw(st.binary(max_size=12))
    return data, fmt


TRAINED = prepare_data(load_config(tiny_config(data={"source": str(write(FRAME.to_csv(index=False).encode(),
                                                                         "train.csv"))})).data, 0)


@FUZZ
@given(mutated_tables())
def test_mutated_data_files_prepare_or_fail_as_one_data_error(table):
    data, fmt = table
    path = write(data, f"data.{fmt}")
    config = load_config(tiny_config(data={"source": str(path)}))
    try:
        prepared = prepare_data(config.data, config.seed)
    except FoundryError as exc:
        check_error(exc)
    else:
        for part in prepared.X.values():
            assert all(np.isfinite(array).all() for array in part.values())
    try:  # the same file as rows to predict, or to evaluate, with the preprocessing fitted on clean data
        frame = read_table(path)
        X = TRAINED.preprocessor.transform(frame, origin=str(path))["numeric"]
        assert np.isfinite(X).all()
        labelled = frame[frame["target"].notna()] if "target" in frame.columns else frame.iloc[:0]
        codes = TRAINED.target_encoder.encode(labelled["target"], str(path)) if len(labelled) else np.zeros(0)
        assert set(codes.tolist()) <= {0, 1, 2}
    except FoundryError as exc:
        check_error(exc)


runner = CliRunner()


@settings(FUZZ, max_examples=25)
@given(mutated_configs())
def test_foundry_validate_never_shows_a_traceback(text):
    result = runner.invoke(app, ["validate", str(write(text, "cli.yaml"))])
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output and (result.exception is None or isinstance(result.exception, SystemExit))
