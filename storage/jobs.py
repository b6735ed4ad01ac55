"""The job queue: every job state change is one named, guarded function in this module.

Life: queued → running → done | failed | cancelled (see storage.schemas.JobState). Worker-side
changes are guarded by ``state='running' AND lease_owner=:worker``, so a worker that lost its
lease can never finish a job twice. ``worker_id`` must be unique per worker process.

Public API (all async, ``db`` first):
    enqueue(db, owner_id, params, *, delivery=None, input_blob=None, max_attempts=None,
            max_active=None) -> Enqueued                        (NotFound, Banned, QueueFull)
    claim(db, worker_id, *, kinds=None, lease_seconds=None, reap=True, now=None)
            -> JobRecord | None                                 (fair order: storage.fairness)
    heartbeat(db, job_id, worker_id, *, lease_seconds=None) -> bool   (cancel wanted; LeaseLost)
    progress(db, job_id, worker_id, step, total, *, preview=None, lease_seconds=None) -> bool
    finish(db, job_id, worker_id, results) -> bool              (False: lease lost, nothing written)
    fail(db, job_id, worker_id, user_message, detail=None, *, retry=False) -> bool
    mark_cancelled(db, job_id, worker_id) -> bool               (worker stopped on a cancel request)
    cancel(db, owner_id, job_id) -> JobState                    (NotFound, InvalidState)
    requeue_expired(db, *, now=None) -> RequeueReport
    mark_delivered(db, job_id) -> bool                          (idempotent)
    prune(db, *, older_than_days, now=None) -> PruneReport
Reads (storage.job_queries, re-exported here):
    get_job, list_jobs, count_active, queue_position, undelivered
"""

from __future__ import annotations

import json
import logging
import typing
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    String,
    cast,
    delete,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from storage import fairness, models
from storage.db import Database
from storage.errors import Banned, InvalidState, LeaseLost, NameTaken, NotFound, QueueFull
from storage.job_queries import (
    FINISHED,
    count_active,
    get_job,
    list_jobs,
    queue_position,
    undelivered,
)
from storage.models import utcnow
from storage.records import (
    Enqueued,
    JobRecord,
    Params,
    PruneReport,
    RequeueReport,
    ResultData,
)
from storage.schemas import (
    Delivery,
    FaceMode,
    FaceParams,
    JobKind,
    JobState,
    ResultKind,
    dump_params,
    load_params,
)
from storage.users import require_user

log = logging.getLogger(__name__)

Job = models.Job
QUEUED, RUNNING = JobState.QUEUED.value, JobState.RUNNING.value
LOST_WORKER = ("The job failed: its worker stopped responding (tried ", " times).")


# ---- enqueue ---------------------------------------------------------------------------------


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
    """Insert a validated job; refuses banned users and users over their active-job cap."""
    envelope = json.loads(dump_params(params))
    typed = load_params(envelope)  # re-validates, also objects built without validation
    if isinstance(typed, FaceParams) and not input_blob:
        raise ValueError("face jobs need the uploaded image in input_blob")
    limit = db.limits.max_active_jobs if max_active is None else max_active
    async with db.transaction() as s:
        user = await require_user(s, owner_id)
        if user.banned:
            raise Banned()
        await _check_cap(s, owner_id, limit)
        await _check_references(s, owner_id, typed)
        row = _new_job(owner_id, typed.kind.value, envelope, delivery, input_blob)
        row.max_attempts = max_attempts or db.limits.max_attempts
        s.add(row)
        await s.flush()
        user.jobs_total += 1
        position = await fairness.queue_position(s, row) or 1
    log.info("job %s queued: %s for user %s, position %s", row.id, row.kind, owner_id, position)
    return Enqueued(job_id=row.id, position=position)


async def _check_cap(s: AsyncSession, owner_id: int, limit: int) -> None:
    active = await s.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.owner_id == owner_id, Job.state.in_([QUEUED, RUNNING]))
    )
    if int(active or 0) >= limit:
        raise QueueFull(
            f"You already have {limit} jobs waiting or running; "
            "wait for one to finish or cancel one."
        )


async def _check_references(s: AsyncSession, owner_id: int, params: Any) -> None:
    """Faces named or referenced by id must belong to the owner (a foreign id = unknown)."""
    ident = models.Identity
    if isinstance(params, FaceParams):
        found = await s.scalar(
            select(ident.id).where(
                ident.owner_id == owner_id, func.lower(ident.name) == params.name.lower()
            )
        )
        if params.mode is FaceMode.ADD and found is not None:
            raise NameTaken(f"You already have a face named '{params.name}'.")
        if params.mode is FaceMode.MORE and found is None:
            raise NotFound(f"You have no face named '{params.name}'.")
        return
    row = await s.get(ident, params.identity_id)
    if row is None or row.owner_id != owner_id:
        raise NotFound("That face does not exist.")


def _new_job(
    owner_id: int,
    kind: str,
    envelope: dict[str, Any],
    delivery: Delivery | None,
    input_blob: bytes | None,
) -> models.Job:
    now = utcnow()
    return models.Job(
        owner_id=owner_id,
        kind=kind,
        params=envelope,
        input_blob=input_blob,
        state=QUEUED,
        attempts=0,
        progress_step=0,
        progress_total=0,
        cancel_requested=False,
        delivery_platform=delivery.platform if delivery else None,
        delivery_channel=delivery.channel_id if delivery else None,
        delivery_message=delivery.message_ref if delivery else None,
        delivery_extra=dict(delivery.extra) if delivery else {},
        delivered=False,
        created_at=now,
        updated_at=now,
    )


# ---- worker side -----------------------------------------------------------------------------


def _held(job_id: int, worker_id: str) -> list[ColumnElement[bool]]:
    """The lease guard: the job is running and leased by this worker."""
    return [Job.id == job_id, Job.state == RUNNING, Job.lease_owner == worker_id]


async def _guarded(
    s: AsyncSession, where: Sequence[ColumnElement[bool]], values: Any, ret: Any
) -> Any:
    stmt = update(Job).where(*where).values(**values).returning(ret)
    return await s.scalar(stmt.execution_options(synchronize_session=False))


def _lease(db: Database, lease_seconds: float | None) -> timedelta:
    return timedelta(seconds=lease_seconds or db.limits.lease_seconds)


async def claim(
    db: Database,
    worker_id: str,
    *,
    kinds: Collection[JobKind] | None = None,
    lease_seconds: float | None = None,
    reap: bool = True,
    now: datetime | None = None,
) -> JobRecord | None:
    """Atomically take the next job in fair order (storage.fairness) and lease it.

    PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED`` then a guarded UPDATE; SQLite: one
    ``UPDATE … WHERE id = (SELECT …) AND state='queued' RETURNING`` inside BEGIN IMMEDIATE.
    With ``reap`` expired leases are re-queued first. Returns None when nothing is queued.
    """
    if reap:
        await requeue_expired(db, now=now)
    now = now or utcnow()
    async with db.transaction() as s:
        row = await _claim_row(
            s, db.dialect, worker_id, kinds, now, now + _lease(db, lease_seconds)
        )
        if row is None:
            return None
        await s.execute(
            update(models.User).where(models.User.id == row.owner_id).values(last_claim_at=now)
        )
        record = JobRecord.of(row, with_input=True)
    log.info("job %s claimed by %s (attempt %s)", record.id, worker_id, record.attempts)
    return record


async def _claim_row(
    s: AsyncSession,
    dialect: str,
    worker_id: str,
    kinds: Collection[JobKind] | None,
    now: datetime,
    expires: datetime,
) -> models.Job | None:
    if dialect == "sqlite":
        target = Job.id == fairness.candidate_query(dialect, kinds).scalar_subquery()
    else:
        job_id = await s.scalar(fairness.candidate_query(dialect, kinds, lock=True))
        if job_id is None:
            return None
        target = Job.id == job_id
    values = {
        "state": RUNNING,
        "lease_owner": worker_id,
        "lease_expires": expires,
        "attempts": Job.attempts + 1,
        "progress_step": 0,
        "progress_total": 0,
        "started_at": now,
        "updated_at": now,
    }
    stmt = update(Job).where(target, Job.state == QUEUED).values(**values).returning(Job)
    result = await s.scalars(stmt.execution_options(synchronize_session=False))
    return result.one_or_none()


async def _touch(
    db: Database, job_id: int, worker_id: str, values: dict[str, Any], preview: bytes | None
) -> bool:
    async with db.transaction() as s:
        cancel = await _guarded(s, _held(job_id, worker_id), values, Job.cancel_requested)
        if cancel is None:
            raise LeaseLost(f"Job {job_id} is no longer held by worker {worker_id}.")
        if preview is not None:
            await _store_preview(s, job_id, preview)
    return bool(cancel)


async def _store_preview(s: AsyncSession, job_id: int, png: bytes) -> None:
    await s.execute(
        delete(models.Result).where(
            models.Result.job_id == job_id, models.Result.kind == ResultKind.PREVIEW.value
        )
    )
    s.add(models.Result(job_id=job_id, index=0, kind=ResultKind.PREVIEW.value, png=png))


async def heartbeat(
    db: Database, job_id: int, worker_id: str, *, lease_seconds: float | None = None
) -> bool:
    """Renew the lease; returns True when the owner asked to cancel. Raises LeaseLost."""
    values = {"lease_expires": utcnow() + _lease(db, lease_seconds)}
    return await _touch(db, job_id, worker_id, values, None)


async def progress(
    db: Database,
    job_id: int,
    worker_id: str,
    step: int,
    total: int,
    *,
    preview: bytes | None = None,
    lease_seconds: float | None = None,
) -> bool:
    """Record progress (and renew the lease, store a preview); True when cancel is wanted."""
    if not 0 <= step <= total:
        raise ValueError(f"progress step {step} must be within 0..{total}")
    now = utcnow()
    values = {
        "progress_step": step,
        "progress_total": total,
        "lease_expires": now + _lease(db, lease_seconds),
        "updated_at": now,
    }
    return await _touch(db, job_id, worker_id, values, preview)


def _check_results(results: Sequence[ResultData]) -> None:
    keys = [(r.kind, r.index) for r in results]
    if len(set(keys)) != len(keys):
        raise ValueError("results must have unique (kind, index) pairs")
    if any(not r.png for r in results) or any(r.kind is ResultKind.PREVIEW for r in results):
        raise ValueError("results need PNG bytes and cannot be previews")


def _closing(db: Database, state: JobState, now: datetime) -> dict[str, Any]:
    values: dict[str, Any] = {
        "state": state.value,
        "finished_at": now,
        "updated_at": now,
        "lease_expires": None,
    }
    if not db.limits.keep_inputs:
        values["input_blob"] = None
    return values


async def finish(db: Database, job_id: int, worker_id: str, results: Sequence[ResultData]) -> bool:
    """Write results and mark the job done, in one transaction.

    Returns False (and writes nothing) if this worker no longer holds the job.
    """
    _check_results(results)
    values = _closing(db, JobState.DONE, utcnow())
    values["progress_step"] = Job.progress_total
    async with db.transaction() as s:
        owner = await _guarded(s, _held(job_id, worker_id), values, Job.owner_id)
        if owner is None:
            log.warning("job %s: finish by %s refused, lease lost", job_id, worker_id)
            return False
        await _store_results(s, job_id, owner, results)
    log.info("job %s done by %s: %s results", job_id, worker_id, len(results))
    return True


async def _store_results(
    s: AsyncSession, job_id: int, owner_id: int, results: Sequence[ResultData]
) -> None:
    await s.execute(delete(models.Result).where(models.Result.job_id == job_id))
    s.add_all(
        models.Result(
            job_id=job_id,
            index=r.index,
            kind=r.kind.value,
            png=r.png,
            seed=r.seed,
            prompt=r.prompt,
            identity_score=r.identity_score,
        )
        for r in results
    )
    images = sum(1 for r in results if r.kind is ResultKind.IMAGE)
    await s.execute(
        update(models.User)
        .where(models.User.id == owner_id)
        .values(images_total=models.User.images_total + images)
    )


async def fail(
    db: Database,
    job_id: int,
    worker_id: str,
    user_message: str,
    detail: str | None = None,
    *,
    retry: bool = False,
) -> bool:
    """Fail the job with a one-line message for the user and a detail for the log.

    With ``retry`` the job is re-queued instead while attempts remain. Returns False if the
    worker no longer holds the job.
    """
    now = utcnow()
    async with db.transaction() as s:
        if retry:
            where = [*_held(job_id, worker_id), Job.attempts < Job.max_attempts]
            if await _guarded(s, where, _requeue_values(now, detail), Job.id) is not None:
                log.warning("job %s re-queued after error: %s", job_id, detail)
                return True
        values = _closing(db, JobState.FAILED, now)
        values.update(error_user=user_message, error_detail=detail)
        done = await _guarded(s, _held(job_id, worker_id), values, Job.id)
    if done is None:
        log.warning("job %s: fail by %s refused, lease lost", job_id, worker_id)
        return False
    log.info("job %s failed: %s (%s)", job_id, user_message, detail)
    return True


def _requeue_values(now: datetime, detail: str | None) -> dict[str, Any]:
    return {
        "state": QUEUED,
        "lease_owner": None,
        "lease_expires": None,
        "progress_step": 0,
        "progress_total": 0,
        "error_detail": detail,
        "updated_at": now,
    }


async def mark_cancelled(db: Database, job_id: int, worker_id: str) -> bool:
    """The worker stopped a running job because cancel was requested."""
    async with db.transaction() as s:
        values = _closing(db, JobState.CANCELLED, utcnow())
        done = await _guarded(s, _held(job_id, worker_id), values, Job.id)
    if done is not None:
        log.info("job %s cancelled while running", job_id)
    return done is not None


# ---- owner side and maintenance -----------------------------------------------------------


async def cancel(db: Database, owner_id: int, job_id: int) -> JobState:
    """Cancel a job: queued → cancelled at once; running → flagged (the worker stops soon).

    Returns the state afterwards (CANCELLED or RUNNING). NotFound for unknown or foreign
    jobs, InvalidState for finished ones.
    """
    now = utcnow()
    mine = [Job.id == job_id, Job.owner_id == owner_id]
    async with db.transaction() as s:
        values = _closing(db, JobState.CANCELLED, now)
        if await _guarded(s, [*mine, Job.state == QUEUED], values, Job.id) is not None:
            log.info("job %s cancelled before it ran", job_id)
            return JobState.CANCELLED
        flag = {"cancel_requested": True, "updated_at": now}
        if await _guarded(s, [*mine, Job.state == RUNNING], flag, Job.id) is not None:
            log.info("job %s: cancel requested while running", job_id)
            return JobState.RUNNING
        state = await s.scalar(select(Job.state).where(*mine))
    if state is None:
        raise NotFound(f"You have no job {job_id}.")
    raise InvalidState(f"Job {job_id} has already finished ({state}).")


async def requeue_expired(db: Database, *, now: datetime | None = None) -> RequeueReport:
    """Handle running jobs whose lease expired (their worker vanished).

    Cancel-requested ones become cancelled; those that used all attempts fail with a clear
    message; the rest go back to the queue (attempts are counted at each claim).
    """
    now = now or utcnow()
    expired = [Job.state == RUNNING, Job.lease_expires < now]
    async with db.transaction() as s:
        cancelled = await _ids(
            s, [*expired, Job.cancel_requested.is_(True)], _closing(db, JobState.CANCELLED, now)
        )
        failed = await _ids(s, [*expired, Job.attempts >= Job.max_attempts], _lost_values(db, now))
        requeued = await _ids(s, expired, _requeue_values(now, "lease expired"))
    report = RequeueReport(requeued=requeued, failed=failed, cancelled=cancelled)
    if requeued or failed or cancelled:
        log.warning("expired leases: %s", report)
    return report


def _lost_values(db: Database, now: datetime) -> dict[str, Any]:
    values = _closing(db, JobState.FAILED, now)
    values["error_user"] = (
        literal(LOST_WORKER[0]) + cast(Job.attempts, String) + literal(LOST_WORKER[1])
    )
    values["error_detail"] = "lease expired on the last attempt"
    return values


async def _ids(
    s: AsyncSession, where: Sequence[ColumnElement[bool]], values: dict[str, Any]
) -> list[int]:
    stmt = update(Job).where(*where).values(**values).returning(Job.id)
    result = await s.scalars(stmt.execution_options(synchronize_session=False))
    return sorted(result.all())


async def mark_delivered(db: Database, job_id: int) -> bool:
    """Mark a finished job delivered; True only for the call that changed it (idempotent)."""
    where = [Job.id == job_id, Job.delivered.is_(False), Job.state.in_(FINISHED)]
    async with db.transaction() as s:
        changed = await _guarded(s, where, {"delivered": True}, Job.id)
    return changed is not None


async def prune(
    db: Database, *, older_than_days: float, now: datetime | None = None
) -> PruneReport:
    """Delete finished jobs (and their results) older than the retention, and old results."""
    cutoff = (now or utcnow()) - timedelta(days=older_than_days)
    finished = select(Job.id).where(Job.state.in_(FINISHED))
    old_jobs = finished.where(Job.finished_at < cutoff)
    R = models.Result
    async with db.transaction() as s:
        results = await _count_deleted(
            s,
            delete(R).where(
                R.job_id.in_(finished), (R.created_at < cutoff) | R.job_id.in_(old_jobs)
            ),
        )
        jobs = await _count_deleted(s, delete(Job).where(Job.id.in_(old_jobs)))
    report = PruneReport(jobs=jobs, results=results)
    log.info("pruned data older than %s days: %s", older_than_days, report)
    return report


async def _count_deleted(s: AsyncSession, stmt: Any) -> int:
    result = await s.execute(stmt.execution_options(synchronize_session=False))
    return int(typing.cast(CursorResult[Any], result).rowcount or 0)


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
