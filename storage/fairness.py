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


def candidate_query(
    dialect: str, kinds: Collection[JobKind] | None = None, *, lock: bool = False
) -> Select[Any]:
    """SELECT the id of the next job to claim (see module docstring), LIMIT 1.

    With ``lock`` (PostgreSQL) the row is locked ``FOR UPDATE SKIP LOCKED``.
    """
    cand = aliased(models.Job, name="cand")
    head = aliased(models.Job, name="head")
    busy = aliased(models.Job, name="busy")
    kind_values = [k.value for k in kinds] if kinds is not None else None
    head_filter = [head.owner_id == cand.owner_id, head.state == QUEUED]
    if kind_values is not None:
        head_filter.append(head.kind.in_(kind_values))
    head_id = (
        select(head.id)
        .where(*head_filter)
        .order_by(head.created_at, head.id)
        .limit(1)
        .correlate(cand)
        .scalar_subquery()
    )
    is_busy = exists().where(busy.owner_id == cand.owner_id, busy.state == RUNNING).correlate(cand)
    waiting = _later(
        dialect, func.coalesce(models.User.last_claim_at, cand.created_at), cand.created_at
    )
    query = (
        select(cand.id)
        .join(models.User, models.User.id == cand.owner_id)
        .where(cand.state == QUEUED, cand.id == head_id)
        .order_by(case((is_busy, 1), else_=0), waiting, cand.owner_id)
        .limit(1)
    )
    return query.with_for_update(skip_locked=True, of=cand) if lock else query


@dataclass(frozen=True)
class _Waiting:
    owner_id: int
    queued: int
    key: tuple[int, datetime, int]


async def _waiting_users(s: AsyncSession) -> list[_Waiting]:
    busy = aliased(models.Job, name="busy")
    is_busy = exists().where(and_(busy.owner_id == models.Job.owner_id, busy.state == RUNNING))
    rows = await s.execute(
        select(
            models.Job.owner_id,
            func.count(),
            func.min(models.Job.created_at),
            models.User.last_claim_at,
            case((is_busy, 1), else_=0),
        )
        .join(models.User, models.User.id == models.Job.owner_id)
        .where(models.Job.state == QUEUED)
        .group_by(models.Job.owner_id, models.User.last_claim_at)
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


async def queue_position(s: AsyncSession, job: models.Job) -> int | None:
    """Estimated 1-based position of a queued job (None unless queued)."""
    if job.state != QUEUED:
        return None
    earlier = await s.scalar(
        select(func.count())
        .select_from(models.Job)
        .where(
            models.Job.owner_id == job.owner_id,
            models.Job.state == QUEUED,
            (models.Job.created_at < job.created_at)
            | ((models.Job.created_at == job.created_at) & (models.Job.id < job.id)),
        )
    )
    users = await _waiting_users(s)
    return estimate_position(users, job.owner_id, int(earlier or 0) + 1)
