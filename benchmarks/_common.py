"""What the benchmarks share: the PostgreSQL server to measure on, and throwaway databases there."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

#: The variable the PostgreSQL tests read too (``eval "$(scripts/test-postgres.sh)"`` sets it).
PG_ENV = "PULID_BOT_TEST_PG_URL"


def pg_server_url(given: str | None = None) -> str | None:
    """``--pg-url`` when given, else ``$PULID_BOT_TEST_PG_URL``; None means SQLite only."""
    return given or os.environ.get(PG_ENV) or None


@asynccontextmanager
async def pg_database(server_url: str) -> AsyncIterator[str]:
    """A new empty database on the server at ``server_url`` (its URL), dropped afterwards."""
    name = f"pulid_bench_{uuid.uuid4().hex[:10]}"
    await _admin(server_url, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        await _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _admin(url: str, sql: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()
