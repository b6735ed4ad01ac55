"""Job results (PNG bytes in the database), owner-checked.

Public API (all async, ``db`` first):
    list_results(db, owner_id, job_id, *, kinds=(IMAGE, GRID)) -> list[ResultRecord]  (NotFound)
    get_result(db, owner_id, job_id, index, *, kind=ResultKind.IMAGE) -> ResultRecord (NotFound)
    get_preview(db, owner_id, job_id) -> bytes | None      (the job's preview, if any)
A foreign job behaves exactly like an unknown one. Results are written only by
storage.jobs.finish, previews by storage.jobs.progress or, for a refused job (the faces found,
numbered), by storage.jobs.fail; ``list_results(..., kinds=(ResultKind.PREVIEW,))`` reads those.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage import models
from storage.db import Database
from storage.errors import NotFound
from storage.records import ResultRecord
from storage.schemas import ResultKind

FINAL_KINDS = (ResultKind.IMAGE, ResultKind.GRID)


async def _own_job(s: AsyncSession, owner_id: int, job_id: int) -> None:
    owner = await s.scalar(select(models.Job.owner_id).where(models.Job.id == job_id))
    if owner is None or owner != owner_id:
        raise NotFound(f"You have no job {job_id}.")


async def list_results(
    db: Database,
    owner_id: int,
    job_id: int,
    *,
    kinds: Collection[ResultKind] = FINAL_KINDS,
) -> list[ResultRecord]:
    """The job's results, by kind then index."""
    async with db.session() as s:
        await _own_job(s, owner_id, job_id)
        rows = await s.scalars(
            select(models.Result)
            .where(
                models.Result.job_id == job_id,
                models.Result.kind.in_([k.value for k in kinds]),
            )
            .order_by(models.Result.kind, models.Result.index)
        )
        return [ResultRecord.of(r) for r in rows]


async def get_result(
    db: Database, owner_id: int, job_id: int, index: int, *, kind: ResultKind = ResultKind.IMAGE
) -> ResultRecord:
    """One result of the user's job, or NotFound."""
    async with db.session() as s:
        await _own_job(s, owner_id, job_id)
        row = await s.scalar(
            select(models.Result).where(
                models.Result.job_id == job_id,
                models.Result.kind == kind.value,
                models.Result.index == index,
            )
        )
        if row is None:
            raise NotFound(f"Job {job_id} has no image {index}.")
        return ResultRecord.of(row)


async def get_preview(db: Database, owner_id: int, job_id: int) -> bytes | None:
    """The job's preview (progress, or the faces a refused job found), if one was stored."""
    async with db.session() as s:
        await _own_job(s, owner_id, job_id)
        return await s.scalar(
            select(models.Result.png).where(
                models.Result.job_id == job_id, models.Result.kind == ResultKind.PREVIEW.value
            )
        )
