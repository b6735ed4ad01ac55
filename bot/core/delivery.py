"""Result delivery: a database-backed, restart-safe loop per platform.

Each pass sends every finished-but-undelivered job of the platform to the adapter's ``send``
callback and marks it delivered only after the callback returned; a failed send is retried
with backoff (the job stays undelivered, so its results are kept until retention). After
``max_attempts`` failed sends, or at once when the send raises :class:`Undeliverable` (the
chat is gone or refuses the bot for good), the job is marked delivered with one log line and
never retried; its results stay visible in /jobs until retention. Jobs waiting out a backoff
do not count against a pass's batch, so newer results are not held up behind stuck ones.
Running jobs get throttled progress replies. After a restart the first pass resumes where it
stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot.core import render
from bot.core.messages import Reply
from storage import identities, jobs, results
from storage.db import Database
from storage.errors import NotFound
from storage.records import IdentitySummary, JobRecord
from storage.schemas import Delivery, FaceParams, JobState, ResultKind

log = logging.getLogger(__name__)

#: ``send(delivery, reply)``: post the reply where ``delivery`` says; raise if it failed.
SendFn = Callable[[Delivery, Reply], Awaitable[None]]
#: Finished jobs sent per pass (besides those waiting out a backoff).
BATCH = 100


class Undeliverable(Exception):
    """Raised by an adapter's ``send`` when the target can never be reached (the chat is gone,
    the bot was blocked or removed): the job is marked delivered and not retried."""


@dataclass
class _Retry:
    failures: int = 0
    at: float = 0.0


class Deliverer:
    """Delivers one platform's results (and progress) through adapter callbacks."""

    def __init__(
        self,
        db: Database,
        platform: str,
        send: SendFn,
        *,
        progress: SendFn | None = None,
        poll_seconds: float = 1.0,
        progress_interval: float = 3.0,
        max_backoff: float = 600.0,
        max_attempts: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.platform = platform
        self._send = send
        self._progress = progress
        self.poll_seconds = poll_seconds
        self.progress_interval = progress_interval
        self.max_backoff = max_backoff
        self.max_attempts = max_attempts
        self._clock = clock
        self._retries: dict[int, _Retry] = {}
        self._shown: dict[int, tuple[int, float]] = {}  # job → (step shown, when)
        self._wake = asyncio.Event()
        self._stopping = False

    async def run(self) -> None:
        """Poll until :meth:`stop`; :meth:`wake` starts the next pass at once."""
        log.info("delivering %s results", self.platform)
        while not self._stopping:
            try:
                await self.run_once()
            except Exception:
                log.exception("delivery pass for %s failed", self.platform)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
            self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run_once(self) -> int:
        """One pass: progress of running jobs, then finished jobs; returns results delivered."""
        if self._progress is not None:
            await self.report_progress()
        return await self.deliver_pending()

    async def deliver_pending(self) -> int:
        """Send up to :data:`BATCH` finished, undelivered jobs whose retry time has come,
        oldest first."""
        delivered = 0
        for job in await self._due():
            delivered += await self._deliver(job)
        return delivered

    async def _due(self) -> list[JobRecord]:
        """The oldest undelivered jobs not waiting out a backoff: the query asks for as many
        more rows as there are waiting jobs, so those cannot fill the batch."""
        now = self._clock()
        waiting = {job_id for job_id, retry in self._retries.items() if retry.at > now}
        limit = BATCH + len(waiting)
        found = await jobs.undelivered(self.db, platforms=[self.platform], limit=limit)
        if len(found) < limit:  # every undelivered job is here: forget the others' retries
            listed = {job.id for job in found}
            self._retries = {k: v for k, v in self._retries.items() if k in listed}
        return [job for job in found if job.id not in waiting][:BATCH]

    async def _deliver(self, job: JobRecord) -> int:
        assert job.delivery is not None
        try:
            reply = await self.build(job)
            await self._send(job.delivery, reply)
        except Undeliverable as exc:
            await self._done(job.id)
            log.warning("job %s: undeliverable on %s, dropped: %s", job.id, self.platform, exc)
            return 0
        except Exception as exc:
            await self._failed(job.id, exc)
            return 0
        await self._done(job.id)
        log.info("job %s delivered to %s", job.id, self.platform)
        return 1

    async def _failed(self, job_id: int, exc: Exception) -> None:
        """Back off before the next try, or give up after ``max_attempts`` failed sends."""
        retry = self._retries.get(job_id, _Retry())
        if retry.failures + 1 < self.max_attempts:
            self._backoff(job_id)
            return
        await self._done(job_id)
        log.warning(
            "job %s: not delivered to %s after %s tries, given up (it stays in /jobs): %s: %s",
            job_id,
            self.platform,
            retry.failures + 1,
            type(exc).__name__,
            exc,
        )

    async def _done(self, job_id: int) -> None:
        await jobs.mark_delivered(self.db, job_id)
        self._retries.pop(job_id, None)
        self._shown.pop(job_id, None)

    def _backoff(self, job_id: int) -> None:
        retry = self._retries.setdefault(job_id, _Retry())
        retry.failures += 1
        delay = min(self.max_backoff, 2.0**retry.failures)
        retry.at = self._clock() + delay
        log.warning(
            "job %s: delivery failed (%s times); retrying in %.0fs",
            job_id,
            retry.failures,
            delay,
            exc_info=True,
        )

    async def build(self, job: JobRecord) -> Reply:
        """The result reply of a finished job: images, grid and scores, or the error with a
        refused job's preview, with the worker's note (render.with_note); a job whose
        parameters cannot be read any more (``params`` None) still gets its failure delivered."""
        failed = job.state is JobState.FAILED
        kinds = (ResultKind.PREVIEW,) if failed else results.FINAL_KINDS
        found = await results.list_results(self.db, job.owner_id, job.id, kinds=kinds)
        identity = None
        if isinstance(job.params, FaceParams) and job.state is JobState.DONE:
            identity = await self._face(job.owner_id, job.params.name)
        return render.result(job, found, identity=identity)

    async def _face(self, owner_id: int, name: str) -> IdentitySummary | None:
        try:
            return await identities.get_identity(self.db, owner_id, name)
        except NotFound:
            return None

    async def report_progress(self) -> int:
        """Send a progress reply for running jobs whose step changed, at most once per interval."""
        assert self._progress is not None
        running = await jobs.list_jobs(
            self.db, states=[JobState.RUNNING], platform=self.platform, limit=500
        )
        sent = 0
        now = self._clock()
        for job in running:
            shown = self._shown.get(job.id)
            if shown is not None and (
                shown[0] == job.progress_step or now - shown[1] < self.progress_interval
            ):
                continue
            sent += await self._send_progress(job, now)
        return sent

    async def _send_progress(self, job: JobRecord, now: float) -> int:
        assert self._progress is not None and job.delivery is not None
        self._shown[job.id] = (job.progress_step, now)
        try:
            await self._progress(job.delivery, render.progress(job))
        except Undeliverable as exc:
            log.info("job %s: progress not shown: %s", job.id, exc)
            return 0
        except Exception:
            log.warning("job %s: progress update failed", job.id, exc_info=True)
            return 0
        return 1


async def retention_loop(db: Database, days: float, *, every: float = 3600.0) -> None:
    """Prune expired jobs and results now and then every ``every`` seconds, until cancelled.

    One per deployment is enough (it is idempotent, so more do no harm). Undelivered results
    are kept, and retried, until this removes them.
    """
    while True:
        await prune_expired(db, days)
        await asyncio.sleep(every)


async def prune_expired(db: Database, days: float) -> None:
    """Delete finished jobs and results older than ``days`` (failures are logged)."""
    try:
        report = await jobs.prune(db, older_than_days=days)
    except Exception:
        log.exception("retention pass failed")
        return
    if report.jobs or report.results:
        log.info("retention: pruned %s jobs and %s results", report.jobs, report.results)
