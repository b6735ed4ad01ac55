"""Deleting one finished job and its images (the result "Delete" button).

This is the one write the core does outside the storage API, which has no per-job delete yet;
it belongs in ``storage.jobs`` and should move there.
"""

from __future__ import annotations

import logging

from sqlalchemy import delete, select

from bot.core.errors import Conflict, NotFound
from storage import models
from storage.db import Database
from storage.schemas import JobState

log = logging.getLogger(__name__)

_FINISHED = [s.value for s in JobState if s.finished]


async def delete_finished_job(db: Database, owner_id: int, job_id: int) -> None:
    """Remove the owner's finished job and its results; active jobs must be cancelled first."""
    job = models.Job
    async with db.transaction() as s:
        state = await s.scalar(select(job.state).where(job.id == job_id, job.owner_id == owner_id))
        if state is None:
            raise NotFound(f"You have no job {job_id}.")
        if state not in _FINISHED:
            raise Conflict(f"Job {job_id} is still {state}; cancel it first.")
        await s.execute(delete(models.Result).where(models.Result.job_id == job_id))
        await s.execute(delete(job).where(job.id == job_id, job.owner_id == owner_id))
    log.info("job %s of user %s deleted by its owner", job_id, owner_id)
