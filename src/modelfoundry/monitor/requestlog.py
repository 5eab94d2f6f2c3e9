"""The request log: a sampled, bounded table of served rows, their predictions and the labels sent back.

One table, `foundry_requests`, in any SQLAlchemy database (by default SQLite, foundry-requests.db beside the
project's foundry.db, in WAL mode so a server writes while a report reads); one row per served row:

    seq (insertion order)  id ("<request id>-<row>")  time (epoch s)  model  version  inputs (JSON: raw columns)
    prediction (JSON: class label or value)  ood_score  label (JSON, with feedback)  feedback_time  shadow_prediction

Rows are written in one transaction per `add`, or, with `buffer_rows`, gathered in memory and written together
(at most `buffer_s` later; every read or update writes them first). The server's log has a `source` instead
(monitor/feedback.py): the answered batches it holds, encoded when the log is flushed (by its writer thread
every few hundred rows or `buffer_s`, or by any read or update first). Shadow predictions of rows not written yet
wait in memory and are stored with them.
Bounded: beyond `max_rows` rows of one model the oldest are deleted, checked each time a tenth of `max_rows` more
rows were written (so a model holds at most 1.1 x max_rows). Privacy: `exclude_columns` are never stored;
`hash_columns` are stored as salted SHA-256 (`hash_value`); the salt is $FOUNDRY_LOG_SALT, else a random one made
once and kept in `<database file>.salt` (SQLite; mode 0600) or in the table `foundry_log_salt` (other databases),
and it is never logged. Everything stored is JSON: reading the log executes nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import threading
import time as clock
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from modelfoundry.monitor.logdb import (  # noqa: F401 - frame_records: part of this module's interface
    SALT_TABLE,
    SHADOW,
    dumps,
    frame_records,
    insert_rows,
    open_log,
    salt_file,
    sqlite_file,
)

SALT_ENV = "FOUNDRY_LOG_SALT"
LOG_FILE = "foundry-requests.db"
PRUNE_SHARE = 0.1  # rows written per model, as a share of max_rows, between two checks of the bound
META = ("id", "time", "model", "version", "prediction", "label", "ood_score", "shadow_prediction")


def default_log_url() -> str:
    """sqlite:///<folder of the project's foundry.db (nearest here or in a parent), else the cwd>/foundry-requests.db."""
    from modelfoundry.tracking import project_store

    return f"sqlite:///{project_store().parent / LOG_FILE}"


class RequestLog:
    """Served rows and their feedback in one table of `url` (None: `default_log_url()`), created on the first write
    (reading a SQLite log that was never written finds nothing and creates no file)."""

    def __init__(self, url: str | None, *, max_rows: int = 100_000, hash_columns: Sequence[str] = (),
                 exclude_columns: Sequence[str] = (), buffer_rows: int = 0, buffer_s: float = 0.5):
        self.url = url or default_log_url()
        self.max_rows = max_rows
        # buffer_rows > 0: rows wait in memory until that many are pending or the oldest is buffer_s old (the next
        # add, or flush(), writes them in one transaction); every read and update writes them first
        self.buffer_rows, self.buffer_s = buffer_rows, buffer_s
        self._pending: list[list[Any]] = []  # rows as logdb.insert_rows takes them
        self._pending_since = 0.0
        self._shadow: dict[str, str] = {}  # row id -> shadow prediction (JSON) to store at the next flush
        # rows held elsewhere, encoded when flushed (the server's FeedbackLog): called under the lock by flush()
        self.source: Callable[[], list[list[Any]]] | None = None
        self.hash_columns, self.exclude_columns = set(hash_columns), set(exclude_columns)
        self._engine: Any = None
        self._table: Any = None
        self._salt: bytes | None = None
        self._lock = threading.RLock()
        self._written: dict[str, int] = {}  # rows written per model since its last check of the bound

    # ------------------------------------------------------------------------------------------ writing
    def add(self, model: str, version: str, ids: Sequence[str], inputs: Sequence[Mapping[str, Any]],
            predictions: Sequence[Any], *, time: float | None = None,
            ood_scores: Sequence[float] | None = None) -> None:
        """Log rows: their ids, raw inputs ({column: value}; NaN stored as null), predictions (one transaction, or
        buffered: see buffer_rows)."""
        if not ids:
            return
        now = clock.time() if time is None else time
        rows = [[rid, now, model, version, dumps(self.private(row)), dumps(prediction), None,
                 _finite(ood_scores[i]) if ood_scores is not None else None]
                for i, (rid, row, prediction) in enumerate(zip(ids, inputs, predictions))]
        with self._lock:
            if not self._pending:
                self._pending_since = clock.monotonic()
            self._pending.extend(rows)
            if len(self._pending) >= self.buffer_rows or clock.monotonic() - self._pending_since >= self.buffer_s:
                self.flush()

    def flush(self) -> None:
        """Write the buffered rows and the source's (one transaction) with the shadow predictions waiting for them
        (the others update rows written before), then keep each model within max_rows."""
        with self._lock:
            rows, self._pending = self._pending, []
            if self.source is not None:
                rows += self.source()
            if not rows and not self._shadow:
                return
            shadow, self._shadow = self._shadow, {}
            if shadow:
                for row in rows:
                    row[SHADOW] = shadow.pop(row[0], row[SHADOW])
            table = self.table
            with self._engine.begin() as conn:
                insert_rows(conn, table, rows)
                if shadow:
                    conn.execute(self._setter("shadow_prediction"), [{"row_id": r, "value": v}
                                                                      for r, v in shadow.items()])
            self._bound(rows)

    def _bound(self, rows: list[list[Any]]) -> None:
        """Keep the models of the rows just written within max_rows (checked every max_rows * PRUNE_SHARE rows)."""
        for row in rows:
            self._written[row[2]] = self._written.get(row[2], 0) + 1
        for model in {row[2] for row in rows}:
            if self._written[model] >= max(1, int(self.max_rows * PRUNE_SHARE)):
                self._written[model] = 0
                self.prune(model)

    @property
    def pending(self) -> int:
        """Rows buffered, not written yet (the source's aside)."""
        return len(self._pending)

    @property
    def dirty(self) -> bool:
        """Whether a flush has anything of its own to write (buffered rows or shadow predictions)."""
        return bool(self._pending or self._shadow)

    def add_shadow(self, row_ids: list[str], predictions: list) -> None:
        """Store a shadow model's predictions beside the logged rows `row_ids` (rows not logged are skipped); with
        a buffer or a source, at the next flush (with the rows, or as an update of rows written before)."""
        values = [dumps(p) for p in predictions]
        with self._lock:
            self._shadow.update(zip(row_ids, values))
            if self.buffer_rows or self.source is not None:
                return
            self.flush()

    def label(self, labels: Mapping[str, Any], time: float | None = None) -> None:
        """Store feedback: the true label of each logged row id (a later label replaces an earlier one)."""
        now = clock.time() if time is None else time
        self._update(list(labels), "label", [dumps(v) for v in labels.values()], feedback_time=now)

    def _update(self, row_ids: list[str], column: str, values: list[str], **same: Any) -> None:
        if not row_ids:
            return
        with self._lock:
            self.flush()
            self.table  # noqa: B018 - created on first use
            with self._engine.begin() as conn:
                conn.execute(self._setter(column, **same), [{"row_id": r, "value": v} for r, v in zip(row_ids, values)])

    def _setter(self, column: str, **same: Any) -> Any:
        """UPDATE of `column` to :value (and `same`) on the row :row_id."""
        from sqlalchemy import bindparam

        table = self.table
        return table.update().where(table.c.id == bindparam("row_id")).values({column: bindparam("value"), **same})

    def prune(self, model: str) -> int:
        """Delete the oldest rows of `model` beyond max_rows; returns how many were deleted."""
        from sqlalchemy import delete, select

        with self._lock:
            table = self.table
            with self._engine.begin() as conn:
                cut = conn.execute(select(table.c.seq).where(table.c.model == model).order_by(table.c.seq.desc())
                                   .limit(1).offset(self.max_rows)).scalar()
                if cut is None:
                    return 0
                return conn.execute(delete(table).where(table.c.model == model, table.c.seq <= cut)).rowcount

    # ------------------------------------------------------------------------------------------ reading
    @property
    def exists(self) -> bool:
        """Whether there is anything to read: a SQLite file not written yet is not created by a read."""
        path = sqlite_file(self.url)
        return self._table is not None or path is None or path.is_file()

    def find(self, model: str, row_ids: Sequence[str]) -> dict[str, tuple[str, Any]]:
        """{row id: (version, prediction)} of the ids logged for `model` (the others are missing)."""
        from sqlalchemy import select

        self.flush()
        if not self.exists:
            return {}
        table = self.table
        with self._engine.connect() as conn:
            found = conn.execute(select(table.c.id, table.c.version, table.c.prediction)
                                 .where(table.c.model == model, table.c.id.in_(list(row_ids)))).all()
        return {rid: (version, json.loads(prediction)) for rid, version, prediction in found}

    def labelled(self, model: str, version: str | None = None, limit: int = 500) -> list[tuple[Any, Any]]:
        """(prediction, label) of the `limit` rows of `model` (and `version`) that got feedback most recently."""
        from sqlalchemy import select

        self.flush()
        if not self.exists:
            return []
        table = self.table
        query = select(table.c.prediction, table.c.label).where(table.c.model == model, table.c.label.is_not(None))
        if version is not None:
            query = query.where(table.c.version == version)
        with self._engine.connect() as conn:
            rows = conn.execute(query.order_by(table.c.feedback_time.desc()).limit(limit)).all()
        return [(json.loads(p), json.loads(lab)) for p, lab in rows]

    def read(self, model: str, version: str | None = None, limit: int | None = None) -> Any:
        """The logged rows of `model` (and `version`) as a DataFrame, newest last: id, time (epoch seconds), model,
        version, prediction, label (None until feedback), ood_score, shadow_prediction, then one column per logged
        raw input column (hashed ones as their hashes; a column named like one of those gets an "input:" prefix)."""
        import pandas as pd
        from sqlalchemy import select

        self.flush()
        rows: list[Any] = []
        if self.exists:
            table = self.table
            query = select(*(table.c[c] for c in META), table.c.inputs).where(table.c.model == model)
            if version is not None:
                query = query.where(table.c.version == version)
            query = query.order_by(table.c.seq.desc())
            if limit is not None:
                query = query.limit(limit)
            with self._engine.connect() as conn:
                rows = conn.execute(query).all()[::-1]
        decoded = ("prediction", "label", "shadow_prediction")
        meta = pd.DataFrame({c: pd.Series([r[j] if c not in decoded or r[j] is None else json.loads(r[j])
                                           for r in rows], dtype=object if c in decoded else None)
                             for j, c in enumerate(META)})
        inputs = pd.DataFrame([json.loads(r[-1]) for r in rows], index=meta.index)
        inputs.columns = [f"input:{c}" if c in META else c for c in inputs.columns]
        return pd.concat([meta, inputs], axis=1)

    # ------------------------------------------------------------------------------------------ privacy
    def private(self, row: Mapping[str, Any]) -> Mapping[str, Any]:
        """A row as stored: excluded columns left out, hashed columns replaced by their hashes."""
        if not self.hash_columns and not self.exclude_columns:
            return row
        return {c: (self.hash_value(v) if c in self.hash_columns else v) for c, v in row.items()
                if c not in self.exclude_columns}

    def hash_value(self, value: Any) -> str | None:
        """The stored form of a hashed column's value: SHA-256 of salt + the value as JSON (integral numbers as
        integers, so 42 and 42.0 hash alike); None stays None."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return hashlib.sha256(self.salt + _dumps(value).encode()).hexdigest()

    @property
    def salt(self) -> bytes:
        if self._salt is None:
            given = os.environ.get(SALT_ENV)
            self._salt = given.encode() if given else self._stored_salt()
        return self._salt

    def _stored_salt(self) -> bytes:
        self.table  # noqa: B018 - the database (and its folder) exists before the salt beside it
        path = sqlite_file(self.url)
        if path is not None:
            return salt_file(Path(f"{path}.salt"))
        from sqlalchemy import select

        salt_table = self.table.metadata.tables[SALT_TABLE]
        with self._lock, self._engine.begin() as conn:
            stored = conn.execute(select(salt_table.c.salt)).scalar()
            if stored is None:
                stored = secrets.token_hex(32)
                conn.execute(salt_table.insert(), {"salt": stored})
        return stored.encode()

    # ------------------------------------------------------------------------------------------ storage
    @property
    def table(self) -> Any:
        """The log's table, created (with its database file) on first use."""
        if self._table is None:
            with self._lock:
                if self._table is None:
                    self._engine, self._table = open_log(self.url)
        return self._table

    def close(self) -> None:
        """Write what is buffered and release the database connections."""
        self.flush()
        if self._engine is not None:
            self._engine.dispose()


def _dumps(value: Any) -> str:
    """A hashed value as JSON: the standard library's, so hashes stay what earlier logs stored."""
    return _VALUES.encode(value)


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers (json.dumps' fallback)."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_VALUES = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_plain)  # made once: not per value


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
