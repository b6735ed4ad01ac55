"""Building blocks of the guarded job transitions (Core SQL on the jobs table).

Only storage.jobs, storage.leases and storage.job_finish use these; nothing else writes a
job's state.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, CursorResult, Table, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage import models
from storage.db import Database
from storage.schemas import JobState

JOBS = typing.cast(Table, models.Job.__table__)
USERS = typing.cast(Table, models.User.__table__)
RESULTS = typing.cast(Table, models.Result.__table__)
IDENTITIES = typing.cast(Table, models.Identity.__table__)
J = JOBS.c

QUEUED, RUNNING = JobState.QUEUED.value, JobState.RUNNING.value
FINISHED = [s.value for s in JobState if s.finished]
Where = Sequence[ColumnElement[bool]]


def held(job_id: int, worker_id: str) -> list[ColumnElement[bool]]:
    """The lease guard: the job is running and leased by this worker."""
    return [J.id == job_id, J.state == RUNNING, J.lease_owner == worker_id]


async def guarded(s: AsyncSession, where: Where, values: dict[str, Any], ret: Any) -> Any:
    """One guarded UPDATE; returns ``ret`` of the changed row, or None if the guard failed."""
    return await s.scalar(update(JOBS).where(*where).values(**values).returning(ret))


async def guarded_row(s: AsyncSession, where: Where, values: dict[str, Any]) -> Any:
    """A guarded UPDATE returning (owner_id, attempts, started_at), or None."""
    stmt = update(JOBS).where(*where).values(**values)
    return (await s.execute(stmt.returning(J.owner_id, J.attempts, J.started_at))).one_or_none()


def elapsed(row: Any, now: datetime) -> float:
    """Seconds since the job's attempt started (for log lines)."""
    return (now - row.started_at).total_seconds() if row.started_at else 0.0


async def changed_ids(s: AsyncSession, where: Where, values: dict[str, Any]) -> list[int]:
    """A guarded UPDATE of many jobs; returns the ids it changed."""
    result = await s.scalars(update(JOBS).where(*where).values(**values).returning(J.id))
    return sorted(result.all())


async def rowcount(s: AsyncSession, stmt: Any) -> int:
    result = await s.execute(stmt)
    return int(typing.cast(CursorResult[Any], result).rowcount or 0)


def closing(db: Database, state: JobState, now: datetime) -> dict[str, Any]:
    """Values that end a job (input photo dropped unless the host keeps inputs)."""
    values: dict[str, Any] = {
        "state": state.value,
        "finished_at": now,
        "updated_at": now,
        "lease_expires": None,
    }
    if not db.limits.keep_inputs:
        values["input_blob"] = None
    return values


def requeue_values(now: datetime, detail: str | None) -> dict[str, Any]:
    """Values that put a running job back in the queue."""
    return {
        "state": QUEUED,
        "lease_owner": None,
        "lease_expires": None,
        "progress_step": 0,
        "progress_total": 0,
        "error_detail": detail,
        "note": None,
        "updated_at": now,
    }
