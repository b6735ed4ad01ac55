"""Engine workers' readiness reports (for `serve` start-up, /status and the web UI).

Public API (all async, ``db`` first):
    register_worker(db, worker_id, *, host, device, preset, fingerprint=None, pid=None)
        -> WorkerRecord                                   (state STARTING; replaces a stale row)
    mark_worker_ready(db, worker_id, *, fingerprint=None) -> None
    worker_heartbeat(db, worker_id, *, current_job_id=None) -> None     (NotFound)
    mark_worker_stopped(db, worker_id) -> None
    list_workers(db, *, alive_within=None, now=None) -> list[WorkerRecord]
    ready_fingerprints(db, *, alive_within=timedelta(minutes=5), now=None) -> set[str]
    remove_stale_workers(db, *, older_than, now=None) -> int
"""

from __future__ import annotations

import logging
import typing
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage import models
from storage.db import Database
from storage.errors import NotFound
from storage.models import utcnow
from storage.records import WorkerRecord
from storage.schemas import WorkerState

log = logging.getLogger(__name__)

W = models.Worker


async def register_worker(
    db: Database,
    worker_id: str,
    *,
    host: str,
    device: str,
    preset: str,
    fingerprint: str | None = None,
    pid: int | None = None,
) -> WorkerRecord:
    """Announce a starting worker (models not loaded yet)."""
    now = utcnow()
    async with db.transaction() as s:
        await s.execute(delete(W).where(W.id == worker_id))
        row = W(
            id=worker_id,
            host=host,
            device=device,
            preset=preset,
            fingerprint=fingerprint,
            pid=pid,
            state=WorkerState.STARTING.value,
            started_at=now,
            heartbeat_at=now,
        )
        s.add(row)
        await s.flush()
        record = WorkerRecord.of(row)
    log.info("worker %s registered on %s (%s, %s)", worker_id, host, device, preset)
    return record


async def _set(s: AsyncSession, worker_id: str, values: dict[str, Any]) -> None:
    result = await s.execute(update(W).where(W.id == worker_id).values(**values))
    if not typing.cast(CursorResult[Any], result).rowcount:
        raise NotFound(f"Unknown worker {worker_id}.")


async def mark_worker_ready(
    db: Database, worker_id: str, *, fingerprint: str | None = None
) -> None:
    """The worker has loaded its models and takes jobs."""
    now = utcnow()
    values: dict[str, Any] = {
        "state": WorkerState.READY.value,
        "ready_at": now,
        "heartbeat_at": now,
    }
    if fingerprint is not None:
        values["fingerprint"] = fingerprint
    async with db.transaction() as s:
        await _set(s, worker_id, values)
    log.info("worker %s ready", worker_id)


async def worker_heartbeat(
    db: Database, worker_id: str, *, current_job_id: int | None = None
) -> None:
    """The worker is alive (and working on ``current_job_id``, if any)."""
    async with db.transaction() as s:
        await _set(s, worker_id, {"heartbeat_at": utcnow(), "current_job_id": current_job_id})


async def mark_worker_stopped(db: Database, worker_id: str) -> None:
    """The worker shut down cleanly."""
    async with db.transaction() as s:
        values = {
            "state": WorkerState.STOPPED.value,
            "current_job_id": None,
            "heartbeat_at": utcnow(),
        }
        await _set(s, worker_id, values)
    log.info("worker %s stopped", worker_id)


async def list_workers(
    db: Database, *, alive_within: timedelta | None = None, now: datetime | None = None
) -> list[WorkerRecord]:
    """Known workers (only those heard from within ``alive_within``, if given)."""
    query = select(W).order_by(W.id)
    if alive_within is not None:
        query = query.where(W.heartbeat_at >= (now or utcnow()) - alive_within)
    async with db.session() as s:
        return [WorkerRecord.of(r) for r in await s.scalars(query)]


async def ready_fingerprints(
    db: Database, *, alive_within: timedelta = timedelta(minutes=5), now: datetime | None = None
) -> set[str]:
    """Encoder fingerprints of ready, live workers (what an imported face must match)."""
    workers = await list_workers(db, alive_within=alive_within, now=now)
    return {w.fingerprint for w in workers if w.state is WorkerState.READY and w.fingerprint}


async def remove_stale_workers(
    db: Database, *, older_than: timedelta, now: datetime | None = None
) -> int:
    """Forget workers not heard from within ``older_than``; returns how many."""
    cutoff = (now or utcnow()) - older_than
    async with db.transaction() as s:
        result = await s.execute(delete(W).where(W.heartbeat_at < cutoff))
        return int(typing.cast(CursorResult[Any], result).rowcount or 0)
