"""The job monitor: throttled progress writes, the last step always written, stop requests."""

from __future__ import annotations

import asyncio

import pytest
from worker_helpers import job, make_user

from engine.jobs_monitor import JobMonitor, StopReason
from storage import jobs
from storage.schemas import FaceParams

pytestmark = pytest.mark.timeout(60)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def claimed(db) -> tuple[int, int]:
    owner = await make_user(db)
    queued = await jobs.enqueue(db, owner, FaceParams(name="me"), input_blob=b"photo")
    assert (await jobs.claim(db, "w1")).id == queued.job_id
    return owner, queued.job_id


def monitor(db, job_id: int, clock: Clock, **kw: float) -> JobMonitor:
    timings = {"lease_seconds": 30.0, "heartbeat_seconds": 1000.0, "interval": 1.0} | kw
    return JobMonitor(db, job_id, "w1", clock=clock, **timings)


def steps(mon: JobMonitor, clock: Clock, total: int, dt: float) -> list[bool]:
    """Report ``total`` steps ``dt`` apart, as the compute thread does."""
    seen = []
    for step in range(1, total + 1):
        clock.now += dt
        seen.append(mon.step(step, total))
    return seen


async def test_progress_is_written_at_most_once_per_interval_and_always_at_the_end(db) -> None:
    _, job_id = await claimed(db)
    clock = Clock()
    async with monitor(db, job_id, clock) as mon:
        assert await asyncio.to_thread(steps, mon, clock, 10, 0.3) == [True] * 10
    # steps 1 (first), 5 and 9 (a second apart), and 10 (the last): 4 writes for 10 steps
    assert mon.writes == 4 and mon.written == (10, 10)
    running = await job(db, job_id)
    assert (running.progress_step, running.progress_total) == (10, 10)


async def test_a_cancel_request_stops_at_the_step_that_reads_it(db) -> None:
    owner, job_id = await claimed(db)
    clock = Clock()
    async with monitor(db, job_id, clock, interval=0.0) as mon:
        assert await asyncio.to_thread(steps, mon, clock, 2, 0.1) == [True, True]
        await jobs.cancel(db, owner, job_id)
        assert await asyncio.to_thread(mon.step, 3, 10) is False
    assert mon.stop_reason is StopReason.CANCEL and mon.written == (3, 10)


async def test_a_lost_lease_stops_the_job(db) -> None:
    _, job_id = await claimed(db)
    clock = Clock()
    async with monitor(db, job_id, clock, interval=0.0) as mon:
        await jobs.fail(db, job_id, "w1", "gone", retry=True)  # re-queued: w1 holds nothing
        assert await asyncio.to_thread(mon.step, 1, 4) is False
    assert mon.stop_reason is StopReason.LEASE_LOST and mon.written is None


async def test_heartbeats_renew_the_lease_between_steps(db) -> None:
    _, job_id = await claimed(db)
    before = (await job(db, job_id)).lease_expires
    async with JobMonitor(db, job_id, "w1", lease_seconds=300.0, heartbeat_seconds=0.01):
        for _ in range(200):  # polls the database; the monitor's own task does the work
            renewed = (await job(db, job_id)).lease_expires
            if renewed > before:
                break
            await asyncio.sleep(0.02)
    assert renewed > before


async def test_the_first_stop_reason_wins(db) -> None:
    _, job_id = await claimed(db)
    mon = monitor(db, job_id, Clock())
    mon.request_stop(StopReason.SHUTDOWN)
    mon.request_stop(StopReason.CANCEL)
    assert mon.stop_reason is StopReason.SHUTDOWN
    async with mon:
        assert await asyncio.to_thread(mon.step, 1, 2) is False
    assert mon.writes == 0
