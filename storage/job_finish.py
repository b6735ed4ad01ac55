"""Finishing a job: results, the user's note and a face job's identity, in one transaction.

Re-exported by storage.jobs. Public API:
    finish(db, job_id, worker_id, results, *, note=None, identity=None) -> bool

The write is guarded by the worker's lease like every worker-side transition: a worker that
lost the job writes nothing — no results, no note and no identity — and gets False. A face
job's identity (:class:`~storage.records.IdentityWrite`) is saved or extended in the same
transaction as the job's results, so a worker killed at any moment leaves either nothing or
everything, and a re-run saves the face exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from storage import embeddings
from storage.db import Database
from storage.identities import extend_identity, insert_identity, name_taken
from storage.job_sql import RESULTS, USERS, J, closing, elapsed, guarded_row, held
from storage.models import utcnow
from storage.records import IdentityRecord, IdentityWrite, ResultData
from storage.schemas import FaceMode, JobState, ResultKind

log = logging.getLogger(__name__)

#: The longest note a job keeps (a summary line, not a report).
MAX_NOTE = 1000


def check_note(note: str | None) -> str | None:
    """The note stripped (None when empty); ValueError when it is too long to be a summary."""
    if note is None or not note.strip():
        return None
    if len(note) > MAX_NOTE:
        raise ValueError(f"a job note is at most {MAX_NOTE} characters, not {len(note)}")
    return note.strip()


def _check_results(results: Sequence[ResultData]) -> None:
    keys = [(r.kind, r.index) for r in results]
    if len(set(keys)) != len(keys):
        raise ValueError("results must have unique (kind, index) pairs")
    if any(not r.png for r in results) or any(r.kind is ResultKind.PREVIEW for r in results):
        raise ValueError("results need PNG bytes and cannot be previews")


async def finish(
    db: Database,
    job_id: int,
    worker_id: str,
    results: Sequence[ResultData],
    *,
    note: str | None = None,
    identity: IdentityWrite | None = None,
) -> bool:
    """Write results (and a face job's identity), keep ``note``, mark the job done: one transaction.

    Returns False (and writes nothing) if this worker no longer holds the job. The identity's
    refusals (NameTaken, NotFound, LimitReached, BadName, ImportRejected) roll everything back
    and propagate: the job stays running under the lease, for the worker to fail it.
    """
    _check_results(results)
    now = utcnow()
    values = closing(db, JobState.DONE, now)
    values.update(progress_step=J.progress_total, note=check_note(note))
    try:
        async with db.transaction() as s:
            row = await guarded_row(s, held(job_id, worker_id), values)
            if row is None:
                log.warning("job %s: finish by %s refused, lease lost", job_id, worker_id)
                return False
            face = await _write_identity(s, db, row.owner_id, identity)
            await _store_results(s, job_id, row.owner_id, results)
    except IntegrityError as exc:  # a racing save of the same face name won
        if identity is None:
            raise
        raise name_taken(identity.name) from exc
    _log_done(job_id, worker_id, row, now, results, face)
    return True


async def _write_identity(
    s: AsyncSession, db: Database, owner_id: int, write: IdentityWrite | None
) -> IdentityRecord | None:
    if write is None:
        return None
    emb = embeddings.unpack(write.embedding, max_refs=db.limits.max_refs)
    if write.mode is FaceMode.MORE:
        return await extend_identity(
            s, db, owner_id, write.name, emb, make_default=write.make_default
        )
    return await insert_identity(
        s, db, owner_id, write.name, emb,
        thumbnail=write.thumbnail, make_default=write.make_default,
    )  # fmt: skip


async def _store_results(
    s: AsyncSession, job_id: int, owner_id: int, results: Sequence[ResultData]
) -> None:
    await s.execute(delete(RESULTS).where(RESULTS.c.job_id == job_id))
    if not results:
        return
    now = utcnow()
    rows = [
        {
            "job_id": job_id,
            "index": r.index,
            "kind": r.kind.value,
            "png": r.png,
            "seed": r.seed,
            "prompt": r.prompt,
            "identity_score": r.identity_score,
            "created_at": now,
        }
        for r in results
    ]
    await s.execute(insert(RESULTS), rows)
    images = sum(1 for r in results if r.kind is ResultKind.IMAGE)
    total = USERS.c.images_total + images
    await s.execute(update(USERS).where(USERS.c.id == owner_id).values(images_total=total))


def _log_done(
    job_id: int,
    worker_id: str,
    row: Any,
    now: datetime,
    results: Sequence[ResultData],
    face: IdentityRecord | None,
) -> None:
    saved = f"; face {face.name!r} ({face.n_refs} refs)" if face else ""
    log.info(
        "job %s done by %s (attempt %s, %.1fs): %s results%s",
        *(job_id, worker_id, row.attempts, elapsed(row, now), len(results), saved),
    )
