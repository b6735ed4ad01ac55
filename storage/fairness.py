"""The fair order in which queued jobs are claimed, as SQL, and the queue-position estimate.

Definition (what ``claim`` implements):

* Each user with queued jobs offers exactly one candidate: their *head*, the oldest of their
  queued jobs (``created_at``, then ``id``) — a user's own jobs always run in order.
* A user's *waiting-since* time is the later of (a) when one of their jobs was last claimed
  (the latest ``started_at`` of their jobs) and (b) when their head job was enqueued: how
  long they have waited for service, counting from their last turn.
* Users with no running job come first; among them the one with the earliest waiting-since
  wins (ties: lower user id). Only when every waiting user already has a job running is a busy
  user's head claimed, by the same order.

So a user who enqueues a 20-prompt batch gets one turn per round: every other waiting user is
served once before the batch's next job runs (round-robin by service time), and a newcomer
waits at most one round. Within one user, jobs run in enqueue order.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, case, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.job_sql import JOBS, QUEUED, RUNNING
from storage.schemas import JobKind

J = JOBS.c


def _later(dialect: str, a: Any, b: Any) -> Any:
    return func.max(a, b) if dialect == "sqlite" else func.greatest(a, b)


def _heads(kinds: frozenset[JobKind] | None) -> Any:
    """Per waiting user: their oldest queued job's time and how many jobs they have queued."""
    query = select(
        J.owner_id.label("owner_id"),
        func.min(J.created_at).label("first"),
        func.count().label("queued"),
    ).where(J.state == QUEUED, *_kind_filter(J, kinds))
    return query.group_by(J.owner_id).subquery("heads")


def _last_claim(owner: Any) -> Any:
    """When one of the user's jobs was last claimed (index ix_jobs_owner_started)."""
    past = JOBS.alias("past").c
    return select(func.max(past.started_at)).where(past.owner_id == owner).scalar_subquery()


def _busy(owner: Any) -> Any:
    busy = JOBS.alias("busy").c
    return case((exists().where(busy.owner_id == owner, busy.state == RUNNING), 1), else_=0)


def candidate_query(
    dialect: str, kinds: Collection[JobKind] | None = None, *, lock: bool = False
) -> Select[Any]:
    """SELECT the id of the next job to claim (see module docstring), LIMIT 1.

    With ``lock`` (PostgreSQL) the row is locked ``FOR UPDATE SKIP LOCKED``.
    """
    return _candidate_query(dialect, None if kinds is None else frozenset(kinds), lock)


def _kind_filter(job: Any, kinds: frozenset[JobKind] | None) -> list[Any]:
    return [] if kinds is None else [job.kind.in_(sorted(k.value for k in kinds))]


def _turn_order(dialect: str, heads: Any) -> list[Any]:
    last = func.coalesce(_last_claim(heads.c.owner_id), heads.c.first)
    return [_busy(heads.c.owner_id), _later(dialect, last, heads.c.first), heads.c.owner_id]


@functools.lru_cache(maxsize=32)
def _candidate_query(dialect: str, kinds: frozenset[JobKind] | None, lock: bool) -> Select[Any]:
    heads = _heads(kinds)
    cand_table = JOBS.alias("cand")
    cand = cand_table.c
    if dialect == "sqlite":  # no row locks: pick the user first, then their head job
        owner = (
            select(heads.c.owner_id)
            .order_by(*_turn_order(dialect, heads))
            .limit(1)
            .scalar_subquery()
        )
        return (
            select(cand.id)
            .where(cand.state == QUEUED, cand.owner_id == owner, *_kind_filter(cand, kinds))
            .order_by(cand.created_at, cand.id)
            .limit(1)
        )
    match = [cand.owner_id == heads.c.owner_id, cand.state == QUEUED]
    match += [cand.created_at == heads.c.first, *_kind_filter(cand, kinds)]
    query = (
        select(cand.id)
        .select_from(heads)
        .join(cand_table, and_(*match))
        .order_by(*_turn_order(dialect, heads), cand.id)
        .limit(1)
    )
    return query.with_for_update(skip_locked=True, of=cand_table) if lock else query


@dataclass(frozen=True)
class _Waiting:
    owner_id: int
    queued: int
    key: tuple[int, datetime, int]


async def _waiting_users(s: AsyncSession) -> list[_Waiting]:
    heads = _heads(None)
    rows = await s.execute(
        select(
            heads.c.owner_id,
            heads.c.queued,
            heads.c.first,
            _last_claim(heads.c.owner_id),
            _busy(heads.c.owner_id),
        )
    )
    return [_waiting(*row) for row in rows]


def _waiting(owner: int, n: int, oldest: datetime, last: datetime | None, busy: int) -> _Waiting:
    since = max(last, oldest) if last is not None else oldest
    return _Waiting(owner_id=owner, queued=int(n), key=(int(busy), since, owner))


def estimate_position(users: Sequence[_Waiting], owner_id: int, rank: int) -> int:
    """1-based position of the owner's ``rank``-th queued job under round-robin claiming."""
    me = next(u for u in users if u.owner_id == owner_id)
    ahead = rank - 1
    for other in users:
        if other.owner_id == owner_id:
            continue
        rounds = rank if other.key < me.key else rank - 1
        ahead += min(other.queued, rounds)
    return ahead + 1


async def position_of(s: AsyncSession, owner_id: int, job_id: int, created_at: datetime) -> int:
    """Estimated 1-based position of a queued job under fair (round-robin) claiming."""
    earlier = await s.scalar(
        select(func.count())
        .select_from(JOBS)
        .where(
            J.owner_id == owner_id,
            J.state == QUEUED,
            (J.created_at < created_at) | ((J.created_at == created_at) & (J.id < job_id)),
        )
    )
    users = await _waiting_users(s)
    return estimate_position(users, owner_id, int(earlier or 0) + 1)
