"""Inserting a job: the checks every new job passes, in the caller's transaction.

Used by storage.jobs.enqueue and storage.job_holds.release_held; nothing else inserts jobs.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage import fairness
from storage.errors import Banned, NameTaken, NotFound, QueueFull
from storage.job_sql import IDENTITIES, JOBS, QUEUED, RUNNING, USERS, J
from storage.models import utcnow
from storage.records import Enqueued, Params
from storage.schemas import Delivery, FaceMode, FaceParams, dump_params, load_params


def validated(params: Params) -> tuple[Params, dict[str, Any]]:
    """The parameters re-validated (objects built without validation too) and their JSON."""
    envelope = json.loads(dump_params(params))
    return load_params(envelope), envelope


async def check_user(s: AsyncSession, owner_id: int) -> None:
    """The owner exists and is not banned (row-locked: caps stay race-free on PostgreSQL)."""
    query = select(USERS.c.banned).where(USERS.c.id == owner_id).with_for_update()
    banned = await s.scalar(query)
    if banned is None:
        raise NotFound("Unknown user.", detail=f"user {owner_id}")
    if banned:
        raise Banned()


async def check_cap(s: AsyncSession, owner_id: int, limit: int) -> None:
    active = await s.scalar(
        select(func.count())
        .select_from(JOBS)
        .where(J.owner_id == owner_id, J.state.in_([QUEUED, RUNNING]))
    )
    if int(active or 0) >= limit:
        raise QueueFull(
            f"You already have {limit} jobs waiting or running; "
            "wait for one to finish or cancel one."
        )


async def check_references(s: AsyncSession, owner_id: int, params: Params) -> None:
    """Faces named or referenced by id must belong to the owner (a foreign id = unknown)."""
    ident = IDENTITIES.c
    if not isinstance(params, FaceParams):
        owner = await s.scalar(select(ident.owner_id).where(ident.id == params.identity_id))
        if owner is None or owner != owner_id:
            raise NotFound("That face does not exist.")
        return
    found = await s.scalar(
        select(ident.id).where(
            ident.owner_id == owner_id, func.lower(ident.name) == params.name.lower()
        )
    )
    if params.mode is FaceMode.ADD and found is not None:
        raise NameTaken(f"You already have a face named '{params.name}'.")
    if params.mode is FaceMode.MORE and found is None:
        raise NotFound(f"You have no face named '{params.name}'.")


def new_job(
    owner_id: int,
    kind: str,
    envelope: dict[str, Any],
    delivery: Delivery | None,
    input_blob: bytes | None,
) -> dict[str, Any]:
    """The column values of a new queued job."""
    now = utcnow()
    return {
        "owner_id": owner_id,
        "kind": kind,
        "params": envelope,
        "input_blob": input_blob,
        "state": QUEUED,
        "attempts": 0,
        "progress_step": 0,
        "progress_total": 0,
        "cancel_requested": False,
        "delivery_platform": delivery.platform if delivery else None,
        "delivery_channel": delivery.channel_id if delivery else None,
        "delivery_message": delivery.message_ref if delivery else None,
        "delivery_extra": dict(delivery.extra) if delivery else {},
        "delivered": False,
        "created_at": now,
        "updated_at": now,
    }


async def insert_job(
    s: AsyncSession, owner_id: int, typed: Params, values: dict[str, Any], limit: int
) -> Enqueued:
    """Check the owner, their cap and references, insert the job; its id and position."""
    await check_user(s, owner_id)
    await check_cap(s, owner_id, limit)
    await check_references(s, owner_id, typed)
    job_id = await s.scalar(insert(JOBS).values(**values).returning(J.id))
    assert job_id is not None
    total = USERS.c.jobs_total + 1
    await s.execute(update(USERS).where(USERS.c.id == owner_id).values(jobs_total=total))
    position = await fairness.position_of(s, owner_id, job_id, values["created_at"])
    return Enqueued(job_id=job_id, position=position)
