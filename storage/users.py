"""Users: identity on a platform, settings, consent, bans, rate counters, erasure.

Public API (all async, ``db`` first):
    get_or_create_user(db, platform, platform_user_id, *, display_name=None) -> UserRecord
    find_user(db, platform, platform_user_id) -> UserRecord | None
    get_user(db, user_id) -> UserRecord                                  (NotFound)
    get_settings(db, user_id) -> dict
    update_settings(db, user_id, changes, *, replace=False) -> dict      (None values delete keys)
    record_consent(db, user_id, *, now=None) -> datetime
    has_consented(db, user_id) -> bool
    set_banned(db, user_id, banned) -> None;  ban_user(db, user_id);  unban_user(db, user_id)
    is_banned(db, user_id) -> bool
    recent_job_count(db, user_id, *, window=timedelta(hours=1), now=None) -> int
    erase_user(db, user_id) -> ErasedCounts     (identities, jobs, results, settings, the user row)
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from storage import models
from storage.db import Database
from storage.errors import NotFound
from storage.models import utcnow
from storage.records import ErasedCounts, UserRecord

log = logging.getLogger(__name__)

UNKNOWN_USER = "Unknown user."


async def require_user(session: AsyncSession, user_id: int, *, lock: bool = False) -> models.User:
    """The user row, or NotFound; for use inside another API call's transaction.

    ``lock`` takes the row lock on PostgreSQL (``FOR UPDATE``), serialising the user's
    concurrent writes (SQLite writers are serialised by ``BEGIN IMMEDIATE`` anyway).
    """
    query = select(models.User).where(models.User.id == user_id)
    row = await session.scalar(query.with_for_update() if lock else query)
    if row is None:
        raise NotFound(UNKNOWN_USER, detail=f"user {user_id}")
    return row


async def find_user(db: Database, platform: str, platform_user_id: str) -> UserRecord | None:
    """The user with this platform id, if known."""
    async with db.session() as s:
        row = await s.scalar(_by_platform(platform, str(platform_user_id)))
        return UserRecord.of(row) if row else None


def _by_platform(platform: str, platform_user_id: str) -> Any:
    return select(models.User).where(
        models.User.platform == platform, models.User.platform_user_id == platform_user_id
    )


async def get_or_create_user(
    db: Database, platform: str, platform_user_id: str, *, display_name: str | None = None
) -> UserRecord:
    """The user with this platform id, created on first sight (safe under races)."""
    platform_user_id = str(platform_user_id)
    found = await find_user(db, platform, platform_user_id)
    if found is not None:
        return found
    try:
        async with db.transaction() as s:
            row = models.User(
                platform=platform,
                platform_user_id=platform_user_id,
                display_name=display_name,
                settings={},
                banned=False,
                jobs_total=0,
                images_total=0,
            )
            s.add(row)
            await s.flush()
            return UserRecord.of(row)
    except IntegrityError:
        found = await find_user(db, platform, platform_user_id)
        if found is None:
            raise
        return found


async def get_user(db: Database, user_id: int) -> UserRecord:
    """The user with this internal id, or NotFound."""
    async with db.session() as s:
        return UserRecord.of(await require_user(s, user_id))


async def get_settings(db: Database, user_id: int) -> dict[str, Any]:
    """The user's saved defaults (a JSON object)."""
    return (await get_user(db, user_id)).settings


async def update_settings(
    db: Database, user_id: int, changes: Mapping[str, Any], *, replace: bool = False
) -> dict[str, Any]:
    """Merge ``changes`` into the settings (a None value removes a key); returns the result."""
    async with db.transaction() as s:
        row = await require_user(s, user_id)
        merged = {} if replace else dict(row.settings or {})
        for key, value in changes.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        row.settings = merged
        row.updated_at = utcnow()
        return dict(merged)


async def record_consent(db: Database, user_id: int, *, now: datetime | None = None) -> datetime:
    """Record that the user accepted the terms (keeps the first time); returns that time."""
    async with db.transaction() as s:
        row = await require_user(s, user_id)
        if row.consent_at is None:
            row.consent_at = now or utcnow()
            row.updated_at = utcnow()
        return row.consent_at


async def has_consented(db: Database, user_id: int) -> bool:
    """Whether the user has accepted the terms."""
    return (await get_user(db, user_id)).consent_at is not None


async def set_banned(db: Database, user_id: int, banned: bool) -> None:
    """Ban or unban a user; banned users cannot enqueue jobs."""
    async with db.transaction() as s:
        row = await require_user(s, user_id)
        row.banned = banned
        row.updated_at = utcnow()
    log.info("user %s %s", user_id, "banned" if banned else "unbanned")


async def ban_user(db: Database, user_id: int) -> None:
    await set_banned(db, user_id, True)


async def unban_user(db: Database, user_id: int) -> None:
    await set_banned(db, user_id, False)


async def is_banned(db: Database, user_id: int) -> bool:
    return (await get_user(db, user_id)).banned


async def recent_job_count(
    db: Database,
    user_id: int,
    *,
    window: timedelta = timedelta(hours=1),
    now: datetime | None = None,
) -> int:
    """How many jobs the user enqueued within ``window`` (for rate limits)."""
    since = (now or utcnow()) - window
    async with db.session() as s:
        await require_user(s, user_id)
        count = await s.scalar(
            select(func.count())
            .select_from(models.Job)
            .where(models.Job.owner_id == user_id, models.Job.created_at >= since)
        )
        return int(count or 0)


async def erase_user(db: Database, user_id: int) -> ErasedCounts:
    """Erase everything about a user: identities, jobs, results, settings and the user row."""
    async with db.transaction() as s:
        await require_user(s, user_id)
        job_ids = select(models.Job.id).where(models.Job.owner_id == user_id)
        results = await _delete(s, delete(models.Result).where(models.Result.job_id.in_(job_ids)))
        jobs = await _delete(s, delete(models.Job).where(models.Job.owner_id == user_id))
        identities = await _delete(
            s, delete(models.Identity).where(models.Identity.owner_id == user_id)
        )
        users = await _delete(s, delete(models.User).where(models.User.id == user_id))
    counts = ErasedCounts(identities=identities, jobs=jobs, results=results, users=users)
    log.info("erased user %s: %s", user_id, counts)
    return counts


async def _delete(s: AsyncSession, stmt: Any) -> int:
    result = await s.execute(stmt.execution_options(synchronize_session=False))
    return int(typing.cast(CursorResult[Any], result).rowcount or 0)


__all__ = [
    "ban_user",
    "erase_user",
    "find_user",
    "get_or_create_user",
    "get_settings",
    "get_user",
    "has_consented",
    "is_banned",
    "recent_job_count",
    "record_consent",
    "require_user",
    "set_banned",
    "unban_user",
    "update_settings",
]
