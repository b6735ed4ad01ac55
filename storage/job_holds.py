"""Face requests held for their owner's consent (re-exported by storage.jobs).

A first-time user's face request waits for them to accept the consent text. It is kept in
the database, not in the bot's memory, so an Accept pressed after a bot restart still queues
it: a held request is a face job row in a finished state (``cancelled``, delivered, marked
by :data:`~storage.records.HELD_DETAIL`) with its upload, so workers never claim it, the
delivery loop never sends it, retention prunes it and erase_user erases it.

Public API (all async, ``db`` first):
    hold(db, owner_id, params, *, delivery=None, input_blob) -> int    (NotFound, Banned,
                                                                        NameTaken)
    release_held(db, owner_id, *, max_attempts=None, max_active=None) -> Enqueued | None
    drop_held(db, owner_id) -> int
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import ColumnElement, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.db import Database
from storage.job_insert import check_references, check_user, insert_job, new_job, validated
from storage.job_sql import JOBS, J, rowcount
from storage.records import HELD_DETAIL, Enqueued
from storage.schemas import Delivery, FaceParams, JobKind, JobState, load_params

log = logging.getLogger(__name__)

_DELIVERY = ("delivery_platform", "delivery_channel", "delivery_message", "delivery_extra")


def _held(owner_id: int) -> list[ColumnElement[bool]]:
    return [
        J.owner_id == owner_id,
        J.state == JobState.CANCELLED.value,
        J.error_detail == HELD_DETAIL,
    ]


async def hold(
    db: Database,
    owner_id: int,
    params: FaceParams,
    *,
    delivery: Delivery | None = None,
    input_blob: bytes,
) -> int:
    """Keep a face request and its upload until the owner answers; returns its id.

    Checked as :func:`storage.jobs.enqueue` checks it (the owner, the face name), but not
    queued. It replaces an earlier held request of the same owner.
    """
    typed, envelope = validated(params)
    if not isinstance(typed, FaceParams) or not input_blob:
        raise ValueError("only a face request with its uploaded image can be held")
    values = _held_values(db, owner_id, envelope, delivery, input_blob)
    async with db.transaction() as s:
        await check_user(s, owner_id)
        await check_references(s, owner_id, typed)
        await s.execute(delete(JOBS).where(*_held(owner_id)))
        job_id = await s.scalar(insert(JOBS).values(**values).returning(J.id))
    assert job_id is not None
    log.info("job %s held for the consent of user %s", job_id, owner_id)
    return int(job_id)


def _held_values(
    db: Database,
    owner_id: int,
    envelope: dict[str, Any],
    delivery: Delivery | None,
    input_blob: bytes,
) -> dict[str, Any]:
    values = new_job(owner_id, JobKind.FACE.value, envelope, delivery, None)
    values.update(
        input_blob=input_blob,
        state=JobState.CANCELLED.value,
        error_detail=HELD_DETAIL,
        delivered=True,
        finished_at=values["created_at"],
        max_attempts=db.limits.max_attempts,
    )
    return values


async def release_held(
    db: Database,
    owner_id: int,
    *,
    max_attempts: int | None = None,
    max_active: int | None = None,
) -> Enqueued | None:
    """Queue the owner's held request and remove it, in one transaction; None if none is held.

    The new job passes every check of :func:`storage.jobs.enqueue` (ban, cap, face name).
    """
    limit = db.limits.max_active_jobs if max_active is None else max_active
    async with db.transaction() as s:
        await check_user(s, owner_id)  # the user's row lock first, as enqueue takes it
        row = await _held_row(s, owner_id)
        if row is None:
            return None
        values = new_job(owner_id, row.kind, row.params, None, row.input_blob)
        values.update({k: getattr(row, k) for k in _DELIVERY})
        values["max_attempts"] = max_attempts or db.limits.max_attempts
        queued = await insert_job(s, owner_id, load_params(row.params), values, limit)
        await s.execute(delete(JOBS).where(J.id == row.id))
    log.info("job %s (held as %s) queued after consent", queued.job_id, row.id)
    return queued


async def _held_row(s: AsyncSession, owner_id: int) -> Any:
    query = select(JOBS).where(*_held(owner_id)).order_by(J.id.desc()).limit(1)
    return (await s.execute(query.with_for_update())).one_or_none()


async def drop_held(db: Database, owner_id: int) -> int:
    """Delete the owner's held request and its upload (consent declined); how many."""
    async with db.transaction() as s:
        dropped = await rowcount(s, delete(JOBS).where(*_held(owner_id)))
    if dropped:
        log.info("held face request of user %s dropped", owner_id)
    return dropped
