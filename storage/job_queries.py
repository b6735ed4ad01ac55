"""Read-only job queries (re-exported by storage.jobs).

Public API (all async, ``db`` first):
    get_job(db, job_id, *, owner_id=None, with_input=False) -> JobRecord     (NotFound)
    list_jobs(db, *, owner_id=None, states=None, platform=None, updated_after=None,
              limit=50) -> list[JobRecord]                                    (newest first)
    count_active(db, owner_id) -> int                                         (queued + running)
    queue_position(db, job_id) -> int | None                                  (None unless queued)
    undelivered(db, *, platforms=None, limit=100) -> list[JobRecord]          (oldest first)
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import defer

from storage import fairness, models
from storage.db import Database
from storage.errors import NotFound
from storage.job_sql import FINISHED
from storage.records import JobRecord
from storage.schemas import JobState

Job = models.Job
ACTIVE = [JobState.QUEUED.value, JobState.RUNNING.value]


async def get_job(
    db: Database, job_id: int, *, owner_id: int | None = None, with_input: bool = False
) -> JobRecord:
    """One job; with ``owner_id`` another user's job is NotFound like an unknown one."""
    async with db.session() as s:
        row = await s.get(Job, job_id)
        if row is None or (owner_id is not None and row.owner_id != owner_id):
            raise NotFound(f"You have no job {job_id}.")
        return JobRecord.of(row, with_input=with_input)


async def list_jobs(
    db: Database,
    *,
    owner_id: int | None = None,
    states: Collection[JobState] | None = None,
    platform: str | None = None,
    updated_after: datetime | None = None,
    limit: int = 50,
) -> list[JobRecord]:
    """Jobs matching every given filter, newest first."""
    query = select(Job).options(defer(Job.input_blob))
    if owner_id is not None:
        query = query.where(Job.owner_id == owner_id)
    if states is not None:
        query = query.where(Job.state.in_([s.value for s in states]))
    if platform is not None:
        query = query.where(Job.delivery_platform == platform)
    if updated_after is not None:
        query = query.where(Job.updated_at > updated_after)
    async with db.session() as s:
        rows = await s.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit))
        return [JobRecord.of(r) for r in rows]


async def count_active(db: Database, owner_id: int) -> int:
    """The user's queued and running jobs."""
    async with db.session() as s:
        n = await s.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.owner_id == owner_id, Job.state.in_(ACTIVE))
        )
        return int(n or 0)


async def queue_position(db: Database, job_id: int) -> int | None:
    """Estimated 1-based position under fair claiming (storage.fairness); None unless queued."""
    async with db.session() as s:
        row = (
            await s.execute(select(Job.owner_id, Job.state, Job.created_at).where(Job.id == job_id))
        ).one_or_none()
        if row is None:
            raise NotFound(f"There is no job {job_id}.")
        if row.state != JobState.QUEUED.value:
            return None
        return await fairness.position_of(s, row.owner_id, job_id, row.created_at)


async def undelivered(
    db: Database, *, platforms: Collection[str] | None = None, limit: int = 100
) -> list[JobRecord]:
    """Finished jobs with a delivery target that were not delivered yet, oldest first."""
    query = (
        select(Job)
        .options(defer(Job.input_blob))
        .where(Job.state.in_(FINISHED), Job.delivered.is_(False))
        .where(Job.delivery_platform.is_not(None))
    )
    if platforms is not None:
        query = query.where(Job.delivery_platform.in_(list(platforms)))
    async with db.session() as s:
        rows = await s.scalars(query.order_by(Job.finished_at, Job.id).limit(limit))
        return [JobRecord.of(r) for r in rows]
