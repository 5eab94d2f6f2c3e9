"""The request log's database (monitor/requestlog.py): its two tables, the engine (SQLite in WAL mode, created with
its folder on first use; any other SQLAlchemy URL as it is) and the salt file beside a SQLite log."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

TABLE, SALT_TABLE = "foundry_requests", "foundry_log_salt"


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
