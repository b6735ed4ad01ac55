"""The fair order in which queued jobs are claimed, as SQL, and the queue-position estimate.

Definition (what ``claim`` implements):

* Each user with queued jobs offers exactly one candidate: their *head*, the oldest of their
  queued jobs (``created_at``, then ``id``) — a user's own jobs always run in order.
* A user's *waiting-since* time is the later of (a) when one of their jobs was last claimed
  (``users.last_claim_at``) and (b) when their head job was enqueued. It is how long they have
  waited for service, counting from their last turn.
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
from sqlalchemy.orm import aliased

from storage import models
from storage.schemas import JobKind, JobState

QUEUED = JobState.QUEUED.value
RUNNING = JobState.RUNNING.value


def _later(dialect: str, a: Any, b: Any) -> Any:
    return func.max(a, b) if dialect == "sqlite" else func.greatest(a, b)


def _heads(kinds: frozenset[JobKind] | None) -> Any:
    """Per waiting user: their oldest queued job's time and how many jobs they have queued."""
    query = select(
        models.Job.owner_id.label("owner_id"),
        func.min(models.Job.created_at).label("first"),
        func.count().label("queued"),
    ).where(models.Job.state == QUEUED)
    if kinds is not None:
        query = query.where(models.Job.kind.in_(sorted(k.value for k in kinds)))
    return query.group_by(models.Job.owner_id).subquery("heads")


def _busy(owner: Any) -> Any:
    busy = aliased(models.Job, name="busy")
    return case((exists().where(busy.owner_id == owner, busy.state == RUNNING), 1), else_=0)


def candidate_query(
    dialect: str, kinds: Collection[JobKind] | None = None, *, lock: bool = False
) -> Select[Any]:
    """SELECT the id of the next job to claim (see module docstring), LIMIT 1.

    With ``lock`` (PostgreSQL) the row is locked ``FOR UPDATE SKIP LOCKED``.
    """
    return _candidate_query(dialect, None if kinds is None else frozenset(kinds), lock)


@functools.lru_cache(maxsize=32)
def _candidate_query(dialect: str, kinds: frozenset[JobKind] | None, lock: bool) -> Select[Any]:
    heads = _heads(kinds)
    cand = aliased(models.Job, name="cand")
    last = func.coalesce(models.User.last_claim_at, heads.c.first)
    match = [cand.owner_id == heads.c.owner_id, cand.state == QUEUED]
    match.append(cand.created_at == heads.c.first)
    if kinds is not None:
        match.append(cand.kind.in_(sorted(k.value for k in kinds)))
    query = (
        select(cand.id)
        .select_from(heads)
        .join(models.User, models.User.id == heads.c.owner_id)
        .join(cand, and_(*match))
        .order_by(_busy(heads.c.owner_id), _later(dialect, last, heads.c.first))
        .order_by(heads.c.owner_id, cand.id)
        .limit(1)
    )
    return query.with_for_update(skip_locked=True, of=cand) if lock else query


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
            models.User.last_claim_at,
            _busy(heads.c.owner_id),
        ).join(models.User, models.User.id == heads.c.owner_id)
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
    job = models.Job
    earlier = await s.scalar(
        select(func.count())
        .select_from(job)
        .where(
            job.owner_id == owner_id,
            job.state == QUEUED,
            (job.created_at < created_at) | ((job.created_at == created_at) & (job.id < job_id)),
        )
    )
    users = await _waiting_users(s)
    return estimate_position(users, owner_id, int(earlier or 0) + 1)
