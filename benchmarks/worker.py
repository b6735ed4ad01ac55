"""Engine worker throughput and claim delay with the tiny preset on the CPU.

    .venv/bin/python -m benchmarks.worker [--jobs 40] [--users 5] [--steps 1] [--threads 1]
                                          [--poll 1.0] [--probes 8] [--pg-url URL]

(Run it as a module from the repository root, so ``engine`` is the package.)

For each backend (a temporary SQLite file; a throwaway PostgreSQL database when ``--pg-url`` or
``$PULID_BOT_TEST_PG_URL`` is set) it uses the real :class:`engine.worker.Worker` with the tiny
engine loaded once, and measures

1. drain: ``--jobs`` imagine jobs (256 × 256, ``--steps`` steps) from ``--users`` users, queued
   before a burst worker starts — jobs per minute, and how much of the wall time the engine
   spent generating (the rest is the worker's own cost: claim, identity load, progress writes,
   PNG encoding with metadata, the results transaction);
2. claim delay: the worker idle and polling every ``--poll`` s; ``--probes`` jobs enqueued one
   at a time at random moments; delay = the job's ``started_at`` − ``created_at`` — mean, p50
   and max (expect about half the poll interval on average, at most one interval).

The tiny preset's images are noise and its models are tiny, so these figures measure the
worker and the queue around the engine, not FLUX speed (see benchmarks/engine.py for that).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import PG_ENV, pg_database, pg_server_url
from engine.codec import embedding_to_bytes
from engine.images import png_bytes
from engine.presets import Engine, load_engine
from engine.worker import Worker, WorkerOptions
from storage import identities, jobs, users, workers
from storage.db import Database, upgrade
from storage.schemas import GenerationSettings, ImagineParams, JobState


def astronaut_face() -> bytes:
    from skimage import data

    return png_bytes(data.astronaut()[20:276, 90:346].copy())


class Timed:
    """Wraps the engine's ``generate`` to add up the seconds spent in it."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.seconds, self.calls = fn, 0.0, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


@asynccontextmanager
async def database(url: str | None) -> AsyncIterator[tuple[str, Database]]:
    """A fresh migrated database: a temporary SQLite file, or a throwaway one on the server."""
    if url is None:
        with tempfile.TemporaryDirectory() as tmp:
            sqlite = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
            await upgrade(sqlite)
            db = await Database.open(sqlite)
            try:
                yield "sqlite", db
            finally:
                await db.close()
        return
    async with pg_database(url) as target:
        await upgrade(target)
        db = await Database.open(target)
        try:
            yield "postgres", db
        finally:
            await db.close()


async def setup_users(db: Database, engine: Engine, n: int) -> list[tuple[int, int]]:
    """(user id, identity id) pairs, each with the astronaut's face."""
    face = engine.prepare_face(astronaut_face())
    data = embedding_to_bytes(engine.encode_identity([face]))
    pairs = []
    for i in range(n):
        user = await users.get_or_create_user(db, "bench", str(i))
        ident = await identities.save_identity(db, user.id, "astro", data)
        pairs.append((user.id, ident.id))
    return pairs


async def new_worker(db: Database, engine: Engine, **options: Any) -> Worker:
    opts = WorkerOptions(worker_id=f"bench-{uuid.uuid4().hex[:6]}", **options)
    await workers.register_worker(db, opts.worker_id, host="bench", device="cpu", preset="tiny")
    return Worker(db, engine, opts)


def imagine(identity_id: int, n: int, steps: int) -> ImagineParams:
    settings = GenerationSettings(width=256, height=256, steps=steps, seed=n)
    return ImagineParams(identity_id=identity_id, prompt=f"portrait {n}", settings=settings)


async def drain(db: Database, engine: Engine, pairs, args) -> dict[str, float]:
    for n in range(args.jobs):
        owner, ident = pairs[n % len(pairs)]
        await jobs.enqueue(db, owner, imagine(ident, n, args.steps), max_active=args.jobs)
    timed = Timed(engine.generate)
    engine.generate = timed  # type: ignore[method-assign]
    try:
        worker = await new_worker(db, engine, burst=True)
        start = time.perf_counter()
        await worker.run()
        wall = time.perf_counter() - start
    finally:
        del engine.generate  # back to the class method
    assert worker.endings["done"] == args.jobs, worker.endings
    return {"jobs/min": 60 * args.jobs / wall, "s/job": wall / args.jobs,
            "engine share": timed.seconds / wall}  # fmt: skip


async def claim_delays(db: Database, engine: Engine, pairs, args) -> list[float]:
    worker = await new_worker(db, engine, poll_seconds=args.poll)
    task = asyncio.create_task(worker.run())
    delays = []
    try:
        for n in range(args.probes):
            await asyncio.sleep(random.uniform(0, args.poll))
            owner, ident = pairs[n % len(pairs)]
            queued = await jobs.enqueue(db, owner, imagine(ident, n, 1))
            record = await _until_done(db, queued.job_id)
            delays.append((record.started_at - record.created_at).total_seconds())
    finally:
        worker.request_stop()
        await task
    return delays


async def _until_done(db: Database, job_id: int):
    while True:
        record = await jobs.get_job(db, job_id)
        if record.state is JobState.DONE:
            return record
        await asyncio.sleep(0.05)


async def bench(url: str | None, engine: Engine, args) -> None:
    async with database(url) as (name, db):
        pairs = await setup_users(db, engine, args.users)
        rates = await drain(db, engine, pairs, args)
        delays = await claim_delays(db, engine, pairs, args)
    print(
        f"{name:9} {rates['jobs/min']:8.1f} {rates['s/job']:7.3f} {rates['engine share']:7.0%}"
        f" {statistics.mean(delays):8.3f} {statistics.median(delays):8.3f} {max(delays):8.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--poll", type=float, default=1.0)
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--pg-url", help=f"a PostgreSQL server's URL (default: ${PG_ENV})")
    args = parser.parse_args()
    pg_url = pg_server_url(args.pg_url)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    engine = load_engine("tiny")
    print(f"tiny engine loaded in {time.perf_counter() - start:.1f}s; {args.jobs} jobs of "
          f"256x256, {args.steps} step(s), {args.users} users; poll {args.poll}s")  # fmt: skip
    print(f"{'backend':9} {'jobs/min':>8} {'s/job':>7} {'engine':>7} "
          f"{'delay':>8} {'p50':>8} {'max':>8}   (claim delay in s, idle worker)")  # fmt: skip
    try:
        for url in (None, pg_url) if pg_url else (None,):
            asyncio.run(bench(url, engine, args))
    finally:
        engine.close()


if __name__ == "__main__":
    main()
