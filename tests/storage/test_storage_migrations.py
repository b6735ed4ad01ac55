"""Migrations: upgrade creates the schema and carries data from 0001 to head; the schema check
refuses empty, older and newer databases."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pg_support import create_pg_database, drop_pg_database, pg_base_url, sqlite_url
from sqlalchemy import inspect, text

from storage import db as storage_db
from storage.db import Database, check_schema, current_revision, head_revision, upgrade
from storage.errors import SchemaError
from storage.jobs import get_job
from storage.models import Base
from storage.schemas import JobState, Refusal, RefusalCode

TABLES = {"users", "identities", "jobs", "results", "workers", "alembic_version"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database (no tables) on each dialect."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "sub" / "empty.db")
        return
    base = pg_base_url()
    url = create_pg_database(base)
    yield url
    drop_pg_database(base, url)


async def _tables(url: str) -> set[str]:
    engine = storage_db.create_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def test_upgrade_creates_schema(empty_url: str) -> None:
    assert await current_revision(empty_url) is None
    assert await upgrade(empty_url) == head_revision()
    assert await _tables(empty_url) == TABLES
    db = await Database.open(empty_url)  # check passes
    await db.close()
    assert await upgrade(empty_url) == head_revision()  # idempotent


async def test_sqlite_file_created_in_missing_folder(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "bot.db"
    await upgrade(sqlite_url(path))
    assert path.exists()


async def test_upgrade_needs_no_alembic_ini_in_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert not Path("alembic.ini").exists()
    await upgrade("sqlite+aiosqlite:///./data/pulid-bot.db")  # the default URL, relative
    assert (tmp_path / "data" / "pulid-bot.db").exists()
    assert os.listdir(tmp_path) == ["data"]


async def test_open_refuses_unmigrated_database(empty_url: str) -> None:
    with pytest.raises(SchemaError) as err:
        await Database.open(empty_url)
    assert "pulid-bot db upgrade" in err.value.user_message
    db = await Database.open(empty_url, check=False)  # the CLI's upgrade path may skip the check
    with pytest.raises(SchemaError, match="no pulid-bot schema"):
        await check_schema(db)
    await db.close()


async def test_check_refuses_newer_schema(empty_url: str) -> None:
    await upgrade(empty_url)
    db = await Database.open(empty_url)
    async with db.transaction() as s:
        await s.execute(text("UPDATE alembic_version SET version_num = 'ffff_future'"))
    with pytest.raises(SchemaError) as err:
        await check_schema(db)
    assert "newer" in err.value.user_message
    assert "ffff_future" in err.value.user_message
    await db.close()
    with pytest.raises(SchemaError, match="newer"):
        await Database.open(empty_url)


async def test_check_refuses_older_schema(empty_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    await upgrade(empty_url)
    db = await Database.open(empty_url)
    monkeypatch.setattr(storage_db, "head_revision", lambda: "9999_next")
    monkeypatch.setattr(storage_db, "_known_revision", lambda rev: True)
    with pytest.raises(SchemaError, match="older.*pulid-bot db upgrade"):
        await check_schema(db)
    await db.close()


@pytest.mark.filterwarnings("ignore:.*expression-based index")
async def test_models_match_migrations(db: Database) -> None:
    def diff(sync_conn: object) -> list[object]:
        ctx = MigrationContext.configure(sync_conn, opts={"compare_type": True})  # type: ignore[arg-type]
        return compare_metadata(ctx, Base.metadata)

    async with db.engine.connect() as conn:
        changes = await conn.run_sync(diff)
    assert changes == []


async def test_sqlite_pragmas(sqlite_db: Database) -> None:
    async with sqlite_db.session() as s:
        assert (await s.scalar(text("PRAGMA journal_mode"))) == "wal"
        assert (await s.scalar(text("PRAGMA foreign_keys"))) == 1
        assert (await s.scalar(text("PRAGMA busy_timeout"))) == storage_db.SQLITE_BUSY_TIMEOUT_MS


async def test_limits_from_settings_and_pool_size(tmp_path: Path) -> None:
    from storage.config import Settings
    from storage.db import Limits

    settings = Settings()
    limits = Limits.from_settings(settings)
    assert limits.max_identities == settings.limits.max_identities_per_user
    assert limits.max_active_jobs == settings.limits.max_queued_per_user
    assert limits.lease_seconds == settings.queue.lease_seconds
    assert limits.keep_inputs is settings.storage.keep_source_photos
    assert limits.import_max_bytes == settings.limits.max_upload_bytes
    assert limits.max_attempts == settings.queue.max_attempts
    url = sqlite_url(tmp_path / "p.db")
    await upgrade(url)
    db = await Database.open(url, limits=limits, pool_size=2)
    assert db.limits is limits and db.engine.pool.size() == 2  # type: ignore[attr-defined]
    await db.close()


async def _insert_0001_rows(url: str) -> None:
    """A user and a finished job written under the 0001 schema (before jobs had a note)."""
    engine = storage_db.create_engine(url)
    now = "'2026-11-20 10:00:00.000000'"  # a literal both dialects read as a timestamp
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO users (id, platform, platform_user_id, settings, banned,"
                    " jobs_total, images_total, created_at, updated_at)"
                    f" VALUES (1, 'discord', 'u1', '{{}}', false, 1, 0, {now}, {now})"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO jobs (id, owner_id, kind, params, state, attempts, max_attempts,"
                    " progress_step, progress_total, cancel_requested, error_user,"
                    " delivery_extra, delivered, created_at, updated_at, finished_at)"
                    " VALUES (7, 1, 'imagine', :params, 'failed', 1, 3, 0, 0, false, 'boom',"
                    f" '{{}}', false, {now}, {now}, {now})"
                ),
                {"params": PARAMS_0001},
            )
    finally:
        await engine.dispose()


PARAMS_0001 = '{"v": 1, "params": {"kind": "imagine", "identity_id": 3, "prompt": "a portrait"}}'


async def test_upgrade_from_0001_keeps_jobs_and_adds_the_note(empty_url: str) -> None:
    assert await upgrade(empty_url, "0001") == "0001"
    await _insert_0001_rows(empty_url)
    with pytest.raises(SchemaError, match="older"):
        await Database.open(empty_url)
    assert await upgrade(empty_url) == head_revision() != "0001"
    db = await Database.open(empty_url)
    try:
        job = await get_job(db, 7, owner_id=1)
        assert (job.state, job.error_user, job.note, job.refusal) == (
            JobState.FAILED, "boom", None, None,
        )  # fmt: skip
        assert job.params is not None and job.params.kind == "imagine"
        async with db.transaction() as s:
            await s.execute(text("UPDATE jobs SET note = 'kept' WHERE id = 7"))
            await s.execute(text("UPDATE jobs SET refusal = 'several_faces', faces_found = 4"))
        again = await get_job(db, 7)
        assert again.note == "kept"
        assert again.refusal == Refusal(code=RefusalCode.SEVERAL_FACES, faces=4)
    finally:
        await db.close()


async def test_upgrade_from_0002_adds_the_refusal(empty_url: str) -> None:
    await upgrade(empty_url, "0002")
    await _insert_0001_rows(empty_url)
    assert "refusal" not in await _job_columns(empty_url)
    assert await upgrade(empty_url) == head_revision() == "0003"
    assert {"note", "refusal", "faces_found"} <= await _job_columns(empty_url)
    db = await Database.open(empty_url)
    try:
        assert (await get_job(db, 7)).refusal is None
    finally:
        await db.close()


async def _job_columns(url: str) -> set[str]:
    engine = storage_db.create_engine(url)
    try:
        async with engine.connect() as conn:
            columns = await conn.run_sync(lambda c: inspect(c).get_columns("jobs"))
    finally:
        await engine.dispose()
    return {c["name"] for c in columns}


@pytest.mark.parametrize(
    ("revision", "gone"), [("0002", {"refusal", "faces_found"}), ("0001", {"note", "refusal"})]
)
async def test_downgrade_drops_only_the_later_columns(
    empty_url: str, revision: str, gone: set[str]
) -> None:
    await upgrade(empty_url, "0001")
    await _insert_0001_rows(empty_url)
    await upgrade(empty_url)
    before = await _job_columns(empty_url)
    engine = storage_db.create_engine(empty_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_downgrade, empty_url, revision)
        assert await current_revision(empty_url) == revision
        async with engine.connect() as conn:
            count = await conn.scalar(text("SELECT count(*) FROM jobs"))
    finally:
        await engine.dispose()
    after = await _job_columns(empty_url)
    assert not gone & after and before - after >= gone and count == 1
    assert before - after <= {"note", "refusal", "faces_found"}


def _downgrade(sync_conn: object, url: str, revision: str) -> None:
    cfg = storage_db.alembic_config(url)
    cfg.attributes["connection"] = sync_conn
    command.downgrade(cfg, revision)
