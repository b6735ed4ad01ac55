"""Database access: engine, sessions, SQLite pragmas, migrations and the schema check.

Public API:
    DEFAULT_URL
    Limits(max_active_jobs=5, max_identities=20, max_attempts=3, lease_seconds=120.0,
           import_max_bytes=16 MiB, max_refs=16, keep_inputs=False)
    Limits.from_settings(settings) -> Limits           (from storage.config.Settings)
    Database(engine, limits=None)
    Database.open(url=DEFAULT_URL, *, check=True, limits=None, pool_size=None)  (async)
    Database.close()                                                          (async)
    Database.session() / Database.transaction()  -> async context managers of AsyncSession
    create_engine(url) -> AsyncEngine
    upgrade(url=DEFAULT_URL, revision="head") -> str                          (async)
    current_revision(url) -> str | None                                       (async)
    head_revision() -> str
    check_schema(db_or_engine) -> None                                        (async, SchemaError)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine as _create_async_engine

from storage.config import mask_url
from storage.errors import DatabaseUnavailable, SchemaError

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite+aiosqlite:///./data/pulid-bot.db"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 15_000
_IMMEDIATE = "pulid_bot_immediate"
UPGRADE_HINT = "run `pulid-bot db upgrade`"


@dataclass(frozen=True)
class Limits:
    """Per-user limits and queue timings; every API call may override its own limit."""

    max_active_jobs: int = 5
    max_identities: int = 20
    max_attempts: int = 3
    lease_seconds: float = 120.0
    import_max_bytes: int = 16 * 1024 * 1024
    max_refs: int = 16
    keep_inputs: bool = False

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        """Limits from a ``storage.config.Settings`` (limits, queue and storage sections)."""
        return cls(
            max_active_jobs=settings.limits.max_queued_per_user,
            max_identities=settings.limits.max_identities_per_user,
            max_attempts=settings.queue.max_attempts,
            lease_seconds=settings.queue.lease_seconds,
            import_max_bytes=settings.limits.max_upload_bytes,
            keep_inputs=settings.storage.keep_source_photos,
        )


def _is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _ensure_sqlite_dir(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (see _on_begin)
    cursor = dbapi_connection.cursor()
    for pragma in (
        "journal_mode=WAL",
        f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
        "foreign_keys=ON",
        "synchronous=NORMAL",
    ):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _on_sqlite_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get(_IMMEDIATE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine; on SQLite with WAL, a busy timeout, foreign keys and real BEGINs."""
    if not _is_sqlite(url):
        return _create_async_engine(url, pool_pre_ping=True, **kwargs)
    _ensure_sqlite_dir(url)
    engine = _create_async_engine(url, **kwargs)
    event.listen(engine.sync_engine, "connect", _on_sqlite_connect)
    event.listen(engine.sync_engine, "begin", _on_sqlite_begin)
    return engine


class Database:
    """The async engine and session factories; every storage API takes one as ``db``."""

    def __init__(self, engine: AsyncEngine, limits: Limits | None = None) -> None:
        self.engine = engine
        self.limits = limits or Limits()
        self.dialect = engine.dialect.name
        writer = engine.execution_options(**{_IMMEDIATE: True}) if self.is_sqlite else engine
        self._reader = async_sessionmaker(engine, expire_on_commit=False)
        self._writer = async_sessionmaker(writer, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @classmethod
    async def open(
        cls,
        url: str = DEFAULT_URL,
        *,
        check: bool = True,
        limits: Limits | None = None,
        pool_size: int | None = None,
    ) -> Database:
        """Connect; with ``check`` refuse a schema that is missing, older or newer."""
        kwargs = {} if pool_size is None else {"pool_size": pool_size}
        db = cls(create_engine(url, **kwargs), limits)
        if check:
            try:
                async with reachable(url):
                    await check_schema(db)
            except BaseException:
                await db.close()
                raise
        return db

    async def close(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A read transaction (committed on exit; fine for reads that never write)."""
        async with self._reader() as session, session.begin():
            yield session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A write transaction: all or nothing; ``BEGIN IMMEDIATE`` on SQLite."""
        async with self._writer() as session, session.begin():
            yield session


def alembic_config(url: str | None = None) -> Config:
    """A programmatic Alembic config: no alembic.ini, works from an installed package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The newest migration revision this version of the code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migrations found"
    return head


@asynccontextmanager
async def reachable(url: str) -> AsyncIterator[None]:
    """Turn a failure to connect into :class:`DatabaseUnavailable` (one line, password masked)."""
    try:
        yield
    except (OperationalError, InterfaceError, OSError) as exc:
        cause = getattr(exc, "orig", None) or exc
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:200]
        raise DatabaseUnavailable(
            f"Cannot use the database {mask_url(url)}: {reason}", detail=repr(exc)
        ) from exc


async def upgrade(url: str = DEFAULT_URL, revision: str = "head") -> str:
    """Create or upgrade the schema at ``url``; returns the revision now current."""
    engine = create_engine(url)
    cfg = alembic_config(url)
    try:
        async with reachable(url), engine.begin() as conn:
            await conn.run_sync(_run_upgrade, cfg, revision)
        current = await _current(engine)
    finally:
        await engine.dispose()
    log.info("database schema at revision %s", current)
    return current or ""


def _run_upgrade(sync_conn: Connection, cfg: Config, revision: str) -> None:
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, revision)


def _revision_of(sync_conn: Connection) -> str | None:
    return MigrationContext.configure(sync_conn).get_current_revision()


async def _current(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_revision_of)


async def current_revision(url: str) -> str | None:
    """The schema revision stored in the database at ``url`` (None when unmigrated)."""
    engine = create_engine(url)
    try:
        return await _current(engine)
    finally:
        await engine.dispose()


def _known_revision(revision: str) -> bool:
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:
        return False


async def check_schema(db: Database | AsyncEngine) -> None:
    """Raise :class:`SchemaError` unless the schema is exactly at this code's head revision."""
    engine = db.engine if isinstance(db, Database) else db
    current = await _current(engine)
    head = head_revision()
    if current == head:
        return
    if current is None:
        raise SchemaError(f"The database has no pulid-bot schema yet; {UPGRADE_HINT}.")
    if not _known_revision(current):
        raise SchemaError(
            f"The database schema ({current}) is newer than this pulid-bot knows ({head}); "
            "upgrade pulid-bot."
        )
    raise SchemaError(f"The database schema ({current}) is older than {head}; {UPGRADE_HINT}.")
