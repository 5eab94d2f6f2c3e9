"""The request log (monitor/requestlog.py): rows round-trip as JSON, the bound holds per model, privacy options
keep identifiers out of the database, feedback and shadow predictions land on their rows."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from modelfoundry.monitor.requestlog import (
    SALT_ENV,
    RequestLog,
    default_log_url,
    frame_records,
)


def rows(n: int, start: int = 0) -> list[dict]:
    return [{"x": float(start + i), "city": f"c{(start + i) % 3}"} for i in range(n)]


def ids(n: int, request: str = "r", start: int = 0) -> list[str]:
    return [f"{request}-{start + i}" for i in range(n)]


def raw_table(url: str) -> str:
    """Everything the log's database holds, as one text (what someone with the file could read)."""
    with create_engine(url).connect() as conn:
        tables = [r[0] for r in conn.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))]
        return "\n".join(str(row) for t in tables for row in conn.execute(text(f"SELECT * FROM {t}")))


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'log' / 'requests.db'}"


def test_rows_round_trip_newest_last_with_nan_as_null(url):
    log = RequestLog(url)
    frame = pd.DataFrame({"x": [1.5, np.nan], "city": ["a", None], "id": [7.0, 8.0]})
    log.add("m", "1", ids(2, "a"), frame_records(frame), [0, "b"], time=100.0, ood_scores=[2.5, float("nan")])
    log.add("m", "2", ids(1, "b"), [{"x": 3.0, "city": "c", "id": 9.0}], [1], time=200.0)
    log.add("other", "1", ids(1, "c"), [{"x": 0.0}], [5.0], time=300.0)
    read = log.read("m")
    assert read["id"].tolist() == ["a-0", "a-1", "b-0"] and read["version"].tolist() == ["1", "1", "2"]
    assert read["prediction"].tolist() == [0, "b", 1] and read["time"].tolist() == [100.0, 100.0, 200.0]
    assert read["label"].tolist() == [None, None, None] and read["shadow_prediction"].tolist() == [None] * 3
    assert read["ood_score"].iloc[0] == 2.5 and np.isnan(read["ood_score"].iloc[1])  # a NaN score is stored as null
    assert read["x"].iloc[0] == 1.5 and np.isnan(read["x"].iloc[1]) and read["city"].iloc[0] == "a"
    assert pd.isna(read["city"].iloc[1])
    assert read["input:id"].tolist() == [7.0, 8.0, 9.0]  # an input named like a log column keeps its values
    assert log.read("m", version="2")["id"].tolist() == ["b-0"] and log.read("m", limit=1)["id"].tolist() == ["b-0"]
    assert log.read("missing").empty and list(log.read("missing").columns)[:2] == ["id", "time"]
    assert (os.path.exists(url.removeprefix("sqlite:///") + "-wal"))  # WAL: readers never block the writer


def test_feedback_and_shadow_predictions_land_on_their_rows(url):
    log = RequestLog(url)
    log.add("m", "1", ids(3), rows(3), [0, 1, 1])
    log.label({"r-2": 1}, time=10.0)
    log.label({"r-0": 1}, time=20.0)
    log.label({"r-2": 0}, time=30.0)  # a later label replaces the earlier one
    log.add_shadow(["r-0", "r-1", "not-logged"], [1, 1, 0])
    assert log.labelled("m") == [(1, 0), (0, 1)]  # newest feedback first
    assert log.labelled("m", limit=1) == [(1, 0)] and log.labelled("m", version="9") == []
    assert log.find("m", ["r-0", "r-9"]) == {"r-0": ("1", 0)} and log.find("n", ["r-0"]) == {}
    read = log.read("m")
    assert read["label"].tolist() == [1, None, 0] and read["shadow_prediction"].tolist() == [1, 1, None]


def test_the_bound_keeps_the_newest_rows_of_each_model(url):
    log = RequestLog(url, max_rows=100)
    log.add("small", "1", ids(5, "s"), rows(5), [0] * 5)
    for batch in range(25):  # 250 rows of model m, 10 per transaction
        log.add("m", "1", ids(10, f"b{batch}"), rows(10), [batch] * 10)
    read = log.read("m")
    assert 100 <= len(read) <= 110  # checked each time a tenth of max_rows was written
    assert read["id"].iloc[-1] == "b24-9" and read["prediction"].min() >= 14  # the oldest went first
    assert len(log.read("small")) == 5  # another model's rows are its own
    assert log.prune("m") == len(read) - 100 and len(log.read("m")) == 100


def test_hashed_columns_are_salted_and_excluded_ones_never_stored(url, monkeypatch, tmp_path):
    monkeypatch.delenv(SALT_ENV, raising=False)
    log = RequestLog(url, hash_columns=["customer"], exclude_columns=["ssn"])
    log.add("m", "1", ids(2), [{"customer": 4242.0, "ssn": "123-45-6789", "x": 1.0},
                               {"customer": None, "ssn": "987-65-4321", "x": 2.0}], [0, 1])
    read = log.read("m")
    assert "ssn" not in read.columns and pd.isna(read["customer"].iloc[1])
    stored = raw_table(url)
    assert "123-45-6789" not in stored and "4242" not in stored and read["customer"].iloc[0] in stored
    salt_file = url.removeprefix("sqlite:///") + ".salt"
    salt = Path(salt_file).read_text().strip()
    assert stat.S_IMODE(os.stat(salt_file).st_mode) == 0o600 and salt not in stored  # the salt stays out of the db
    again = RequestLog(url, hash_columns=["customer"])  # another worker: the same salt, the same hashes
    assert again.hash_value(4242) == read["customer"].iloc[0] == log.hash_value(4242.0)
    other = RequestLog(f"sqlite:///{tmp_path / 'other.db'}", hash_columns=["customer"])
    assert other.hash_value(4242) != log.hash_value(4242)  # another salt: hashes can't be joined across logs
    monkeypatch.setenv(SALT_ENV, "team-secret")
    assert RequestLog(url).hash_value(4242) == RequestLog(f"sqlite:///{tmp_path / 'x.db'}").hash_value(4242)


def test_a_database_without_files_keeps_its_salt_in_a_table():
    log = RequestLog("sqlite://", hash_columns=["k"])  # in memory: shared by the threads of one process
    log.add("m", "1", ["a-0"], [{"k": "secret-id"}], [1])
    first = log.read("m")["k"].iloc[0]
    assert first == log.hash_value("secret-id") and len(first) == 64
    with log._engine.connect() as conn:
        assert len(conn.execute(text("SELECT salt FROM foundry_log_salt")).all()) == 1


def test_the_default_log_sits_beside_the_projects_foundry_db(tmp_path, monkeypatch):
    (tmp_path / "foundry.db").write_bytes(b"")
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "sub" / "deeper")
    assert default_log_url() == f"sqlite:///{tmp_path.resolve() / 'foundry-requests.db'}"
    log = RequestLog(None)
    assert log.read("m").empty and log.labelled("m") == [] and log.find("m", ["a-0"]) == {}
    assert log.url == default_log_url() and not (tmp_path / "foundry-requests.db").exists()  # made by a write only
    log.add("m", "1", ["a-0"], [{}], [0])
    assert (tmp_path / "foundry-requests.db").is_file()


def test_buffered_rows_are_written_together_and_seen_by_every_read(url):
    log = RequestLog(url, buffer_rows=10, buffer_s=60)
    other = RequestLog(url)  # another process reading the same database
    log.add("m", "1", ids(4), rows(4), [0] * 4)
    log.add_shadow(["r-1"], [1])  # still buffered: set in memory
    assert log.pending == 4 and other.read("m").empty  # nothing written yet
    log.add("m", "1", ids(6, start=4), rows(6, start=4), [0] * 6)  # the 10th row: one transaction for all
    assert log.pending == 0 and other.read("m")["id"].tolist() == ids(10)
    assert other.read("m")["shadow_prediction"].tolist()[:2] == [None, 1]
    log.add("m", "1", ["late-0"], rows(1), [1])
    assert log.find("m", ["late-0"]) == {"late-0": ("1", 1)}  # a read writes the buffer first
    log.add("m", "1", ["last-0"], rows(1), [1])
    log.close()  # so does closing
    assert other.read("m")["id"].iloc[-1] == "last-0"
    timed = RequestLog(url, buffer_rows=1000, buffer_s=0)
    timed.add("n", "1", ["t-0"], rows(1), [0])  # the oldest row is buffer_s old: written at once
    assert timed.pending == 0 and other.read("n")["id"].tolist() == ["t-0"]
