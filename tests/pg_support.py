"""PostgreSQL and SQLite URL helpers shared by the fixtures and the migration tests."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

PG_ENV = "PULID_BOT_TEST_PG_URL"
TABLES = ("results", "jobs", "identities", "workers", "users")


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def pg_base_url() -> str:
    """The server URL from the environment; skip (or fail under CI) when it is missing."""
    url = os.environ.get(PG_ENV)
    if url:
        return url
    if os.environ.get("CI"):
        pytest.fail(f"{PG_ENV} is not set but CI is: PostgreSQL tests must run in CI")
    pytest.skip(f'PostgreSQL not configured: set {PG_ENV} (eval "$(scripts/test-postgres.sh)")')


async def _admin(base: str, sql: str) -> None:
    engine = create_async_engine(base, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


def create_pg_database(base: str) -> str:
    """A new empty database on the server; returns its URL."""
    name = f"pulid_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(base, f'CREATE DATABASE "{name}"'))
    return make_url(base).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(base: str, url: str) -> None:
    name = make_url(url).database
    asyncio.run(_admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
