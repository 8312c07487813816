"""Database engine and sessions.

SQLite is the embedded default and PostgreSQL the production database. Domain functions take a
`Session`, and the use case that owns the transaction commits it once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker


class Base(DeclarativeBase):
    pass


def _configure_sqlite(engine: Engine) -> None:
    # pysqlite opens transactions lazily and breaks SAVEPOINT, so the engine issues BEGIN itself.
    # BEGIN IMMEDIATE takes the write lock up front: two writers never both read a balance and
    # then fail to upgrade their lock, and the busy timeout makes the second one wait.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:  # type: ignore[no-untyped-def]
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(database_url: str, pool_size: int = 5, max_overflow: int = 5) -> Engine:
    if database_url.startswith("sqlite"):
        path = database_url.split("///", 1)[-1]
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        engine = create_engine(database_url, connect_args={"check_same_thread": False, "timeout": 30})
        _configure_sqlite(engine)
        return engine
    if database_url.startswith("postgresql://"):
        database_url = "postgresql+psycopg://" + database_url.removeprefix("postgresql://")
    # Each API process holds at most pool_size + max_overflow connections; the sum over all
    # processes must stay below PostgreSQL's max_connections (100 by default).
    return create_engine(database_url, pool_size=pool_size, max_overflow=max_overflow, pool_timeout=30, pool_pre_ping=True)


class Database:
    """An engine with its session factory."""

    def __init__(self, database_url: str, pool_size: int = 5, max_overflow: int = 5) -> None:
        self.url = database_url
        self.engine = make_engine(database_url, pool_size, max_overflow)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessionmaker() as session:
            yield session

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """Yield a session whose work commits on success and rolls back on any exception."""
        with self.sessionmaker() as session, session.begin():
            yield session

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def dispose(self) -> None:
        self.engine.dispose()


@lru_cache
def get_database(database_url: str) -> Database:
    return Database(database_url)
