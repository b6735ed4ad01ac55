"""Concurrency and fairness of the queue, on both dialects.

Claimers use separate Database objects (separate engines and connections), as separate
worker processes would.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, select
from storage_helpers import embedding_bytes, make_user

from storage import identities, jobs
from storage.db import Database
from storage.errors import LimitReached, NameTaken, QueueFull
from storage.job_sql import JOBS
from storage.records import JobRecord, ResultData
from storage.schemas import ImagineParams, JobState, dump_params

N_USERS = 50
N_JOBS = 1000


async def _users_with_faces(db: Database, n: int) -> list[tuple[int, int]]:
    out = []
    face = embedding_bytes()
    for i in range(n):
        user = await make_user(db, f"u{i}")
        ident = await identities.save_identity(db, user.id, "me", face)
        out.append((user.id, ident.id))
    return out


async def _enqueue_all(db: Database, plan: list[tuple[int, int, int]]) -> dict[int, int]:
    """Enqueue (owner, identity, count) in order; returns job id -> owner."""
    owners = {}
    for owner, ident, count in plan:
        for k in range(count):
            params = ImagineParams(identity_id=ident, prompt=f"p{k}")
            receipt = await jobs.enqueue(db, owner, params, max_active=count)
            owners[receipt.job_id] = owner
    return owners


async def _bulk_queue(db: Database, plan: list[tuple[int, int, int]]) -> dict[int, int]:
    """Queue jobs like ``enqueue`` would, one after another, in a single statement (fast)."""
    start = datetime.now(UTC)
    rows = []
    for owner, ident, count in plan:
        for k in range(count):
            params = json.loads(dump_params(ImagineParams(identity_id=ident, prompt=f"p{k}")))
            at = start + timedelta(microseconds=len(rows))
            rows.append(_job_row(owner, params, at))
    async with db.transaction() as s:
        await s.execute(insert(JOBS), rows)
        result = await s.execute(select(JOBS.c.id, JOBS.c.owner_id))
        return {job_id: owner for job_id, owner in result}


def _job_row(owner: int, params: dict[str, object], at: datetime) -> dict[str, object]:
    return {
        "owner_id": owner,
        "kind": "imagine",
        "params": params,
        "state": "queued",
        "attempts": 0,
        "max_attempts": 3,
        "progress_step": 0,
        "progress_total": 0,
        "cancel_requested": False,
        "delivery_extra": {},
        "delivered": False,
        "created_at": at,
        "updated_at": at,
    }


async def _drain(db: Database, worker: str, order: list[JobRecord]) -> None:
    while (job := await jobs.claim(db, worker, reap=False)) is not None:
        order.append(job)
        assert await jobs.finish(db, job.id, worker, [ResultData(0, b"png", seed=job.id)])


async def test_concurrent_claimers_never_share_a_job(db_url: str, db: Database) -> None:
    people = await _users_with_faces(db, 10)
    owners = await _enqueue_all(db, [(o, i, 12) for o, i in people])
    workers = [await Database.open(db_url) for _ in range(8)]
    claimed: list[JobRecord] = []
    try:
        await asyncio.gather(*(_drain(w, f"w{n}", claimed) for n, w in enumerate(workers)))
    finally:
        for w in workers:
            await w.close()
    ids = [j.id for j in claimed]
    assert len(ids) == len(set(ids)) == len(owners)
    assert {j.attempts for j in claimed} == {1}
    done = await jobs.list_jobs(db, states=[JobState.DONE], limit=1000)
    assert len(done) == len(owners)


async def test_single_claim_race(db_url: str, db: Database) -> None:
    """Many claimers race for one job: exactly one wins."""
    ((owner, ident),) = await _users_with_faces(db, 1)
    await jobs.enqueue(db, owner, ImagineParams(identity_id=ident, prompt="x"))
    workers = [await Database.open(db_url) for _ in range(6)]
    try:
        got = await asyncio.gather(*(jobs.claim(w, f"w{n}") for n, w in enumerate(workers)))
    finally:
        for w in workers:
            await w.close()
    assert sum(j is not None for j in got) == 1


def _ranks(order: list[JobRecord]) -> list[int]:
    """For each claim, how many jobs its owner had had claimed so far (1 = their first)."""
    seen: Counter[int] = Counter()
    out = []
    for job in order:
        seen[job.owner_id] += 1
        out.append(seen[job.owner_id])
    return out


async def test_fair_round_robin_1000_jobs_50_users(db: Database) -> None:
    """One worker drains 1,000 jobs from 50 users, each user enqueuing all at once.

    Property: the k-th job of any user is claimed before the (k+1)-th job of any other user
    (the ranks of the claim sequence never decrease), every round serves users in the same
    order, and each user's jobs run in enqueue order.
    """
    people = await _users_with_faces(db, N_USERS)
    counts = [5 if i % 2 else 35 for i in range(N_USERS)]  # 25*5 + 25*35 = 1000
    plan = [(o, i, c) for (o, i), c in zip(people, counts, strict=True)]
    owners = await _bulk_queue(db, plan)
    assert len(owners) == N_JOBS
    sample = sorted(owners)[:: N_JOBS // 20]
    predicted = {j: await jobs.queue_position(db, j) for j in sample}

    started = time.perf_counter()
    order: list[JobRecord] = []
    await _drain(db, "w", order)
    elapsed = time.perf_counter() - started

    assert len(order) == N_JOBS
    ranks = _ranks(order)
    assert ranks == sorted(ranks)
    rounds: dict[int, list[int]] = defaultdict(list)
    for job, rank in zip(order, ranks, strict=True):
        rounds[rank].append(job.owner_id)
    first = rounds[1]
    assert first == [o for o, _, _ in plan]  # nobody waited longer than the batch user
    for rank, users in rounds.items():
        assert users == [u for u in first if counts[first.index(u)] >= rank]
    per_user: dict[int, list[int]] = defaultdict(list)
    for job in order:
        per_user[job.owner_id].append(job.id)
    assert all(ids == sorted(ids) for ids in per_user.values())
    actual = {job.id: n + 1 for n, job in enumerate(order)}
    assert predicted == {j: actual[j] for j in sample}  # position estimate is exact here
    assert elapsed < 30, f"draining took {elapsed:.1f}s"


async def test_newcomer_waits_at_most_one_round(db: Database) -> None:
    (a, fa), (b, fb), (c, fc) = await _users_with_faces(db, 3)
    await _enqueue_all(db, [(a, fa, 20), (b, fb, 20)])
    for _ in range(3):
        job = await jobs.claim(db, "w")
        assert job is not None
        await jobs.finish(db, job.id, "w", [])
    receipt = await jobs.enqueue(db, c, ImagineParams(identity_id=fc, prompt="hi"))
    assert receipt.position == 3
    order = []
    for _ in range(3):
        job = await jobs.claim(db, "w")
        assert job is not None
        order.append(job.owner_id)
        await jobs.finish(db, job.id, "w", [])
    assert order == [b, a, c]


async def test_user_with_running_job_yields(db: Database) -> None:
    """A user whose job is running is served only when nobody idle is waiting."""
    (a, fa), (b, fb) = await _users_with_faces(db, 2)
    await _enqueue_all(db, [(a, fa, 3)])
    first = await jobs.claim(db, "w1")
    assert first is not None and first.owner_id == a
    await _enqueue_all(db, [(b, fb, 1)])
    second = await jobs.claim(db, "w2")
    assert second is not None and second.owner_id == b
    third = await jobs.claim(db, "w3")  # everyone waiting is busy: a's next job
    assert third is not None and third.owner_id == a


async def test_concurrent_drain_stays_fair(db_url: str, db: Database) -> None:
    """Four workers drain 200 jobs of 20 users: no job twice, each user's jobs in order, and
    everybody's first job runs before anybody's third (plain FIFO would run 10 of one user's
    first). Finer order depends on which users are busy, which the timing decides."""
    people = await _users_with_faces(db, 20)
    await _enqueue_all(db, [(o, i, 10) for o, i in people])
    dbs = [await Database.open(db_url) for _ in range(4)]
    order: list[JobRecord] = []
    try:
        await asyncio.gather(*(_drain(d, f"w{n}", order) for n, d in enumerate(dbs)))
    finally:
        for d in dbs:
            await d.close()
    assert len(order) == 200 and len({j.id for j in order}) == 200
    by_time = sorted(order, key=lambda j: (j.started_at, j.id))
    per_user: dict[int, list[int]] = defaultdict(list)
    for job in by_time:
        per_user[job.owner_id].append(job.id)
    assert all(ids == sorted(ids) for ids in per_user.values())
    ranks = _ranks(by_time)
    last_first = max(i for i, r in enumerate(ranks) if r == 1)
    first_third = min(i for i, r in enumerate(ranks) if r == 3)
    assert last_first < first_third, ranks


async def test_concurrent_limits_hold(db: Database) -> None:
    """Caps and the single default hold when one user's requests race."""
    ((owner, ident),) = await _users_with_faces(db, 1)
    params = ImagineParams(identity_id=ident, prompt="x")
    tries = [jobs.enqueue(db, owner, params, max_active=3) for _ in range(8)]
    outcomes = await asyncio.gather(*tries, return_exceptions=True)
    assert sum(not isinstance(o, BaseException) for o in outcomes) == 3
    assert all(isinstance(o, QueueFull) for o in outcomes if isinstance(o, BaseException))

    fresh = await make_user(db, "fresh")
    face = embedding_bytes()
    saves = [
        identities.save_identity(db, fresh.id, f"n{i}", face, max_per_user=3) for i in range(6)
    ]
    saved = await asyncio.gather(*saves, return_exceptions=True)
    assert sum(not isinstance(o, BaseException) for o in saved) == 3
    assert all(isinstance(o, LimitReached) for o in saved if isinstance(o, BaseException))
    listed = await identities.list_identities(db, fresh.id)
    assert len(listed) == 3 and sum(i.is_default for i in listed) == 1

    same = [identities.save_identity(db, owner, "twin", face) for _ in range(4)]
    twins = await asyncio.gather(*same, return_exceptions=True)
    assert sum(not isinstance(o, BaseException) for o in twins) == 1
    assert all(isinstance(o, NameTaken) for o in twins if isinstance(o, BaseException))
