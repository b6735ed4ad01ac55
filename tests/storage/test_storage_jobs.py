"""The job queue on both dialects: each guarded transition, refusals, delivery, pruning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from storage_helpers import embedding_bytes, make_user, row_counts, snapshot

from storage import identities, jobs, results
from storage.db import Database
from storage.errors import InvalidState, LeaseLost, NameTaken, NotFound, QueueFull
from storage.records import ResultData
from storage.schemas import (
    BatchParams,
    Delivery,
    FaceMode,
    FaceParams,
    ImagineParams,
    JobKind,
    JobState,
    ResultKind,
)

DELIVERY = Delivery(platform="discord", channel_id="c1", message_ref="m1", extra={"guild": "g"})


async def _setup(db: Database, uid: str = "1") -> tuple[int, int]:
    user = await make_user(db, uid)
    ident = await identities.save_identity(db, user.id, "me", embedding_bytes())
    return user.id, ident.id


def _imagine(identity_id: int, prompt: str = "a portrait") -> ImagineParams:
    return ImagineParams(identity_id=identity_id, prompt=prompt)


async def test_life_of_a_job(db: Database) -> None:
    owner, ident = await _setup(db)
    receipt = await jobs.enqueue(db, owner, _imagine(ident), delivery=DELIVERY)
    assert receipt.position == 1
    queued = await jobs.get_job(db, receipt.job_id, owner_id=owner)
    assert queued.state is JobState.QUEUED and queued.delivery == DELIVERY
    assert queued.created_at.tzinfo is UTC and queued.attempts == 0

    job = await jobs.claim(db, "w1", lease_seconds=30)
    assert job is not None and job.id == receipt.job_id and job.params == _imagine(ident)
    assert job.state is JobState.RUNNING and job.attempts == 1 and job.lease_owner == "w1"
    assert job.lease_expires is not None and job.started_at is not None
    assert await jobs.claim(db, "w2") is None
    assert await jobs.heartbeat(db, job.id, "w1") is False
    assert await jobs.progress(db, job.id, "w1", 7, 28, preview=b"preview") is False
    assert await results.get_preview(db, owner, job.id) == b"preview"
    mid = await jobs.get_job(db, job.id)
    assert (mid.progress_step, mid.progress_total) == (7, 28)

    out = [ResultData(0, b"png0", seed=2**32 - 1, prompt="a portrait", identity_score=0.71)]
    assert await jobs.finish(db, job.id, "w1", out)
    done = await jobs.get_job(db, job.id)
    assert done.state is JobState.DONE and done.finished_at is not None
    assert done.progress_step == 28 and not done.delivered
    stored = await results.list_results(db, owner, job.id)
    assert [(r.index, r.png, r.seed, r.identity_score) for r in stored] == [
        (0, b"png0", 2**32 - 1, 0.71)
    ]
    assert await results.get_preview(db, owner, job.id) is None  # previews replaced by results
    assert (await results.get_result(db, owner, job.id, 0)).prompt == "a portrait"


async def test_lost_lease_cannot_write(db: Database) -> None:
    owner, ident = await _setup(db)
    await jobs.enqueue(db, owner, _imagine(ident))
    job = await jobs.claim(db, "w1")
    assert job is not None
    before = await snapshot(db)
    with pytest.raises(LeaseLost):
        await jobs.heartbeat(db, job.id, "intruder")
    with pytest.raises(LeaseLost):
        await jobs.progress(db, job.id, "intruder", 1, 2)
    assert not await jobs.finish(db, job.id, "intruder", [ResultData(0, b"x")])
    assert not await jobs.fail(db, job.id, "intruder", "nope")
    assert not await jobs.mark_cancelled(db, job.id, "intruder")
    assert await snapshot(db) == before
    assert await jobs.finish(db, job.id, "w1", [ResultData(0, b"x")])
    assert not await jobs.finish(db, job.id, "w1", [ResultData(0, b"y")])  # no second write
    assert [r.png for r in await results.list_results(db, owner, job.id)] == [b"x"]


async def test_face_job_carries_input_and_drops_it_when_done(db: Database) -> None:
    owner, _ = await _setup(db)
    params = FaceParams(name="new", make_default=True)
    receipt = await jobs.enqueue(db, owner, params, input_blob=b"\x89PNG...")
    job = await jobs.claim(db, "w", kinds=[JobKind.FACE])
    assert job is not None and job.input_blob == b"\x89PNG..." and job.params == params
    assert (await jobs.get_job(db, receipt.job_id, with_input=True)).input_blob == b"\x89PNG..."
    await jobs.finish(db, job.id, "w", [])
    assert (await jobs.get_job(db, job.id, with_input=True)).input_blob is None


async def test_claim_filters_kinds(db: Database) -> None:
    owner, ident = await _setup(db)
    await jobs.enqueue(db, owner, _imagine(ident))
    assert await jobs.claim(db, "w", kinds=[JobKind.FACE]) is None
    assert (await jobs.claim(db, "w", kinds=[JobKind.IMAGINE])) is not None


async def test_fail_and_retry(db: Database) -> None:
    owner, ident = await _setup(db)
    receipt = await jobs.enqueue(db, owner, _imagine(ident), max_attempts=2)
    job = await jobs.claim(db, "w")
    assert job is not None
    assert await jobs.fail(db, job.id, "w", "Out of memory.", "CUDA OOM", retry=True)
    assert (await jobs.get_job(db, job.id)).state is JobState.QUEUED
    job = await jobs.claim(db, "w")
    assert job is not None and job.attempts == 2
    assert await jobs.fail(
        db, job.id, "w", "Out of GPU memory; try a smaller size.", "OOM", retry=True
    )
    failed = await jobs.get_job(db, receipt.job_id)
    assert failed.state is JobState.FAILED
    assert failed.error_user == "Out of GPU memory; try a smaller size."
    assert failed.error_detail == "OOM"


async def test_cancel_queued_and_running(db: Database) -> None:
    owner, ident = await _setup(db)
    first = await jobs.enqueue(db, owner, _imagine(ident))
    second = await jobs.enqueue(db, owner, _imagine(ident))
    running = await jobs.claim(db, "w")
    assert running is not None and running.id == first.job_id
    assert await jobs.cancel(db, owner, second.job_id) is JobState.CANCELLED
    assert (await jobs.get_job(db, second.job_id)).state is JobState.CANCELLED
    assert await jobs.cancel(db, owner, first.job_id) is JobState.RUNNING
    assert await jobs.heartbeat(db, first.job_id, "w") is True
    assert await jobs.progress(db, first.job_id, "w", 2, 4) is True
    assert await jobs.mark_cancelled(db, first.job_id, "w")
    assert (await jobs.get_job(db, first.job_id)).state is JobState.CANCELLED
    assert await jobs.claim(db, "w") is None
    with pytest.raises(InvalidState, match="already finished"):
        await jobs.cancel(db, owner, first.job_id)


async def test_cancel_foreign_or_unknown_job(db: Database) -> None:
    owner, ident = await _setup(db)
    stranger, _ = await _setup(db, "2")
    receipt = await jobs.enqueue(db, owner, _imagine(ident))
    before = await snapshot(db)
    for job_id in (receipt.job_id, 999):
        with pytest.raises(NotFound, match=f"You have no job {job_id}."):
            await jobs.cancel(db, stranger, job_id)
        with pytest.raises(NotFound):
            await jobs.get_job(db, job_id, owner_id=stranger)
        with pytest.raises(NotFound):
            await results.list_results(db, stranger, job_id)
    assert await snapshot(db) == before


async def test_queue_cap(db: Database) -> None:
    owner, ident = await _setup(db)
    for _ in range(2):
        await jobs.enqueue(db, owner, _imagine(ident), max_active=2)
    before = await snapshot(db)
    with pytest.raises(QueueFull, match="already have 2 jobs"):
        await jobs.enqueue(db, owner, _imagine(ident), max_active=2)
    assert await snapshot(db) == before
    job = await jobs.claim(db, "w")
    assert job is not None
    with pytest.raises(QueueFull):  # running jobs count too
        await jobs.enqueue(db, owner, _imagine(ident), max_active=2)
    await jobs.finish(db, job.id, "w", [])
    await jobs.enqueue(db, owner, _imagine(ident), max_active=2)
    assert await jobs.count_active(db, owner) == 2


async def test_enqueue_refuses_bad_references(db: Database) -> None:
    owner, ident = await _setup(db)
    stranger, theirs = await _setup(db, "2")
    before = await snapshot(db)
    cases = [
        (owner, _imagine(theirs), NotFound, "That face does not exist."),
        (owner, _imagine(10_000), NotFound, "That face does not exist."),
        (owner, BatchParams(identity_id=theirs, prompts=["a"]), NotFound, "does not exist"),
        (owner, FaceParams(name="ME"), NameTaken, "already have a face named 'ME'"),
        (owner, FaceParams(name="nope", mode=FaceMode.MORE), NotFound, "no face named 'nope'"),
        (999, _imagine(ident), NotFound, "Unknown user."),
    ]
    for user_id, params, error, message in cases:
        with pytest.raises(error, match=message):
            await jobs.enqueue(db, user_id, params, input_blob=b"img")
    with pytest.raises(ValueError, match="input_blob"):
        await jobs.enqueue(db, owner, FaceParams(name="x"))
    assert await snapshot(db) == before


async def test_enqueue_revalidates_unvalidated_params(db: Database) -> None:
    owner, ident = await _setup(db)
    bad = ImagineParams.model_construct(identity_id=ident, prompt="", settings=_imagine(1).settings)
    with pytest.raises(ValueError, match="invalid job parameters"):
        await jobs.enqueue(db, owner, bad)
    assert (await row_counts(db))["jobs"] == 0


async def test_requeue_expired_counts_attempts_then_fails(db: Database) -> None:
    owner, ident = await _setup(db)
    receipt = await jobs.enqueue(db, owner, _imagine(ident), max_attempts=2)
    now = datetime.now(UTC)
    later = now + timedelta(minutes=5)

    first = await jobs.claim(db, "w1", lease_seconds=60, now=now)
    assert first is not None and first.attempts == 1
    assert (await jobs.requeue_expired(db, now=now)).requeued == []  # lease still valid
    report = await jobs.requeue_expired(db, now=later)
    assert report.requeued == [receipt.job_id] and report.failed == []
    with pytest.raises(LeaseLost):
        await jobs.heartbeat(db, first.id, "w1")
    assert not await jobs.finish(db, first.id, "w1", [ResultData(0, b"late")])

    second = await jobs.claim(db, "w2", lease_seconds=60, now=later, reap=False)
    assert second is not None and second.id == receipt.job_id and second.attempts == 2
    report = await jobs.requeue_expired(db, now=later + timedelta(minutes=5))
    assert report.failed == [receipt.job_id]
    failed = await jobs.get_job(db, receipt.job_id)
    assert failed.state is JobState.FAILED
    assert failed.error_user == "The job failed: its worker stopped responding (tried 2 times)."
    assert await results.list_results(db, owner, receipt.job_id) == []


async def test_claim_reaps_expired_and_cancel_wins(db: Database) -> None:
    owner, ident = await _setup(db)
    receipt = await jobs.enqueue(db, owner, _imagine(ident))
    now = datetime.now(UTC)
    job = await jobs.claim(db, "w1", lease_seconds=1, now=now)
    assert job is not None
    await jobs.cancel(db, owner, job.id)
    assert await jobs.claim(db, "w2", now=now + timedelta(seconds=5)) is None
    assert (await jobs.get_job(db, receipt.job_id)).state is JobState.CANCELLED


async def test_delivery_queue(db: Database) -> None:
    owner, ident = await _setup(db)
    a = await jobs.enqueue(db, owner, _imagine(ident), delivery=DELIVERY)
    tg = Delivery(platform="telegram", channel_id="5")
    b = await jobs.enqueue(db, owner, _imagine(ident), delivery=tg)
    await jobs.enqueue(db, owner, _imagine(ident))  # no delivery target
    assert await jobs.undelivered(db) == []
    for _ in range(3):
        job = await jobs.claim(db, "w")
        assert job is not None
        await jobs.fail(db, job.id, "w", "boom") if job.id == b.job_id else await jobs.finish(
            db, job.id, "w", [ResultData(0, b"x")]
        )
    assert [j.id for j in await jobs.undelivered(db)] == [a.job_id, b.job_id]
    assert [j.id for j in await jobs.undelivered(db, platforms=["telegram"])] == [b.job_id]
    assert await jobs.mark_delivered(db, a.job_id) is True
    assert await jobs.mark_delivered(db, a.job_id) is False  # idempotent
    assert await jobs.mark_delivered(db, 999) is False
    assert [j.id for j in await jobs.undelivered(db)] == [b.job_id]


async def test_mark_delivered_needs_a_finished_job(db: Database) -> None:
    owner, ident = await _setup(db)
    receipt = await jobs.enqueue(db, owner, _imagine(ident), delivery=DELIVERY)
    assert await jobs.mark_delivered(db, receipt.job_id) is False
    assert not (await jobs.get_job(db, receipt.job_id)).delivered


async def test_positions_and_listing(db: Database) -> None:
    a, ident_a = await _setup(db, "a")
    b, ident_b = await _setup(db, "b")
    ra = [await jobs.enqueue(db, a, _imagine(ident_a)) for _ in range(3)]
    rb = await jobs.enqueue(db, b, _imagine(ident_b))
    assert [r.position for r in ra] == [1, 2, 3]
    assert rb.position == 2  # b's first job is served right after a's first
    assert [await jobs.queue_position(db, r.job_id) for r in ra] == [1, 3, 4]
    job = await jobs.claim(db, "w")
    assert job is not None and await jobs.queue_position(db, job.id) is None
    listed = await jobs.list_jobs(db, owner_id=a, states=[JobState.QUEUED])
    assert [j.id for j in listed] == [ra[2].job_id, ra[1].job_id]
    assert len(await jobs.list_jobs(db, platform="discord")) == 0
    since = await jobs.list_jobs(db, updated_after=job.updated_at - timedelta(microseconds=1))
    assert [j.id for j in since] == [job.id]


async def test_prune_old_finished_jobs(db: Database) -> None:
    owner, ident = await _setup(db)
    for _ in range(2):
        await jobs.enqueue(db, owner, _imagine(ident))
    job = await jobs.claim(db, "w")
    assert job is not None
    await jobs.finish(
        db, job.id, "w", [ResultData(0, b"a"), ResultData(1, b"g", kind=ResultKind.GRID)]
    )
    assert (await jobs.prune(db, older_than_days=7)).jobs == 0
    report = await jobs.prune(db, older_than_days=7, now=datetime.now(UTC) + timedelta(days=8))
    assert (report.jobs, report.results) == (1, 2)
    counts = await row_counts(db)
    assert counts["jobs"] == 1 and counts["results"] == 0  # the queued job stays


async def test_results_validation(db: Database) -> None:
    owner, ident = await _setup(db)
    await jobs.enqueue(db, owner, _imagine(ident))
    job = await jobs.claim(db, "w")
    assert job is not None
    with pytest.raises(ValueError, match="unique"):
        await jobs.finish(db, job.id, "w", [ResultData(0, b"a"), ResultData(0, b"b")])
    with pytest.raises(ValueError, match="progress step"):
        await jobs.progress(db, job.id, "w", 5, 4)
    assert (await jobs.get_job(db, job.id)).state is JobState.RUNNING
