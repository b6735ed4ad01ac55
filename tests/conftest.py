"""Shared fixtures: migrated databases on SQLite and on a real PostgreSQL server.

``db`` runs a test on both dialects. PostgreSQL needs ``PULID_BOT_TEST_PG_URL`` (an asyncpg URL
of a server where the tests may CREATE/DROP databases; ``eval "$(scripts/test-postgres.sh)"``
sets one up). Without it the postgres variants are skipped, or fail when ``CI`` is set.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pg_support import (
    TABLES,
    create_pg_database,
    drop_pg_database,
    pg_base_url,
    sqlite_url,
)
from sqlalchemy import text

from storage.db import Database, upgrade


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    asyncio.run(upgrade(sqlite_url(path)))
    return path


@pytest.fixture(scope="module")
def pg_module_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test module (dropped afterwards)."""
    base = pg_base_url()
    url = create_pg_database(base)
    try:
        asyncio.run(upgrade(url))
        yield url
    finally:
        drop_pg_database(base, url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """URL of a migrated database: a fresh SQLite file, or this module's PostgreSQL database."""
    if request.param == "sqlite":
        path = tmp_path / "test.db"
        shutil.copyfile(sqlite_template, path)
        return sqlite_url(path)
    return str(request.getfixturevalue("pg_module_url"))


async def _clean(database: Database) -> None:
    if database.is_sqlite:
        return
    async with database.transaction() as s:
        await s.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    """An open, empty, migrated :class:`Database` (parametrized: sqlite, postgres)."""
    database = await Database.open(db_url)
    await _clean(database)
    yield database
    await database.close()


@pytest.fixture
async def sqlite_db(tmp_path: Path, sqlite_template: Path) -> AsyncIterator[Database]:
    """An open, empty, migrated SQLite :class:`Database` only."""
    path = tmp_path / "test.db"
    shutil.copyfile(sqlite_template, path)
    database = await Database.open(sqlite_url(path))
    yield database
    await database.close()
