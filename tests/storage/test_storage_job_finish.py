"""Finishing, failing and releasing jobs on both dialects: notes, faces saved with the job,
releases that do not count, and unreadable jobs that claim fails instead of running."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select
from storage_helpers import embedding_bytes, make_user, snapshot

from storage import identities, job_finish, jobs, results
from storage.db import Database
from storage.errors import LeaseLost, NameTaken, NotFound
from storage.job_insert import new_job
from storage.job_sql import JOBS
from storage.records import IdentityWrite, ResultData
from storage.schemas import (
    PARAMS_VERSION,
    Delivery,
    FaceMode,
    FaceParams,
    ImagineParams,
    JobState,
)

DELIVERY = Delivery(platform="telegram", channel_id="42")


async def _setup(db: Database, uid: str = "1") -> tuple[int, int]:
    user = await make_user(db, uid)
    ident = await identities.save_identity(db, user.id, "me", embedding_bytes())
    return user.id, ident.id


async def _claimed_imagine(db: Database, **enqueue: Any) -> tuple[int, int]:
    owner, ident = await _setup(db)
    queued = await jobs.enqueue(db, owner, ImagineParams(identity_id=ident, prompt="p"), **enqueue)
    job = await jobs.claim(db, "w")
    assert job is not None and job.id == queued.job_id
    return owner, job.id


# --- notes ------------------------------------------------------------------------------------


async def test_finish_and_fail_keep_the_note_for_the_user(db: Database) -> None:
    owner, job_id = await _claimed_imagine(db)
    note = "mean likeness 0.52 (7 of 8 with a face); tiny preset: the images are noise"
    assert await jobs.finish(db, job_id, "w", [ResultData(0, b"png")], note=f"  {note}\n")
    assert (await jobs.get_job(db, job_id)).note == note
    [listed] = await jobs.list_jobs(db, owner_id=owner)
    assert listed.note == note

    ident = (await identities.get_identity(db, owner, "me")).id
    again = await jobs.enqueue(db, owner, ImagineParams(identity_id=ident, prompt="p"))
    assert (await jobs.get_job(db, again.job_id)).note is None
    assert await jobs.claim(db, "w") is not None
    assert await jobs.fail(db, again.job_id, "w", "No face found.", "x", note="Haar fallback")
    failed = await jobs.get_job(db, again.job_id)
    assert (failed.state, failed.error_user, failed.note) == (
        JobState.FAILED,
        "No face found.",
        "Haar fallback",
    )


async def test_notes_are_summaries_and_requeued_jobs_lose_theirs(db: Database) -> None:
    _, job_id = await _claimed_imagine(db)
    with pytest.raises(ValueError, match="at most 1000"):
        await jobs.finish(db, job_id, "w", [], note="x" * 1001)
    with pytest.raises(ValueError, match="at most 1000"):
        await jobs.fail(db, job_id, "w", "boom", note="x" * 1001)
    assert (await jobs.get_job(db, job_id)).state is JobState.RUNNING
    assert await jobs.finish(db, job_id, "w", [], note="   ")
    assert (await jobs.get_job(db, job_id)).note is None


# --- release ----------------------------------------------------------------------------------


async def test_release_requeues_without_counting_the_attempt(db: Database) -> None:
    _, job_id = await _claimed_imagine(db)
    await jobs.progress(db, job_id, "w", 3, 8)
    before = await snapshot(db)
    assert not await jobs.release(db, job_id, "intruder")
    assert await snapshot(db) == before
    assert await jobs.release(db, job_id, "w")
    released = await jobs.get_job(db, job_id)
    assert (released.state, released.attempts, released.lease_owner) == (JobState.QUEUED, 0, None)
    assert (released.lease_expires, released.progress_step, released.progress_total) == (None, 0, 0)
    assert not await jobs.release(db, job_id, "w")  # no longer held
    with pytest.raises(LeaseLost):
        await jobs.heartbeat(db, job_id, "w")
    again = await jobs.claim(db, "w2")
    assert again is not None and (again.id, again.attempts) == (job_id, 1)


async def test_releases_never_use_up_attempts_but_a_killed_worker_does(db: Database) -> None:
    """A graceful stop gives the try back; a worker killed outright (lease expiry) keeps it."""
    _, job_id = await _claimed_imagine(db, max_attempts=2)
    for _ in range(3):  # more releases than max_attempts: none of them counts
        assert await jobs.release(db, job_id, "w")
        job = await jobs.claim(db, "w")
        assert job is not None and job.attempts == 1
    now = datetime.now(UTC)
    killed = now + timedelta(hours=1)  # the lease ran out: the worker was killed (SIGKILL)
    assert (await jobs.requeue_expired(db, now=killed)).requeued == [job_id]
    assert (await jobs.get_job(db, job_id)).attempts == 1
    job = await jobs.claim(db, "w3", now=killed, reap=False)
    assert job is not None and job.attempts == 2
    assert (await jobs.requeue_expired(db, now=killed + timedelta(hours=1))).failed == [job_id]
    assert (await jobs.get_job(db, job_id)).state is JobState.FAILED


async def test_release_of_a_job_its_owner_cancelled_cancels_it(db: Database) -> None:
    owner, job_id = await _claimed_imagine(db)
    assert await jobs.cancel(db, owner, job_id) is JobState.RUNNING
    assert await jobs.release(db, job_id, "w")
    cancelled = await jobs.get_job(db, job_id)
    assert (cancelled.state, cancelled.attempts) == (JobState.CANCELLED, 1)
    assert await jobs.claim(db, "w") is None


# --- a face saved with its job ------------------------------------------------------------------


async def _claimed_face(db: Database, params: FaceParams) -> tuple[int, int]:
    owner = (await make_user(db)).id
    if params.mode is FaceMode.MORE:
        await identities.save_identity(db, owner, "me", embedding_bytes())
        await identities.save_identity(db, owner, "other", embedding_bytes(seed=1))
    await jobs.enqueue(db, owner, params, input_blob=b"upload")
    job = await jobs.claim(db, "w")
    assert job is not None
    return owner, job.id


async def test_finish_saves_a_new_face_with_the_job(db: Database) -> None:
    owner, job_id = await _claimed_face(db, FaceParams(name="Astro"))
    face = IdentityWrite("Astro", embedding_bytes(seed=3), thumbnail=b"thumb")
    assert await jobs.finish(db, job_id, "w", [ResultData(0, b"png")], identity=face)
    saved = await identities.get_identity(db, owner, "astro")
    assert (saved.name, saved.n_refs, saved.is_default, saved.thumbnail) == (
        "Astro",
        1,
        True,
        b"thumb",
    )
    assert (await jobs.get_job(db, job_id)).state is JobState.DONE
    assert len(await results.list_results(db, owner, job_id)) == 1


async def test_finish_adds_a_photo_to_a_face_and_makes_it_the_default(db: Database) -> None:
    owner, job_id = await _claimed_face(
        db, FaceParams(name="other", mode=FaceMode.MORE, make_default=True)
    )
    more = IdentityWrite("OTHER", embedding_bytes(seed=4), mode=FaceMode.MORE, make_default=True)
    assert await jobs.finish(db, job_id, "w", [ResultData(0, b"png")], identity=more)
    faces = {f.name: f for f in await identities.list_identities(db, owner)}
    assert (faces["other"].n_refs, faces["other"].is_default) == (2, True)
    assert (faces["me"].n_refs, faces["me"].is_default) == (1, False)


async def test_a_lost_lease_saves_no_face(db: Database) -> None:
    """A worker whose job was taken over (it looked dead) writes nothing, not even the face."""
    owner, job_id = await _claimed_face(db, FaceParams(name="astro"))
    face = IdentityWrite("astro", embedding_bytes())
    late = datetime.now(UTC) + timedelta(hours=1)
    assert await jobs.claim(db, "w2", now=late) is not None  # reaped and claimed again
    before = await snapshot(db)
    assert not await jobs.finish(db, job_id, "w", [ResultData(0, b"png")], identity=face)
    assert await snapshot(db) == before
    assert await identities.list_identities(db, owner) == []
    assert await jobs.finish(db, job_id, "w2", [ResultData(0, b"png")], identity=face)
    assert [f.n_refs for f in await identities.list_identities(db, owner)] == [1]


async def test_a_finish_that_breaks_halfway_saves_no_face(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The face is written before the results: if the rest fails, the face is rolled back."""
    owner, job_id = await _claimed_face(db, FaceParams(name="astro"))

    async def broken(*args: object) -> None:
        raise ConnectionError("the database went away mid-transaction")

    monkeypatch.setattr(job_finish, "_store_results", broken)
    before = await snapshot(db)
    with pytest.raises(ConnectionError):
        await jobs.finish(db, job_id, "w", [], identity=IdentityWrite("astro", embedding_bytes()))
    assert await snapshot(db) == before and await identities.list_identities(db, owner) == []


@pytest.mark.parametrize(
    ("params", "write", "error", "message"),
    [
        (
            FaceParams(name="astro"),
            IdentityWrite("astro", b""),
            NameTaken,
            "already have a face named 'astro'",
        ),
        (
            FaceParams(name="me", mode=FaceMode.MORE),
            IdentityWrite("gone", b"", mode=FaceMode.MORE),
            NotFound,
            "no face named 'gone'",
        ),
    ],
    ids=["name-taken", "face-gone"],
)
async def test_a_refused_face_writes_nothing(
    db: Database, params: FaceParams, write: IdentityWrite, error: type, message: str
) -> None:
    owner, job_id = await _claimed_face(db, params)
    if params.mode is FaceMode.ADD:  # saved by another job after this one was queued
        await identities.save_identity(db, owner, "astro", embedding_bytes())
    before = await snapshot(db)
    write = IdentityWrite(write.name, embedding_bytes(seed=9), mode=write.mode)
    with pytest.raises(error, match=message):
        await jobs.finish(db, job_id, "w", [ResultData(0, b"png")], identity=write)
    assert await snapshot(db) == before  # the job is still running, for the worker to fail
    assert await jobs.fail(db, job_id, "w", "refused")


# --- unreadable jobs --------------------------------------------------------------------------


async def _insert_raw(db: Database, owner: int, kind: str, params: Any) -> int:
    """Test fixture: a queued row written behind the API (another version, or damaged)."""
    async with db.transaction() as s:
        values = new_job(owner, kind, params, DELIVERY, None) | {"max_attempts": 3}
        job_id = await s.scalar(insert(JOBS).values(**values).returning(JOBS.c.id))
    assert job_id is not None
    return int(job_id)


UNREADABLE_ROWS = [
    ("imagine", {"v": PARAMS_VERSION, "params": {"kind": "imagine", "prompt": ""}}),
    ("imagine", {"v": PARAMS_VERSION + 1, "params": {"kind": "imagine", "prompt": "new"}}),
    ("face", "not an envelope"),
    ("imagine", {"v": PARAMS_VERSION, "params": {"kind": "face", "name": "me"}}),
]


async def test_claim_fails_unreadable_jobs_and_takes_the_next(db: Database) -> None:
    owner, ident = await _setup(db)
    other, other_ident = await _setup(db, "2")
    bad = [await _insert_raw(db, owner, kind, params) for kind, params in UNREADABLE_ROWS]
    good = [
        (await jobs.enqueue(db, user, ImagineParams(identity_id=face, prompt="ok"))).job_id
        for user, face in ((owner, ident), (other, other_ident))
    ]
    first = await jobs.claim(db, "w")  # fails bad[0]; then it is the other user's turn
    assert first is not None and first.id == good[1] and first.params is not None
    assert (await jobs.get_job(db, bad[1])).state is JobState.QUEUED
    second = await jobs.claim(db, "w")  # fails the rest of the owner's bad rows on the way
    assert second is not None and second.id == good[0]
    assert await jobs.claim(db, "w") is None
    for job_id in bad:
        failed = await jobs.get_job(db, job_id)
        assert (failed.state, failed.error_user, failed.attempts) == (
            JobState.FAILED,
            jobs.UNREADABLE,
            1,
        )
        assert failed.params is None and failed.lease_expires is None
        assert (failed.error_detail or "").startswith("unreadable job: ParamsError: ")
    delivered = await jobs.undelivered(db, platforms=["telegram"])
    assert [j.id for j in delivered] == bad  # their failure reaches the user


async def test_a_kind_from_a_newer_version_waits_for_a_worker_that_knows_it(db: Database) -> None:
    owner, ident = await _setup(db)
    alien = await _insert_raw(db, owner, "upscale", {"v": PARAMS_VERSION, "params": {}})
    good = await jobs.enqueue(db, owner, ImagineParams(identity_id=ident, prompt="ok"))
    job = await jobs.claim(db, "w")
    assert job is not None and job.id == good.job_id
    assert await jobs.claim(db, "w") is None
    async with db.session() as s:
        state = await s.scalar(select(JOBS.c.state).where(JOBS.c.id == alien))
    assert state == JobState.QUEUED.value
