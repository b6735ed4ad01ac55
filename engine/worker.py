"""The engine worker: one process owns one device and the models, and runs jobs from storage.

A job's life on this side (arq's vocabulary made explicit): *claimed* (fair order, with a lease)
→ *running* (progress, heartbeats) → *done* | *failed* | *cancelled* | *released* (given back to
the queue because the worker is stopping) | *abandoned* (the lease was lost: another worker owns
the job now and nothing is written). Each transition is one log line with the job id, attempt and
elapsed time. The final write of a job is shielded from cancellation.

Faults: SIGTERM or SIGINT stop the claiming; the current job gets ``grace_seconds`` to finish, is
then stopped at its next step and released — back in the queue with its attempt not counted, as
stopping is not the job's fault — and the process exits 0 (a second signal releases at once). A
worker killed outright loses its lease; another worker re-runs the job (claim counts the attempts,
so a job that keeps killing its workers fails after the maximum). Results, the job's note and a
face job's identity are written only under the lease, in one transaction, so a re-run never finds
half a job. Out-of-memory fails that
job, frees memory, and the worker carries on; no exception in a job ends the worker.

Refusals (no face, several faces and no choice, a face made by other weights, an unreadable
image) end the job FAILED, not done: nothing was made, and /jobs and the counters say so. The
failure carries the user's one-line message, a machine-readable :class:`~storage.schemas.Refusal`
(several faces: how many) and, when the engine drew one, the numbered preview of the faces
found as the job's PREVIEW result — all written in one transaction (storage.jobs.fail), which
the bot delivers as the failure with the preview and a button per face.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import TypeVar

import torch

from engine.compare import run_compare
from engine.jobs_errors import Failure, describe
from engine.jobs_exec import JobContext, JobOutcome, run_batch, run_face, run_imagine
from engine.jobs_monitor import JobMonitor, StopReason
from engine.pipeline import GenerationCancelled
from engine.presets import Engine
from storage import jobs, workers
from storage.config import Settings
from storage.db import Database
from storage.errors import LeaseLost, StorageError
from storage.records import JobRecord
from storage.schemas import JobKind

log = logging.getLogger(__name__)

T = TypeVar("T")
Runner = Callable[[JobContext], Awaitable[JobOutcome]]
RUNNERS: dict[JobKind, Runner] = {
    JobKind.FACE: run_face,
    JobKind.IMAGINE: run_imagine,
    JobKind.BATCH: run_batch,
    JobKind.COMPARE: run_compare,
}
#: Consecutive failed claims after which a burst worker gives up (a long-running one keeps trying).
BURST_CLAIM_ERRORS = 3
MAX_BACKOFF_S = 30.0


class Ending:
    """How a job ended on this worker (the log's and the counters' vocabulary)."""

    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RELEASED = "released"
    ABANDONED = "abandoned"


@dataclass(frozen=True)
class WorkerOptions:
    """Queue timings and behaviour of one worker."""

    worker_id: str
    lease_seconds: float = 60.0
    heartbeat_seconds: float = 10.0
    poll_seconds: float = 1.0
    progress_interval: float = 1.0
    grace_seconds: float = 10.0
    burst: bool = False

    @classmethod
    def from_settings(
        cls, settings: Settings, worker_id: str, **overrides: object
    ) -> WorkerOptions:
        q = settings.queue
        base = cls(worker_id, q.lease_seconds, q.heartbeat_seconds, q.poll_seconds)
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})


async def shielded(coro: Awaitable[T]) -> T:
    """Await ``coro`` to its end even if the caller is cancelled meanwhile (then re-raise)."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


def free_memory(engine: Engine) -> None:
    """Give back what a failed job held: Python garbage, offloaded models, the CUDA cache."""
    gc.collect()
    engine.memory.free()
    if engine.memory.device.type == "cuda":
        torch.cuda.empty_cache()


class Worker:
    """Claims jobs and runs them with one loaded engine, one at a time."""

    def __init__(
        self,
        db: Database,
        engine: Engine,
        options: WorkerOptions,
        *,
        executor: Executor | None = None,
    ) -> None:
        self.db, self.engine, self.options, self.executor = db, engine, options, executor
        self.endings: Counter[str] = Counter()
        self._stopping = asyncio.Event()
        self._monitor: JobMonitor | None = None
        self._current: int | None = None
        self._grace: asyncio.TimerHandle | None = None
        self._claim_errors = 0

    @property
    def worker_id(self) -> str:
        return self.options.worker_id

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # --- stopping -----------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop claiming; the current job gets the grace period (a second call: none)."""
        again = self._stopping.is_set()
        self._stopping.set()
        if self._monitor is None:
            return
        if again or self.options.grace_seconds <= 0:
            self._release_current()
        elif self._grace is None:
            self._arm_grace()

    def _arm_grace(self) -> None:
        loop = asyncio.get_running_loop()
        self._grace = loop.call_later(self.options.grace_seconds, self._release_current)

    def _release_current(self) -> None:
        if self._monitor is not None:
            self._monitor.request_stop(StopReason.SHUTDOWN)

    # --- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Claim and run jobs until stopped (or, in burst mode, until the queue is empty)."""
        beat = asyncio.create_task(self._beat(), name=f"worker-heartbeat-{self.worker_id}")
        try:
            while not self.stopping:
                job = await self._claim()
                if job is not None:
                    await self._execute_safely(job)
                elif self.options.burst and self._claim_errors == 0:
                    log.info("worker %s: queue empty, burst mode ends", self.worker_id)
                    break
                else:
                    await self._idle()
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
        log.info("worker %s stops: %s", self.worker_id, dict(self.endings) or "no jobs")

    async def _claim(self) -> JobRecord | None:
        try:
            job = await jobs.claim(
                self.db, self.worker_id, lease_seconds=self.options.lease_seconds
            )
        except Exception:
            self._claim_errors += 1
            log.exception(
                "worker %s: claim failed (%s in a row)", self.worker_id, self._claim_errors
            )
            if self.options.burst and self._claim_errors >= BURST_CLAIM_ERRORS:
                raise
            return None
        self._claim_errors = 0
        return job

    async def _idle(self) -> None:
        wait = min(MAX_BACKOFF_S, self.options.poll_seconds * 2 ** min(self._claim_errors, 5))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), wait)

    async def _beat(self) -> None:
        """Tell storage this worker is alive (and what it runs), every heartbeat interval."""
        while True:
            try:
                await workers.worker_heartbeat(
                    self.db, self.worker_id, current_job_id=self._current
                )
            except Exception as exc:  # readiness reporting must never stop the jobs
                log.warning("worker %s: heartbeat failed: %s", self.worker_id, exc)
            await asyncio.sleep(self.options.heartbeat_seconds)

    async def _execute_safely(self, job: JobRecord) -> None:
        try:
            await self.execute(job)
        except Exception:
            log.exception(
                "job %s: the outcome could not be recorded; its lease will expire", job.id
            )

    # --- one job ------------------------------------------------------------------------------

    async def execute(self, job: JobRecord) -> str:
        """Run one claimed job and record how it ended; returns the :class:`Ending`."""
        started = time.monotonic()
        log.info(
            "job %s running: %s for user %s (attempt %s/%s)",
            job.id, job.kind.value, job.owner_id, job.attempts, job.max_attempts,
        )  # fmt: skip
        monitor = self._start(job)
        out_of_memory = False
        try:
            async with monitor:
                outcome = await RUNNERS[job.kind](self._context(job, monitor))
        except Exception as exc:
            ending, out_of_memory = await shielded(self._ended(job, monitor, exc, started))
        else:
            ending = await shielded(self._done(job, outcome, started))
        finally:
            self._stop_watching()
        if out_of_memory:  # the exception and its frames are gone: their tensors can go too
            await asyncio.get_running_loop().run_in_executor(
                self.executor, free_memory, self.engine
            )
        self.endings[ending] += 1
        return ending

    def _context(self, job: JobRecord, monitor: JobMonitor) -> JobContext:
        return JobContext(self.db, self.engine, job, monitor, self.executor)

    def _start(self, job: JobRecord) -> JobMonitor:
        o = self.options
        self._monitor = JobMonitor(
            self.db, job.id, self.worker_id, lease_seconds=o.lease_seconds,
            heartbeat_seconds=o.heartbeat_seconds, interval=o.progress_interval,
        )  # fmt: skip
        self._current = job.id
        if self.stopping:
            self.request_stop()
        return self._monitor

    def _stop_watching(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
        self._monitor, self._current, self._grace = None, None, None

    async def _done(self, job: JobRecord, outcome: JobOutcome, started: float) -> str:
        """Results, note and a face job's identity in one transaction (storage.job_finish)."""
        try:
            finished = await jobs.finish(
                self.db, job.id, self.worker_id, outcome.results,
                note=outcome.note, identity=outcome.identity,
            )  # fmt: skip
        except StorageError as exc:  # the face: its name taken meanwhile, deleted, a limit
            return await self._fail(job, started, describe(exc))
        if not finished:
            return self._log(job, Ending.ABANDONED, started, "lease lost before the results")
        summary = f"{len(outcome.results)} results" + (f"; {outcome.note}" if outcome.note else "")
        return self._log(job, Ending.DONE, started, summary)

    async def _ended(
        self, job: JobRecord, monitor: JobMonitor, exc: Exception, started: float
    ) -> tuple[str, bool]:
        """Record a job that raised; returns its ending and whether memory ran out."""
        reason = monitor.stop_reason
        if reason is StopReason.LEASE_LOST or isinstance(exc, LeaseLost):
            return self._log(job, Ending.ABANDONED, started, "lease lost"), False
        if isinstance(exc, GenerationCancelled) and reason is StopReason.CANCEL:
            await jobs.mark_cancelled(self.db, job.id, self.worker_id)
            return self._log(job, Ending.CANCELLED, started, str(exc)), False
        if isinstance(exc, GenerationCancelled) and reason is StopReason.SHUTDOWN:
            return await self._release(job, started, str(exc)), False
        failure = describe(exc, self.engine.memory)
        if failure.unexpected:
            log.error("job %s: unexpected error", job.id, exc_info=exc)
        return await self._fail(job, started, failure), failure.out_of_memory

    async def _release(self, job: JobRecord, started: float, detail: str) -> str:
        """Back to the queue; a graceful stop is not the job's fault, so the try is not counted."""
        if not await jobs.release(self.db, job.id, self.worker_id):
            return self._log(job, Ending.ABANDONED, started, "lease lost before the release")
        return self._log(job, Ending.RELEASED, started, detail)

    async def _fail(self, job: JobRecord, started: float, failure: Failure) -> str:
        """Fail the job with its message, note, refusal and preview (one transaction)."""
        failed = await jobs.fail(
            self.db, job.id, self.worker_id, failure.user_message, failure.detail,
            note=failure.note, refusal=failure.refusal, preview=failure.preview,
        )  # fmt: skip
        if not failed:
            return self._log(job, Ending.ABANDONED, started, "lease lost before the failure")
        return self._log(job, Ending.FAILED, started, failure.user_message)

    def _log(self, job: JobRecord, ending: str, started: float, detail: str) -> str:
        elapsed = time.monotonic() - started
        log.info(
            "job %s %s in %.1fs (attempt %s/%s): %s",
            job.id, ending, elapsed, job.attempts, job.max_attempts, detail,
        )  # fmt: skip
        return ending
