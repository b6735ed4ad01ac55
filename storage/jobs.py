"""The job queue: every job state change is one named, guarded function.

Life: queued → running → done | failed | cancelled (storage.schemas.JobState). Worker-side
changes (storage.leases) are guarded by ``state='running' AND lease_owner=:worker``, so a
worker that lost its lease can never finish a job twice. ``worker_id`` must be unique per
worker process. Claim order is defined in storage.fairness.

Public API (all async, ``db`` first; everything is importable from this module):
    enqueue(db, owner_id, params, *, delivery=None, input_blob=None, max_attempts=None,
            max_active=None) -> Enqueued                        (NotFound, Banned, QueueFull,
                                                                 NameTaken)
    cancel(db, owner_id, job_id) -> JobState                    (NotFound, InvalidState)
    mark_delivered(db, job_id) -> bool                          (idempotent)
    prune(db, *, older_than_days, now=None) -> PruneReport
  worker side (storage.leases):
    claim(db, worker_id, *, kinds=None, lease_seconds=None, reap=True, now=None)
        -> JobRecord | None
    heartbeat(db, job_id, worker_id, *, lease_seconds=None) -> bool   (cancel wanted; LeaseLost)
    progress(db, job_id, worker_id, step, total, *, preview=None, lease_seconds=None) -> bool
    finish(db, job_id, worker_id, results) -> bool              (False: lease lost)
    fail(db, job_id, worker_id, user_message, detail=None, *, retry=False) -> bool
    mark_cancelled(db, job_id, worker_id) -> bool
    requeue_expired(db, *, now=None) -> RequeueReport
  reads (storage.job_queries):
    get_job(db, job_id, *, owner_id=None, with_input=False) -> JobRecord
    list_jobs(db, *, owner_id=None, states=None, platform=None, updated_after=None, limit=50)
    count_active(db, owner_id) -> int
    queue_position(db, job_id) -> int | None
    undelivered(db, *, platforms=None, limit=100) -> list[JobRecord]
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage import fairness
from storage.db import Database
from storage.errors import Banned, InvalidState, NameTaken, NotFound, QueueFull
from storage.job_queries import count_active, get_job, list_jobs, queue_position, undelivered
from storage.job_sql import (
    FINISHED,
    IDENTITIES,
    JOBS,
    QUEUED,
    RESULTS,
    RUNNING,
    USERS,
    J,
    closing,
    guarded,
    rowcount,
)
from storage.leases import (
    claim,
    fail,
    finish,
    heartbeat,
    mark_cancelled,
    progress,
    requeue_expired,
)
from storage.models import utcnow
from storage.records import Enqueued, Params, PruneReport
from storage.schemas import Delivery, FaceMode, FaceParams, JobState, dump_params, load_params

log = logging.getLogger(__name__)


async def enqueue(
    db: Database,
    owner_id: int,
    params: Params,
    *,
    delivery: Delivery | None = None,
    input_blob: bytes | None = None,
    max_attempts: int | None = None,
    max_active: int | None = None,
) -> Enqueued:
    """Insert a validated job and return its id and estimated queue position.

    Refuses unknown or banned users, users at their cap of queued+running jobs, faces that
    are not the user's, and face jobs without the uploaded image.
    """
    envelope = json.loads(dump_params(params))
    typed = load_params(envelope)  # re-validates objects built without validation too
    if isinstance(typed, FaceParams) and not input_blob:
        raise ValueError("face jobs need the uploaded image in input_blob")
    limit = db.limits.max_active_jobs if max_active is None else max_active
    values = _new_job(owner_id, typed.kind.value, envelope, delivery, input_blob)
    values["max_attempts"] = max_attempts or db.limits.max_attempts
    async with db.transaction() as s:
        await _check_user(s, owner_id)
        await _check_cap(s, owner_id, limit)
        await _check_references(s, owner_id, typed)
        job_id = await s.scalar(insert(JOBS).values(**values).returning(J.id))
        assert job_id is not None
        total = USERS.c.jobs_total + 1
        await s.execute(update(USERS).where(USERS.c.id == owner_id).values(jobs_total=total))
        position = await fairness.position_of(s, owner_id, job_id, values["created_at"])
    log.info("job %s queued: %s for user %s, position %s", job_id, typed.kind, owner_id, position)
    return Enqueued(job_id=job_id, position=position)


async def _check_user(s: AsyncSession, owner_id: int) -> None:
    query = select(USERS.c.banned).where(USERS.c.id == owner_id).with_for_update()
    banned = await s.scalar(query)  # the lock makes the cap check race-free on PostgreSQL
    if banned is None:
        raise NotFound("Unknown user.", detail=f"user {owner_id}")
    if banned:
        raise Banned()


async def _check_cap(s: AsyncSession, owner_id: int, limit: int) -> None:
    active = await s.scalar(
        select(func.count())
        .select_from(JOBS)
        .where(J.owner_id == owner_id, J.state.in_([QUEUED, RUNNING]))
    )
    if int(active or 0) >= limit:
        raise QueueFull(
            f"You already have {limit} jobs waiting or running; "
            "wait for one to finish or cancel one."
        )


async def _check_references(s: AsyncSession, owner_id: int, params: Params) -> None:
    """Faces named or referenced by id must belong to the owner (a foreign id = unknown)."""
    ident = IDENTITIES.c
    if not isinstance(params, FaceParams):
        owner = await s.scalar(select(ident.owner_id).where(ident.id == params.identity_id))
        if owner is None or owner != owner_id:
            raise NotFound("That face does not exist.")
        return
    found = await s.scalar(
        select(ident.id).where(
            ident.owner_id == owner_id, func.lower(ident.name) == params.name.lower()
        )
    )
    if params.mode is FaceMode.ADD and found is not None:
        raise NameTaken(f"You already have a face named '{params.name}'.")
    if params.mode is FaceMode.MORE and found is None:
        raise NotFound(f"You have no face named '{params.name}'.")


def _new_job(
    owner_id: int,
    kind: str,
    envelope: dict[str, Any],
    delivery: Delivery | None,
    input_blob: bytes | None,
) -> dict[str, Any]:
    now = utcnow()
    return {
        "owner_id": owner_id,
        "kind": kind,
        "params": envelope,
        "input_blob": input_blob,
        "state": QUEUED,
        "attempts": 0,
        "progress_step": 0,
        "progress_total": 0,
        "cancel_requested": False,
        "delivery_platform": delivery.platform if delivery else None,
        "delivery_channel": delivery.channel_id if delivery else None,
        "delivery_message": delivery.message_ref if delivery else None,
        "delivery_extra": dict(delivery.extra) if delivery else {},
        "delivered": False,
        "created_at": now,
        "updated_at": now,
    }


async def cancel(db: Database, owner_id: int, job_id: int) -> JobState:
    """Cancel a job: queued → cancelled at once; running → flagged (the worker stops soon).

    Returns the state afterwards (CANCELLED or RUNNING). NotFound for unknown or foreign
    jobs, InvalidState for finished ones.
    """
    now = utcnow()
    mine = [J.id == job_id, J.owner_id == owner_id]
    async with db.transaction() as s:
        values = closing(db, JobState.CANCELLED, now)
        if await guarded(s, [*mine, J.state == QUEUED], values, J.id) is not None:
            log.info("job %s cancelled before it ran", job_id)
            return JobState.CANCELLED
        flag = {"cancel_requested": True, "updated_at": now}
        if await guarded(s, [*mine, J.state == RUNNING], flag, J.id) is not None:
            log.info("job %s: cancel requested while running", job_id)
            return JobState.RUNNING
        state = await s.scalar(select(J.state).where(*mine))
    if state is None:
        raise NotFound(f"You have no job {job_id}.")
    raise InvalidState(f"Job {job_id} has already finished ({state}).")


async def mark_delivered(db: Database, job_id: int) -> bool:
    """Mark a finished job delivered; True only for the call that changed it (idempotent)."""
    where = [J.id == job_id, J.delivered.is_(False), J.state.in_(FINISHED)]
    async with db.transaction() as s:
        changed = await guarded(s, where, {"delivered": True}, J.id)
    return changed is not None


async def prune(
    db: Database, *, older_than_days: float, now: datetime | None = None
) -> PruneReport:
    """Delete finished jobs (with their results) and results older than the retention."""
    cutoff = (now or utcnow()) - timedelta(days=older_than_days)
    finished = select(J.id).where(J.state.in_(FINISHED))
    old_jobs = finished.where(J.finished_at < cutoff)
    res = RESULTS.c
    stale = (res.created_at < cutoff) | res.job_id.in_(old_jobs)
    async with db.transaction() as s:
        results = await rowcount(s, delete(RESULTS).where(res.job_id.in_(finished), stale))
        jobs = await rowcount(s, delete(JOBS).where(J.id.in_(old_jobs)))
    report = PruneReport(jobs=jobs, results=results)
    log.info("pruned data older than %s days: %s", older_than_days, report)
    return report


__all__ = [
    "cancel",
    "claim",
    "count_active",
    "enqueue",
    "fail",
    "finish",
    "get_job",
    "heartbeat",
    "list_jobs",
    "mark_cancelled",
    "mark_delivered",
    "progress",
    "prune",
    "queue_position",
    "requeue_expired",
    "undelivered",
]
