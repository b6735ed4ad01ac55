"""Worker-side job transitions, each guarded by the worker's lease (re-exported by storage.jobs).

Public API (all async, ``db`` first):
    claim(db, worker_id, *, kinds=None, lease_seconds=None, reap=True, now=None)
        -> JobRecord | None                 (jobs whose row cannot be read fail with UNREADABLE)
    heartbeat(db, job_id, worker_id, *, lease_seconds=None) -> bool    (cancel wanted; LeaseLost)
    progress(db, job_id, worker_id, step, total, *, preview=None, lease_seconds=None) -> bool
    finish(db, job_id, worker_id, results, *, note=None, identity=None) -> bool
        (storage.job_finish; False: lease lost, nothing written)
    fail(db, job_id, worker_id, user_message, detail=None, *, retry=False, note=None,
         refusal=None, preview=None) -> bool
    release(db, job_id, worker_id) -> bool   (back to the queue, the attempt not counted)
    mark_cancelled(db, job_id, worker_id) -> bool      (stopped because cancel was requested)
    requeue_expired(db, *, now=None) -> RequeueReport

Attempts are counted by claim. A lease that expires (the worker died) keeps the count, so a
job that kills its workers fails after ``max_attempts``; ``release`` (a graceful stop) and
a claim that finds the row unreadable are the only transitions that touch the count again.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    String,
    case,
    cast,
    delete,
    insert,
    literal,
    null,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from storage import fairness
from storage.db import Database
from storage.errors import LeaseLost
from storage.job_finish import check_note
from storage.job_sql import (
    JOBS,
    QUEUED,
    RESULTS,
    RUNNING,
    J,
    changed_ids,
    closing,
    elapsed,
    guarded,
    guarded_row,
    held,
    requeue_values,
)
from storage.models import utcnow
from storage.records import JobRecord, RequeueReport
from storage.schemas import JobKind, JobState, Refusal, ResultKind

log = logging.getLogger(__name__)

UNREADABLE = "This request could not be read; please send it again."
LOST_WORKER = ("The job failed: its worker stopped responding (tried ", " times).")


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
    With ``reap`` expired leases are first handled as by :func:`requeue_expired`, in the
    same transaction. A job whose stored parameters cannot be read fails on the spot with
    :data:`UNREADABLE` (the parse error goes to its ``error_detail``) and the next job is
    taken instead, so such a job never blocks the queue; reads still return it (``params``
    None) so that its failure is delivered. Returns None when nothing is queued.
    """
    lease = _lease(db, lease_seconds)
    async with db.transaction() as s:
        if reap:
            _log_reaped(await _reap(s, db, now or utcnow()))
        elif db.is_sqlite:
            await s.execute(select(literal(1)))  # BEGIN IMMEDIATE: take the write lock now
        record = await _claim_readable(s, db, worker_id, kinds, now, lease)
    if record is not None:
        log.info("job %s claimed by %s (attempt %s)", record.id, worker_id, record.attempts)
    return record


async def _claim_readable(
    s: AsyncSession,
    db: Database,
    worker_id: str,
    kinds: Collection[JobKind] | None,
    now: datetime | None,
    lease: timedelta,
) -> JobRecord | None:
    """The first claimable job whose row parses; unreadable ones are failed on the way.

    Only kinds this code knows are claimed (``kinds`` narrows them): a job of a kind added by
    a newer version waits for a worker that knows it.
    """
    known = list(JobKind) if kinds is None else kinds
    while (row := await _claim_row(s, db.dialect, worker_id, known, now, lease)) is not None:
        try:
            return JobRecord.of(row, with_input=True, strict=True)
        except ValueError as exc:  # ParamsError, or another stored field that does not parse
            await _fail_unreadable(s, db, row.id, f"{type(exc).__name__}: {exc}")
    return None


async def _fail_unreadable(s: AsyncSession, db: Database, job_id: int, detail: str) -> None:
    values = closing(db, JobState.FAILED, utcnow())
    values.update(error_user=UNREADABLE, error_detail=f"unreadable job: {detail}")
    await s.execute(update(JOBS).where(J.id == job_id).values(**values))
    log.error("job %s failed at claim, its row cannot be read: %s", job_id, detail)


async def _claim_row(
    s: AsyncSession,
    dialect: str,
    worker_id: str,
    kinds: Collection[JobKind] | None,
    now: datetime | None,
    lease: timedelta,
) -> Any:
    """The claimed row. The clock is read only once the lock is held (SQLite: the whole
    database, taken by the transaction's first statement), so claim times are in commit
    order: they order users' turns (storage.fairness)."""
    target: ColumnElement[bool]
    if dialect == "sqlite":
        target = J.id == fairness.candidate_query(dialect, kinds).scalar_subquery()
    else:
        job_id = await s.scalar(fairness.candidate_query(dialect, kinds, lock=True))
        if job_id is None:
            return None
        target = J.id == job_id
    now = now or utcnow()
    values = {
        "state": RUNNING,
        "lease_owner": worker_id,
        "lease_expires": now + lease,
        "attempts": J.attempts + 1,
        "progress_step": 0,
        "progress_total": 0,
        "started_at": now,
        "updated_at": now,
    }
    stmt = update(JOBS).where(target, J.state == QUEUED).values(**values).returning(*JOBS.c)
    return (await s.execute(stmt)).one_or_none()


async def _touch(
    db: Database, job_id: int, worker_id: str, values: dict[str, Any], preview: bytes | None
) -> bool:
    async with db.transaction() as s:
        cancel = await guarded(s, held(job_id, worker_id), values, J.cancel_requested)
        if cancel is None:
            raise LeaseLost(f"Job {job_id} is no longer held by worker {worker_id}.")
        if preview is not None:
            await _store_preview(s, job_id, preview)
    return bool(cancel)


async def _store_preview(s: AsyncSession, job_id: int, png: bytes) -> None:
    preview = ResultKind.PREVIEW.value
    await s.execute(delete(RESULTS).where(RESULTS.c.job_id == job_id, RESULTS.c.kind == preview))
    await s.execute(
        insert(RESULTS).values(job_id=job_id, index=0, kind=preview, png=png, created_at=utcnow())
    )


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
    """Record progress (renewing the lease, storing a preview); True when cancel is wanted."""
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


async def fail(
    db: Database,
    job_id: int,
    worker_id: str,
    user_message: str,
    detail: str | None = None,
    *,
    retry: bool = False,
    note: str | None = None,
    refusal: Refusal | None = None,
    preview: bytes | None = None,
) -> bool:
    """Fail the job with a one-line message for the user and a detail for the log.

    With ``retry`` the job is re-queued instead while attempts remain. ``note`` is kept for the
    user next to the message (e.g. which face detector refused the photo). ``refusal`` records
    why the engine refused the job (storage.schemas.Refusal) and ``preview`` (the faces found,
    numbered) is stored as the job's PREVIEW result, both in the failure's transaction. A face
    job refused for several faces keeps its upload for the owner's face choice
    (storage.jobs). Returns False if the worker no longer holds the job.
    """
    now = utcnow()
    async with db.transaction() as s:
        if retry:
            where = [*held(job_id, worker_id), J.attempts < J.max_attempts]
            if await guarded(s, where, requeue_values(now, detail), J.id) is not None:
                log.warning("job %s re-queued after error: %s", job_id, detail)
                return True
        values = _failed_values(db, now, user_message, detail, note, refusal)
        row = await guarded_row(s, held(job_id, worker_id), values)
        if row is not None and preview:
            await _store_preview(s, job_id, preview)
    if row is None:
        log.warning("job %s: fail by %s refused, lease lost", job_id, worker_id)
        return False
    log.info(
        "job %s failed (attempt %s, %.1fs): %s (%s)",
        *(job_id, row.attempts, elapsed(row, now), user_message, detail),
    )
    return True


def _failed_values(
    db: Database,
    now: datetime,
    user_message: str,
    detail: str | None,
    note: str | None,
    refusal: Refusal | None,
) -> dict[str, Any]:
    values = closing(db, JobState.FAILED, now)
    values.update(error_user=user_message, error_detail=detail, note=check_note(note))
    code, faces = (refusal.code.value, refusal.faces) if refusal else (None, None)
    values.update(refusal=code, faces_found=faces)
    if "input_blob" in values and refusal is not None and refusal.face_choice:
        values["input_blob"] = _kept_for_face_choice()
    return values


async def release(db: Database, job_id: int, worker_id: str) -> bool:
    """Give a running job back to the queue without counting its attempt.

    For a worker that stops gracefully (SIGTERM): that is not the job's fault, so the attempt
    that claim counted is taken back and the job keeps all its tries. A worker that dies
    instead (SIGKILL, a crash) cannot call this: its lease expires and the attempt stays
    counted (:func:`requeue_expired`). A job whose owner asked to cancel it is cancelled
    rather than re-queued. Returns False if the worker no longer holds the job.
    """
    now = utcnow()
    async with db.transaction() as s:
        wanted = [*held(job_id, worker_id), J.cancel_requested.is_(True)]
        if await guarded(s, wanted, closing(db, JobState.CANCELLED, now), J.id) is not None:
            log.info("job %s cancelled as asked, on release by %s", job_id, worker_id)
            return True
        values = requeue_values(now, f"released by {worker_id}") | {"attempts": J.attempts - 1}
        row = await guarded_row(s, held(job_id, worker_id), values)
    if row is None:
        log.warning("job %s: release by %s refused, lease lost", job_id, worker_id)
        return False
    seconds = elapsed(row, now)
    log.info("job %s released by %s after %.1fs, attempt not counted", job_id, worker_id, seconds)
    return True


def _kept_for_face_choice() -> ColumnElement[Any]:
    """A face job's upload (kept for the owner's face choice); any other job's is dropped."""
    return case((J.kind == JobKind.FACE.value, J.input_blob), else_=null())


async def mark_cancelled(db: Database, job_id: int, worker_id: str) -> bool:
    """The worker stopped a running job because cancel was requested."""
    async with db.transaction() as s:
        values = closing(db, JobState.CANCELLED, utcnow())
        done = await guarded(s, held(job_id, worker_id), values, J.id)
    if done is not None:
        log.info("job %s cancelled while running", job_id)
    return done is not None


async def requeue_expired(db: Database, *, now: datetime | None = None) -> RequeueReport:
    """Handle running jobs whose lease expired (their worker vanished).

    Cancel-requested ones become cancelled; those that used all attempts fail with a clear
    message; the rest go back to the queue (attempts are counted at each claim).
    """
    async with db.transaction() as s:
        report = await _reap(s, db, now or utcnow())
    _log_reaped(report)
    return report


async def _reap(s: AsyncSession, db: Database, now: datetime) -> RequeueReport:
    expired = [J.state == RUNNING, J.lease_expires < now]
    cancel = [*expired, J.cancel_requested.is_(True)]
    cancelled = await changed_ids(s, cancel, closing(db, JobState.CANCELLED, now))
    failed = await changed_ids(s, [*expired, J.attempts >= J.max_attempts], _lost(db, now))
    requeued = await changed_ids(s, expired, requeue_values(now, "lease expired"))
    return RequeueReport(requeued=requeued, failed=failed, cancelled=cancelled)


def _log_reaped(report: RequeueReport) -> None:
    if report.requeued or report.failed or report.cancelled:
        log.warning("expired leases: %s", report)


def _lost(db: Database, now: datetime) -> dict[str, Any]:
    values = closing(db, JobState.FAILED, now)
    attempts = cast(J.attempts, String)
    values["error_user"] = literal(LOST_WORKER[0]) + attempts + literal(LOST_WORKER[1])
    values["error_detail"] = "lease expired on the last attempt"
    return values
