"""The request log's database (monitor/requestlog.py): its two tables, the engine (SQLite in WAL mode, created with
its folder on first use; any other SQLAlchemy URL as it is), the salt file beside a SQLite log, and how rows are
encoded (orjson, one JSON object per row built from whole columns) and inserted (a few multi-row statements per
chunk on SQLite: each statement hands the GIL away once, not once per row)."""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

TABLE, SALT_TABLE = "foundry_requests", "foundry_log_salt"
# a row as `insert_rows` takes it: a list of these values, in this order
COLUMNS = ("id", "time", "model", "version", "inputs", "prediction", "shadow_prediction", "ood_score")
SHADOW = COLUMNS.index("shadow_prediction")
ROWS_PER_STATEMENT = 100  # 800 parameters: under SQLite's oldest limit (999)
_JSON = orjson.OPT_SERIALIZE_NUMPY  # numpy scalars as numbers; NaN and infinity as null


def open_log(url: str) -> tuple[Any, Any]:
    """(engine, the log's table) of `url`, both tables created if missing."""
    from sqlalchemy import (
        BigInteger,
        Column,
        Float,
        Index,
        Integer,
        MetaData,
        String,
        Table,
        Text,
        create_engine,
        event,
    )
    from sqlalchemy.pool import StaticPool

    path = sqlite_file(url)
    options: dict[str, Any] = {}
    if url.startswith("sqlite"):
        options["connect_args"] = {"check_same_thread": False, "timeout": 30}
        if path is None:  # in memory: one connection shared by the threads, or each would see its own database
            options["poolclass"] = StaticPool
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **options)
    if path is not None:
        @event.listens_for(engine, "connect")
        def _wal(connection: Any, record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the server's writes
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()
    metadata = MetaData()
    table = Table(TABLE, metadata,
                  Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
                  Column("id", String(80), nullable=False, unique=True), Column("time", Float, nullable=False),
                  Column("model", String(200), nullable=False), Column("version", String(100), nullable=False),
                  Column("inputs", Text, nullable=False), Column("prediction", Text, nullable=False),
                  Column("ood_score", Float), Column("label", Text), Column("feedback_time", Float),
                  Column("shadow_prediction", Text),
                  Index(f"{TABLE}_model_seq", "model", "seq"),
                  Index(f"{TABLE}_model_feedback", "model", "feedback_time"))
    Table(SALT_TABLE, metadata, Column("salt", String(128), nullable=False))
    metadata.create_all(engine)
    return engine, table


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for in-memory SQLite and other databases."""
    if not url.startswith("sqlite:///") or url.split("?")[0] in ("sqlite:///", "sqlite:///:memory:"):
        return None
    return Path(url.removeprefix("sqlite:///").split("?")[0]).resolve()


def salt_file(path: Path) -> bytes:
    """The salt kept in `path`, made once (readable by its owner only); several workers agree on the first."""
    if not path.is_file():
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(32))
        try:
            os.link(temporary, path)  # atomic: only the first worker's salt becomes the file
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    return path.read_text().strip().encode()


def dumps(value: Any) -> str:
    """`value` as compact JSON (numpy scalars as numbers, NaN as null)."""
    return orjson.dumps(value, option=_JSON).decode()


def objects_json(names: Sequence[str], columns: Sequence[Sequence[Any]]) -> list[str]:
    """One JSON object {name: value} per row of row-aligned `columns` (one sequence per name)."""
    if not names:
        return ["{}"] * (len(columns[0]) if columns else 0)
    encode = orjson.dumps
    return [encode(dict(zip(names, row)), option=_JSON).decode() for row in zip(*columns)]


def private_columns(names: Sequence[str], columns: Sequence[Sequence[Any]], hashed: set[str], excluded: set[str],
                    hash_value: Callable[[Any], str | None]) -> tuple[list[str], list[Sequence[Any]]]:
    """The columns as stored: `excluded` left out, `hashed` replaced by hash_value of each value (each distinct
    value hashed once)."""
    kept_names, kept = [], []
    for name, values in zip(names, columns):
        if name in excluded:
            continue
        if name in hashed:
            cache: dict[Any, str | None] = {}
            values = [cache[v] if v in cache else cache.setdefault(v, hash_value(v)) for v in values]
        kept_names.append(name)
        kept.append(values)
    return kept_names, kept


def insert_rows(conn: Any, table: Any, rows: Sequence[Sequence[Any]]) -> None:
    """Insert `rows` (values in COLUMNS order): multi-row INSERTs of ROWS_PER_STATEMENT rows where the driver
    takes '?' parameters (SQLite), else one executemany."""
    if not rows:
        return
    if conn.dialect.paramstyle != "qmark":
        conn.execute(table.insert(), [dict(zip(COLUMNS, row)) for row in rows])
        return
    head = f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES "
    marks = "(" + ", ".join("?" * len(COLUMNS)) + ")"
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        part = rows[start:start + ROWS_PER_STATEMENT]
        conn.exec_driver_sql(head + ", ".join([marks] * len(part)), tuple(itertools.chain.from_iterable(part)))


def frame_records(frame: Any) -> list[dict[str, Any]]:
    """A DataFrame's rows as {column: value} with None (JSON null) where a value is missing: what `add` logs."""
    import pandas as pd

    names = [str(c) for c in frame.columns]
    values = frame.to_numpy(dtype=object)  # (N, C): one conversion, whatever the columns' types
    missing = pd.isna(values)
    if missing.any():
        values[missing] = None
    return [dict(zip(names, row)) for row in values.tolist()]


def encode_batches(batches: Sequence[Any], schema: Any, scorer: Any, log: Any) -> list[list[Any]]:
    """The rows with ids of answered batches (BatchRecords of one version) as `insert_rows` takes them: raw inputs
    (`schema` None: none) as `log` stores them (hashed / excluded), the prediction as answered, the OOD score
    (`scorer` None: none). Whole columns at a time: one join, one JSON object per row, one matrix product."""
    import numpy as np

    from modelfoundry.data.input_schema import CheckedRows

    ids = [rid for batch in batches for rid in batch.row_ids()]
    times = [batch.answered_at for batch in batches for _ in range(len(batch.outputs))]
    rows = CheckedRows.join([batch.rows for batch in batches])
    outputs = np.concatenate([batch.outputs for batch in batches])
    keep = [i for i, rid in enumerate(ids) if rid is not None]
    if len(keep) < len(ids):
        ids, times = [ids[i] for i in keep], [times[i] for i in keep]
        rows, outputs = rows[np.asarray(keep)], outputs[np.asarray(keep)]
    first = batches[0]
    inputs = _inputs_json(schema, rows, log) if schema is not None else ["{}"] * len(ids)
    predictions = _predictions_json(first.task, first.labels, outputs, schema)
    scores = _ood_scores(scorer, rows) if scorer is not None else [None] * len(ids)
    name, version = first.model.name, first.model.version
    return [[rid, t, name, version, i, p, None, s] for rid, t, i, p, s in zip(ids, times, inputs, predictions, scores)]


def _inputs_json(schema: Any, rows: Any, log: Any) -> list[str]:
    """One JSON object of the raw input columns per row (`columns.raw_frame`'s columns; NaN as null)."""
    if schema.series or schema.image:
        from modelfoundry.monitor.columns import raw_frame

        frame = raw_frame(schema, rows)
        names = [str(c) for c in frame.columns]
        columns = [frame[c].to_numpy(dtype=object).tolist() for c in frame.columns]
    else:
        names = [*schema.num_columns, *schema.cat_columns]
        columns = [*rows.numeric.T.tolist(), *rows.texts.T.tolist()]
    if not columns:
        return ["{}"] * len(rows)
    names, columns = private_columns(names, columns, log.hash_columns, log.exclude_columns, log.hash_value)
    return objects_json(names, columns) if names else ["{}"] * len(rows)


def _predictions_json(task: str, labels: list[Any] | None, outputs: Any, schema: Any) -> list[str]:
    """The predictions as answered, as JSON: the class label, an anomaly detector's true / false (score above its
    threshold), else the value."""
    import numpy as np

    if task == "classification":
        return np.asarray([dumps(label) for label in labels], dtype=object)[outputs.argmax(1)].tolist()
    if task == "anomaly" and schema is not None:
        return [dumps(v) for v in (outputs > float(schema.desc["target"]["threshold"])).tolist()]
    values = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)[:, 0]
    return [dumps(v) for v in values.tolist()]


def _ood_scores(scorer: Any, rows: Any) -> list[float | None]:
    """Each row's OOD score (one matrix product), None where not finite or the model reads only tokens."""
    import numpy as np

    from modelfoundry.monitor.ood import ood_space

    space = ood_space(rows.inputs)
    if space is None:
        return [None] * len(rows)
    scores = np.asarray(scorer.score(space), dtype=np.float64)
    return [float(s) if finite else None for s, finite in zip(scores.tolist(), np.isfinite(scores).tolist())]
