"""The job queue: every job state change is one named, guarded function.

Life: queued → running → done | failed | cancelled (storage.schemas.JobState). Worker-side
changes (storage.leases) are guarded by ``state='running' AND lease_owner=:worker``, so a
worker that lost its lease can never finish a job twice. ``worker_id`` must be unique per
worker process. Claim order is defined in storage.fairness.

Public API (all async, ``db`` first; everything is importable from this module):
    enqueue(db, owner_id, params, *, delivery=None, input_blob=None, input_from=None,
            max_attempts=None, max_active=None) -> Enqueued     (NotFound, Banned, QueueFull,
                                                                 NameTaken)
    cancel(db, owner_id, job_id) -> JobState                    (NotFound, InvalidState)
    delete_job(db, owner_id, job_id) -> None                    (NotFound, InvalidState)
    mark_delivered(db, job_id) -> bool                          (idempotent)
    set_delivery_ref(db, job_id, *, message_ref=None, extra=None) -> bool
    prune(db, *, older_than_days, now=None) -> PruneReport
  face requests held for the owner's consent (storage.job_holds):
    hold(db, owner_id, params, *, delivery=None, input_blob) -> int     (NotFound, Banned,
                                                                          NameTaken)
    release_held(db, owner_id, *, max_attempts=None, max_active=None) -> Enqueued | None
    drop_held(db, owner_id) -> int

Uploads (``input_blob``) are dropped when a job ends, unless the host keeps inputs, with one
exception: a face job refused because its photo shows several faces (it fails with a
``Refusal`` of code SEVERAL_FACES and a numbered preview, see storage.leases.fail) keeps its
upload until the owner answers with a face choice — ``enqueue(..., input_from=<that job>)``
moves the upload to the new job — or until retention prunes the job. A face request held for
consent (storage.job_holds) keeps its upload the same way. Both are the owner's own pending
uploads, erased by erase_user too.
  worker side (storage.leases, storage.job_finish):
    claim(db, worker_id, *, kinds=None, lease_seconds=None, reap=True, now=None)
        -> JobRecord | None          (a job whose row cannot be read fails with UNREADABLE)
    heartbeat(db, job_id, worker_id, *, lease_seconds=None) -> bool   (cancel wanted; LeaseLost)
    progress(db, job_id, worker_id, step, total, *, preview=None, lease_seconds=None) -> bool
    finish(db, job_id, worker_id, results, *, note=None, identity=None) -> bool
        (False: lease lost, nothing written; ``identity`` saves a face job's face with it)
    fail(db, job_id, worker_id, user_message, detail=None, *, retry=False, note=None,
         refusal=None, preview=None) -> bool     (refusal: storage.schemas.Refusal)
    release(db, job_id, worker_id) -> bool   (graceful stop: re-queued, attempt not counted)
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

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.db import Database
from storage.errors import InvalidState, NotFound
from storage.job_finish import finish
from storage.job_holds import drop_held, hold, release_held
from storage.job_insert import insert_job, new_job, validated
from storage.job_queries import count_active, get_job, list_jobs, queue_position, undelivered
from storage.job_sql import (
    FINISHED,
    JOBS,
    QUEUED,
    RESULTS,
    RUNNING,
    J,
    closing,
    guarded,
    rowcount,
)
from storage.leases import (
    UNREADABLE,
    claim,
    fail,
    heartbeat,
    mark_cancelled,
    progress,
    release,
    requeue_expired,
)
from storage.models import utcnow
from storage.records import Enqueued, Params, PruneReport
from storage.schemas import Delivery, FaceParams, JobKind, JobState

log = logging.getLogger(__name__)


async def enqueue(
    db: Database,
    owner_id: int,
    params: Params,
    *,
    delivery: Delivery | None = None,
    input_blob: bytes | None = None,
    input_from: int | None = None,
    max_attempts: int | None = None,
    max_active: int | None = None,
) -> Enqueued:
    """Insert a validated job and return its id and estimated queue position.

    Refuses unknown or banned users, users at their cap of queued+running jobs, faces that
    are not the user's, and face jobs without the uploaded image. ``input_from`` names one of
    the owner's finished face jobs that kept its upload (several faces found): the upload
    moves from that job to this one, in the same transaction (NotFound once it is gone).
    """
    typed, envelope = validated(params)
    if input_from is not None and input_blob is not None:
        raise ValueError("give input_blob or input_from, not both")
    if isinstance(typed, FaceParams) and not (input_blob or input_from is not None):
        raise ValueError("face jobs need the uploaded image in input_blob")
    limit = db.limits.max_active_jobs if max_active is None else max_active
    async with db.transaction() as s:
        if input_from is not None:
            input_blob = await _take_input(s, db, owner_id, input_from)
        values = new_job(owner_id, typed.kind.value, envelope, delivery, input_blob)
        values["max_attempts"] = max_attempts or db.limits.max_attempts
        queued = await insert_job(s, owner_id, typed, values, limit)
    log.info(
        "job %s queued: %s for user %s, position %s",
        *(queued.job_id, typed.kind, owner_id, queued.position),
    )
    return queued


async def _take_input(s: AsyncSession, db: Database, owner_id: int, job_id: int) -> bytes:
    """The upload a finished face job of the owner kept; cleared there unless inputs are kept."""
    mine = [J.id == job_id, J.owner_id == owner_id, J.kind == JobKind.FACE.value]
    query = select(J.input_blob).where(*mine, J.state.in_(FINISHED)).with_for_update()
    data = await s.scalar(query)
    if not data:
        raise NotFound(f"The photo of job {job_id} is no longer stored; send it again.")
    if not db.limits.keep_inputs:
        await s.execute(update(JOBS).where(*mine).values(input_blob=None))
    return bytes(data)


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


async def delete_job(db: Database, owner_id: int, job_id: int) -> None:
    """Delete one of the owner's finished jobs with its results, in one transaction.

    Only finished jobs (done, failed, cancelled) can be deleted: a queued or running one
    raises InvalidState (cancel it first; a worker may be writing its results). An unknown
    or foreign job raises NotFound.
    """
    mine = [J.id == job_id, J.owner_id == owner_id]
    async with db.transaction() as s:
        state = await s.scalar(select(J.state).where(*mine).with_for_update())
        if state is None:
            raise NotFound(f"You have no job {job_id}.")
        if state not in FINISHED:
            raise InvalidState(f"Job {job_id} is still {state}; cancel it first.")
        images = await rowcount(s, delete(RESULTS).where(RESULTS.c.job_id == job_id))
        await s.execute(delete(JOBS).where(*mine))
    log.info("job %s of user %s deleted by its owner (%s results)", job_id, owner_id, images)


async def set_delivery_ref(
    db: Database,
    job_id: int,
    *,
    message_ref: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> bool:
    """Record what an adapter learnt after sending a job's receipt (e.g. its message id).

    ``message_ref`` replaces the stored reference when given; ``extra`` is merged into the
    stored extra entries. False when the job is unknown or has no delivery target.
    """
    async with db.transaction() as s:
        query = select(J.delivery_platform, J.delivery_channel, J.delivery_message)
        row = (
            await s.execute(
                query.add_columns(J.delivery_extra).where(J.id == job_id).with_for_update()
            )
        ).one_or_none()
        if row is None or row.delivery_platform is None:
            return False
        merged = Delivery(
            platform=row.delivery_platform,
            channel_id=row.delivery_channel,
            message_ref=row.delivery_message if message_ref is None else message_ref,
            extra={**(row.delivery_extra or {}), **(extra or {})},
        )
        values = {"delivery_message": merged.message_ref, "delivery_extra": dict(merged.extra)}
        await s.execute(update(JOBS).where(J.id == job_id).values(**values))
    return True


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
    "UNREADABLE",
    "cancel",
    "claim",
    "count_active",
    "delete_job",
    "drop_held",
    "enqueue",
    "fail",
    "finish",
    "get_job",
    "heartbeat",
    "hold",
    "list_jobs",
    "mark_cancelled",
    "mark_delivered",
    "progress",
    "prune",
    "queue_position",
    "release",
    "release_held",
    "requeue_expired",
    "set_delivery_ref",
    "undelivered",
]
