"""Schema management with Alembic; the migrations live in marketplace/migrations."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config

from marketplace.db import Database

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if database_url:
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_schema(db: Database) -> None:
    """Bring the database to the newest migration. Safe to run from several processes at once on
    PostgreSQL, where an advisory lock serializes them."""
    config = alembic_config()
    with db.engine.begin() as connection:
        if db.is_postgres:
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(727274)")
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
