"""Fixtures for the marketplace: databases on SQLite and PostgreSQL, and the API served by uvicorn.

`db` is parametrized: every test that uses it runs once on a fresh SQLite file and once on a
fresh PostgreSQL schema (TOKENPORT_TEST_POSTGRES_URL, by default the `test` database on
127.0.0.1:5432).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import text

from marketplace.api.app import create_app
from marketplace.db import Database
from marketplace.schema import upgrade_schema
from marketplace.servers import BackgroundServer
from marketplace.settings import ChainSettings, Settings

POSTGRES_BASE_URL = os.environ.get("TOKENPORT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
# Each test session works in a schema of its own, so several test runs can share one database.
POSTGRES_SCHEMA = f"tokenport_test_{os.getpid()}"
POSTGRES_URL = f"{POSTGRES_BASE_URL}{'&' if '?' in POSTGRES_BASE_URL else '?'}options=-csearch_path%3D{POSTGRES_SCHEMA}"


def reset_postgres(url: str = POSTGRES_URL) -> None:
    database = Database(POSTGRES_BASE_URL)
    try:
        with database.engine.begin() as connection:
            connection.execute(text(f"DROP SCHEMA IF EXISTS {POSTGRES_SCHEMA} CASCADE"))
            connection.execute(text(f"CREATE SCHEMA {POSTGRES_SCHEMA}"))
    finally:
        database.dispose()


@pytest.fixture(scope="session")
def _postgres_schema() -> Iterator[None]:
    yield
    database = Database(POSTGRES_BASE_URL)
    try:
        with database.engine.begin() as connection:
            connection.execute(text(f"DROP SCHEMA IF EXISTS {POSTGRES_SCHEMA} CASCADE"))
    finally:
        database.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tokenport.db'}"
    request.getfixturevalue("_postgres_schema")
    reset_postgres()
    return POSTGRES_URL


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    upgrade_schema(database)
    yield database
    database.dispose()


@dataclass
class RunningMarketplace:
    url: str
    db: Database
    settings: Settings

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, trust_env=False)


def start_marketplace(db: Database, chains: list[ChainSettings], **overrides) -> tuple[BackgroundServer, RunningMarketplace]:
    settings = Settings(database_url=db.url, chains=chains, api_key_cache_ttl_s=0, **overrides)
    server = BackgroundServer(create_app(settings, db), name="tokenport-api").start()
    return server, RunningMarketplace(server.url, db, settings)


@pytest.fixture
def marketplace(db: Database) -> Iterator[RunningMarketplace]:
    """The API on a free port, with no chain configured."""
    server, running = start_marketplace(db, [])
    yield running
    server.stop()
