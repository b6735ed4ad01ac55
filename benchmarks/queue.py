"""Job queue throughput and claim latency on SQLite and PostgreSQL.

    .venv/bin/python benchmarks/queue.py [--pg-url URL] [--jobs 400] [--users 20] [--workers 4]

For each backend it builds a fresh, migrated database (a temporary SQLite file; a throwaway
database created on the PostgreSQL server, dropped afterwards), then

1. enqueue: one producer enqueues ``--jobs`` imagine jobs for ``--users`` users, round-robin,
   through ``storage.jobs.enqueue`` (validation, caps, position) — jobs per second;
2. drain: ``--workers`` concurrent worker processes (as in production), started together,
   loop ``claim`` → ``finish`` (one 4 KiB PNG-sized result) until the queue is empty — jobs
   per second, and the p50/p99 latency of ``claim`` (which also re-queues expired leases,
   as workers do; the final empty claim of each worker is included).

Without ``--pg-url`` it uses ``$PULID_BOT_TEST_PG_URL`` when set
(``eval "$(scripts/test-postgres.sh)"``) and otherwise measures SQLite only. Prints a table.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder would come first on sys.path and its name would shadow
# the standard library's ``queue`` module (imported by asyncio): the repository root takes its
# place, so that ``benchmarks`` is importable either way.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent) if Path(p or ".").resolve() == _HERE else p for p in sys.path]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import multiprocessing  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import AsyncIterator  # noqa: E402
from contextlib import asynccontextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks._common import PG_ENV, pg_database, pg_server_url  # noqa: E402
from storage import embeddings, identities, jobs, users  # noqa: E402
from storage.db import Database, upgrade  # noqa: E402
from storage.records import ResultData  # noqa: E402
from storage.schemas import ImagineParams  # noqa: E402

RESULT_PNG = bytes(4096)


@dataclass(frozen=True)
class Figures:
    backend: str
    enqueue_per_s: float
    drain_per_s: float
    claim_p50_ms: float
    claim_p99_ms: float


@asynccontextmanager
async def sqlite_database() -> AsyncIterator[str]:
    with tempfile.TemporaryDirectory(prefix="pulid-queue-bench-") as tmp:
        yield f"sqlite+aiosqlite:///{tmp}/bench.db"


def _face() -> bytes:
    rng = np.random.default_rng(0)
    emb = embeddings.IdentityEmbedding(
        id_tokens=rng.standard_normal((1, 32, 2048)).astype(np.float16),
        uncond_tokens=np.zeros((32, 2048), np.float16),
        arcface=rng.standard_normal((1, 512)).astype(np.float32),
        fingerprint="benchmark",
    )
    return embeddings.pack(emb)


async def _people(db: Database, n: int) -> list[tuple[int, int]]:
    face = _face()
    out = []
    for i in range(n):
        user = await users.get_or_create_user(db, "bench", str(i))
        ident = await identities.save_identity(db, user.id, "face", face)
        out.append((user.id, ident.id))
    return out


async def _enqueue(db: Database, people: list[tuple[int, int]], n_jobs: int) -> float:
    started = time.perf_counter()
    for k in range(n_jobs):
        owner, ident = people[k % len(people)]
        params = ImagineParams(identity_id=ident, prompt=f"portrait {k}")
        await jobs.enqueue(db, owner, params, max_active=n_jobs)
    return n_jobs / (time.perf_counter() - started)


async def _worker(url: str, name: str) -> tuple[int, list[float], float]:
    """Claim and finish until the queue is empty; returns count, claim latencies, end time."""
    db = await Database.open(url)
    done, latencies = 0, []
    try:
        while True:
            t0 = time.perf_counter()
            job = await jobs.claim(db, name)
            latencies.append(time.perf_counter() - t0)
            if job is None:
                return done, latencies, time.time()
            await jobs.finish(db, job.id, name, [ResultData(0, RESULT_PNG, seed=job.id)])
            done += 1
    finally:
        await db.close()


def _worker_process(url: str, name: str, barrier: Any, out: Any) -> None:
    """One worker process (workers are separate processes in production)."""
    barrier.wait()
    out.put(asyncio.run(_worker(url, name)))


def _drain(url: str, backend: str, n_workers: int) -> tuple[int, list[float], float]:
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(n_workers + 1), ctx.Queue()
    procs = [
        ctx.Process(target=_worker_process, args=(url, f"{backend}-w{i}", barrier, out))
        for i in range(n_workers)
    ]
    for proc in procs:
        proc.start()
    barrier.wait()
    started = time.time()
    reports = [out.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
    done = sum(r[0] for r in reports)
    latencies = [x for r in reports for x in r[1]]
    return done, latencies, max(r[2] for r in reports) - started


async def measure(backend: str, url: str, n_jobs: int, n_users: int, n_workers: int) -> Figures:
    await upgrade(url)
    db = await Database.open(url)
    try:
        people = await _people(db, n_users)
        enqueue_rate = await _enqueue(db, people, n_jobs)
    finally:
        await db.close()
    done, latencies, elapsed = await asyncio.to_thread(_drain, url, backend, n_workers)
    assert done == n_jobs, f"drained {done} of {n_jobs} jobs"
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
    return Figures(backend, enqueue_rate, n_jobs / elapsed, statistics.median(ms), p99)


def _print(rows: list[Figures], args: argparse.Namespace) -> None:
    print(f"queue benchmark: {args.jobs} jobs, {args.users} users, {args.workers} workers")
    print(f"{'backend':<10} {'enqueue/s':>10} {'claim+finish/s':>15} {'claim p50':>10} {'p99':>9}")
    for r in rows:
        print(
            f"{r.backend:<10} {r.enqueue_per_s:>10.0f} {r.drain_per_s:>15.0f} "
            f"{r.claim_p50_ms:>8.2f}ms {r.claim_p99_ms:>7.2f}ms"
        )


async def main(args: argparse.Namespace) -> None:
    rows = []
    async with sqlite_database() as url:
        rows.append(await measure("sqlite", url, args.jobs, args.users, args.workers))
    pg_url = pg_server_url(args.pg_url)
    if pg_url:
        async with pg_database(pg_url) as url:
            rows.append(await measure("postgres", url, args.jobs, args.users, args.workers))
    else:
        print(f"(no --pg-url and no {PG_ENV}: PostgreSQL skipped)", file=sys.stderr)
    _print(rows, args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg-url", help="postgresql+asyncpg:// URL of a server (CREATE DATABASE)")
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--workers", type=int, default=4)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
