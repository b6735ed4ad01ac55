"""The bridge between a job's compute thread and the queue: progress, heartbeats, stop requests.

The engine reports every finished step from its compute thread through :meth:`JobMonitor.step`.
The monitor writes that progress to storage at most once per ``interval`` (always the last
step), waiting for the write so that a cancel request it returns stops the job at this very
step. A task on the event loop renews the lease by heartbeat whenever no progress was written for
``heartbeat_seconds`` (long steps, face detection, model warm-up). Three things stop a job at its
next step: the owner's cancel request, a lost lease, and the worker shutting down.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections.abc import Callable
from types import TracebackType

from storage import jobs
from storage.db import Database
from storage.errors import LeaseLost

log = logging.getLogger(__name__)

#: How long the compute thread waits for one progress write before it carries on.
WRITE_TIMEOUT_S = 30.0


class StopReason(enum.StrEnum):
    """Why a running job was asked to stop."""

    CANCEL = "cancel requested"
    SHUTDOWN = "worker shutting down"
    LEASE_LOST = "lease lost"


class JobMonitor:
    """Throttled progress, heartbeats and the stop flag of one running job."""

    def __init__(
        self,
        db: Database,
        job_id: int,
        worker_id: str,
        *,
        lease_seconds: float,
        heartbeat_seconds: float,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db, self.job_id, self.worker_id = db, job_id, worker_id
        self.lease_seconds, self.heartbeat_seconds = lease_seconds, heartbeat_seconds
        self.interval = interval
        self._clock = clock
        self._stop: StopReason | None = None
        self._written: tuple[int, int] | None = None
        self._last_write = -math.inf
        self._last_touch = clock()  # the claim has just set the lease
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.writes = 0

    @property
    def stop_reason(self) -> StopReason | None:
        return self._stop

    @property
    def written(self) -> tuple[int, int] | None:
        """The last (step, total) stored."""
        return self._written

    def request_stop(self, reason: StopReason) -> None:
        """Ask the job to stop at its next step (the first reason given wins)."""
        if self._stop is None:
            self._stop = reason
            log.info("job %s: stop requested (%s)", self.job_id, reason)

    def step(self, done: int, total: int) -> bool:
        """Report a finished step from the compute thread; False means stop now."""
        if self._stop is None and self._due(done, total):
            assert self._loop is not None, "use the monitor as an async context manager"
            future = asyncio.run_coroutine_threadsafe(self.write(done, total), self._loop)
            try:
                future.result(WRITE_TIMEOUT_S)
            except TimeoutError:
                log.warning("job %s: progress write still pending, carrying on", self.job_id)
        return self._stop is None

    def _due(self, done: int, total: int) -> bool:
        if (done, total) == self._written:
            return False
        return done >= total or self._clock() - self._last_write >= self.interval

    async def write(self, done: int, total: int) -> None:
        """Store progress (which renews the lease) and pick up a cancel request."""
        async with self._lock:
            now = self._clock()
            cancel = await self._guarded(
                jobs.progress(
                    self.db,
                    self.job_id,
                    self.worker_id,
                    done,
                    total,
                    lease_seconds=self.lease_seconds,
                )  # fmt: skip
            )
            if cancel is not None:
                self._written, self._last_write, self._last_touch = (done, total), now, now
                self.writes += 1
        if cancel:
            self.request_stop(StopReason.CANCEL)

    async def heartbeat(self) -> None:
        """Renew the lease and pick up a cancel request."""
        async with self._lock:
            self._last_touch = self._clock()
            cancel = await self._guarded(
                jobs.heartbeat(
                    self.db, self.job_id, self.worker_id, lease_seconds=self.lease_seconds
                )
            )
        if cancel:
            self.request_stop(StopReason.CANCEL)

    async def _guarded(self, call) -> bool | None:
        """Run a lease-guarded write: its cancel flag, or None when nothing was written.

        A lost lease stops the job; other errors are logged (the lease may still hold).
        """
        try:
            return await call
        except LeaseLost:
            log.warning("job %s: lease lost by %s", self.job_id, self.worker_id)
            self.request_stop(StopReason.LEASE_LOST)
        except Exception:  # a database hiccup must not kill the job; the lease may hold
            log.warning("job %s: progress/heartbeat write failed", self.job_id, exc_info=True)
        return None

    async def _beat(self) -> None:
        while self._stop is not StopReason.LEASE_LOST:
            wait = self._last_touch + self.heartbeat_seconds - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            await self.heartbeat()

    async def __aenter__(self) -> JobMonitor:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._beat(), name=f"heartbeat-job-{self.job_id}")
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
