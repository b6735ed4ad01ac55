"""Worker readiness reports."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from storage import workers
from storage.db import Database
from storage.errors import NotFound
from storage.schemas import WorkerState


async def test_worker_life(db: Database) -> None:
    w = await workers.register_worker(
        db, "host-a:123:x", host="host-a", device="cuda:0", preset="gpu", pid=123
    )
    assert w.state is WorkerState.STARTING and w.ready_at is None
    assert await workers.ready_fingerprints(db) == set()
    await workers.mark_worker_ready(db, w.id, fingerprint="fp-1")
    await workers.worker_heartbeat(db, w.id, current_job_id=7)
    (listed,) = await workers.list_workers(db)
    assert listed.state is WorkerState.READY and listed.current_job_id == 7
    assert listed.fingerprint == "fp-1" and listed.ready_at is not None
    assert listed.heartbeat_at.tzinfo is UTC
    assert await workers.ready_fingerprints(db) == {"fp-1"}
    await workers.mark_worker_stopped(db, w.id)
    assert await workers.ready_fingerprints(db) == set()
    assert (await workers.list_workers(db))[0].state is WorkerState.STOPPED


async def test_registering_again_replaces_the_row(db: Database) -> None:
    await workers.register_worker(db, "w", host="h", device="cpu", preset="tiny")
    await workers.mark_worker_ready(db, "w", fingerprint="old")
    again = await workers.register_worker(db, "w", host="h", device="cpu", preset="tiny")
    assert again.state is WorkerState.STARTING and again.fingerprint is None
    assert len(await workers.list_workers(db)) == 1


async def test_stale_workers(db: Database) -> None:
    await workers.register_worker(db, "old", host="h", device="cpu", preset="tiny")
    await workers.mark_worker_ready(db, "old", fingerprint="fp")
    later = datetime.now(UTC) + timedelta(minutes=10)
    assert await workers.ready_fingerprints(db, now=later) == set()
    assert await workers.list_workers(db, alive_within=timedelta(minutes=5), now=later) == []
    assert await workers.remove_stale_workers(db, older_than=timedelta(minutes=5), now=later) == 1
    assert await workers.list_workers(db) == []


async def test_unknown_worker(db: Database) -> None:
    with pytest.raises(NotFound, match="Unknown worker"):
        await workers.worker_heartbeat(db, "ghost")
    with pytest.raises(NotFound):
        await workers.mark_worker_ready(db, "ghost")
