"""Owner edits of jobs on both dialects: delete, receipt references, kept uploads, held requests."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text
from storage_helpers import embedding_bytes, make_user, row_counts, snapshot

from storage import identities, jobs, results, users
from storage.db import Database, Limits
from storage.errors import Banned, InvalidState, NameTaken, NotFound, QueueFull
from storage.records import ResultData
from storage.schemas import (
    Delivery,
    FaceMode,
    FaceParams,
    ImagineParams,
    JobState,
    Refusal,
    RefusalCode,
    ResultKind,
)

DELIVERY = Delivery(platform="telegram", channel_id="-100", message_ref="7", extra={"a": "1"})
PHOTO = b"\x89PNG group photo"
SEVERAL = "3 faces found; choose one with a face number (1-3, left to right)."
NO_FACE = Refusal(code=RefusalCode.NO_FACE)


async def _owner_with_face(db: Database, uid: str = "1") -> tuple[int, int]:
    user = await make_user(db, uid)
    ident = await identities.save_identity(db, user.id, "me", embedding_bytes())
    return user.id, ident.id


async def _done_job(db: Database, owner: int, ident: int) -> int:
    queued = await jobs.enqueue(db, owner, ImagineParams(identity_id=ident, prompt="a cat"))
    job = await jobs.claim(db, "w")
    assert job is not None and job.id == queued.job_id
    await jobs.finish(db, job.id, "w", [ResultData(0, b"png0", 1), ResultData(1, b"png1", 2)])
    return job.id


async def _refused_face_job(db: Database, owner: int, *, several: bool = True) -> int:
    """A face job the worker refused: several faces (with a numbered preview), or no face."""
    queued = await jobs.enqueue(db, owner, FaceParams(name="group"), input_blob=PHOTO)
    job = await jobs.claim(db, "w")
    assert job is not None and job.id == queued.job_id
    refusal = Refusal(code=RefusalCode.SEVERAL_FACES, faces=3) if several else NO_FACE
    preview = b"numbered faces" if several else None
    message = SEVERAL if several else "No face found."
    assert await jobs.fail(db, job.id, "w", message, refusal=refusal, preview=preview)
    return job.id


# -- delete_job ---------------------------------------------------------------------------------


async def test_delete_job_removes_the_job_and_its_results(db: Database) -> None:
    owner, ident = await _owner_with_face(db)
    keep = await _done_job(db, owner, ident)
    gone = await _done_job(db, owner, ident)
    await jobs.delete_job(db, owner, gone)
    with pytest.raises(NotFound):
        await jobs.get_job(db, gone)
    with pytest.raises(NotFound):
        await results.list_results(db, owner, gone)
    assert len(await results.list_results(db, owner, keep)) == 2
    assert (await row_counts(db))["results"] == 2
    with pytest.raises(NotFound):
        await jobs.delete_job(db, owner, gone)  # twice: unknown now


async def test_delete_job_refuses_foreign_and_active_jobs(db: Database) -> None:
    owner, ident = await _owner_with_face(db)
    bob, _ = await _owner_with_face(db, "2")
    done = await _done_job(db, owner, ident)
    running = await jobs.enqueue(db, owner, ImagineParams(identity_id=ident, prompt="a dog"))
    queued = await jobs.enqueue(db, owner, ImagineParams(identity_id=ident, prompt="a fox"))
    claimed = await jobs.claim(db, "w")
    assert claimed is not None and claimed.id == running.job_id
    before = await snapshot(db)
    with pytest.raises(NotFound) as foreign:
        await jobs.delete_job(db, bob, done)
    assert foreign.value.user_message == f"You have no job {done}."
    with pytest.raises(InvalidState, match="still running; cancel it first"):
        await jobs.delete_job(db, owner, running.job_id)
    with pytest.raises(InvalidState, match="still queued; cancel it first"):
        await jobs.delete_job(db, owner, queued.job_id)
    assert await snapshot(db) == before


# -- set_delivery_ref ---------------------------------------------------------------------------


async def test_set_delivery_ref_merges_into_the_delivery(db: Database) -> None:
    owner, ident = await _owner_with_face(db)
    params = ImagineParams(identity_id=ident, prompt="a cat")
    job_id = (await jobs.enqueue(db, owner, params, delivery=DELIVERY)).job_id
    assert await jobs.set_delivery_ref(db, job_id, extra={"receipt": "-100:55"})
    after = (await jobs.get_job(db, job_id)).delivery
    assert after == DELIVERY.model_copy(update={"extra": {"a": "1", "receipt": "-100:55"}})
    assert await jobs.set_delivery_ref(db, job_id, message_ref="9", extra={"a": "2"})
    again = (await jobs.get_job(db, job_id)).delivery
    assert again is not None and again.message_ref == "9" and again.channel_id == "-100"
    assert again.extra == {"a": "2", "receipt": "-100:55"}


async def test_set_delivery_ref_without_a_target_or_job(db: Database) -> None:
    owner, ident = await _owner_with_face(db)
    bare = await jobs.enqueue(db, owner, ImagineParams(identity_id=ident, prompt="a cat"))
    assert not await jobs.set_delivery_ref(db, bare.job_id, message_ref="1")
    assert (await jobs.get_job(db, bare.job_id)).delivery is None
    assert not await jobs.set_delivery_ref(db, 999_999, extra={"receipt": "1:2"})
    with pytest.raises(ValueError):
        params = ImagineParams(identity_id=ident, prompt="a dog")
        job_id = (await jobs.enqueue(db, owner, params, delivery=DELIVERY)).job_id
        await jobs.set_delivery_ref(db, job_id, message_ref="x" * 300)


# -- uploads kept for a face choice ---------------------------------------------------------------


async def test_several_faces_keep_the_upload_until_the_choice_moves_it(db: Database) -> None:
    owner = (await make_user(db)).id
    refused = await _refused_face_job(db, owner)
    kept = await jobs.get_job(db, refused, with_input=True)
    assert kept.state is JobState.FAILED and kept.input_blob == PHOTO
    chosen = FaceParams(name="group", face_index=2)
    rerun = await jobs.enqueue(db, owner, chosen, delivery=DELIVERY, input_from=refused)
    assert (await jobs.get_job(db, rerun.job_id, with_input=True)).input_blob == PHOTO
    assert (await jobs.get_job(db, refused, with_input=True)).input_blob is None
    with pytest.raises(NotFound, match="no longer stored; send it again"):
        await jobs.enqueue(db, owner, chosen, input_from=refused)


async def test_the_refusal_and_its_preview_are_written_with_the_failure(db: Database) -> None:
    owner = (await make_user(db)).id
    refused = await jobs.get_job(db, await _refused_face_job(db, owner))
    assert refused.refusal == Refusal(code=RefusalCode.SEVERAL_FACES, faces=3)
    assert refused.refusal.face_choice == 3 and refused.error_user == SEVERAL
    [preview] = await results.list_results(db, owner, refused.id, kinds=[ResultKind.PREVIEW])
    assert (preview.kind, preview.png) == (ResultKind.PREVIEW, b"numbered faces")
    assert await results.list_results(db, owner, refused.id) == []  # no final image
    none = await jobs.get_job(db, await _refused_face_job(db, owner, several=False))
    assert none.refusal == NO_FACE and none.refusal.face_choice is None


async def test_other_failures_drop_the_upload(db: Database) -> None:
    owner = (await make_user(db)).id
    await _refused_face_job(db, owner)  # another job's refusal does not count
    refused = await _refused_face_job(db, owner, several=False)
    assert (await jobs.get_job(db, refused, with_input=True)).input_blob is None
    with pytest.raises(NotFound):
        await jobs.enqueue(db, owner, FaceParams(name="group"), input_from=refused)
    queued = await jobs.enqueue(db, owner, FaceParams(name="again"), input_blob=PHOTO)
    job = await jobs.claim(db, "w")
    assert job is not None and job.id == queued.job_id
    await jobs.progress(db, job.id, "w", 1, 2, preview=b"a progress preview")
    assert await jobs.fail(db, job.id, "w", "3 faces found, said in words only.")
    failed = await jobs.get_job(db, job.id, with_input=True)  # only the refusal keeps it
    assert failed.refusal is None and failed.input_blob is None


async def test_a_refusal_needs_its_count_and_a_lost_lease_writes_none(db: Database) -> None:
    with pytest.raises(ValueError, match="number of faces"):
        Refusal(code=RefusalCode.SEVERAL_FACES)
    owner = (await make_user(db)).id
    queued = await jobs.enqueue(db, owner, FaceParams(name="group"), input_blob=PHOTO)
    assert await jobs.claim(db, "w") is not None
    before = await snapshot(db)
    several = Refusal(code=RefusalCode.SEVERAL_FACES, faces=2)
    assert not await jobs.fail(db, queued.job_id, "intruder", SEVERAL, refusal=several,
                               preview=b"x")  # fmt: skip
    assert await snapshot(db) == before


async def test_a_refusal_code_of_a_newer_version_reads_as_none(db: Database) -> None:
    owner = (await make_user(db)).id
    refused = await _refused_face_job(db, owner, several=False)
    async with db.transaction() as s:
        await s.execute(text("UPDATE jobs SET refusal = 'from_the_future' WHERE id = :i"),
                        {"i": refused})  # fmt: skip
    job = await jobs.get_job(db, refused)
    assert job.refusal is None and job.state is JobState.FAILED


async def test_a_kept_upload_is_the_owners_only(db: Database) -> None:
    owner = (await make_user(db)).id
    bob = (await make_user(db, "2")).id
    refused = await _refused_face_job(db, owner)
    before = await snapshot(db)
    with pytest.raises(NotFound):
        await jobs.enqueue(db, bob, FaceParams(name="stolen"), input_from=refused)
    assert await snapshot(db) == before
    with pytest.raises(ValueError, match="not both"):
        await jobs.enqueue(db, owner, FaceParams(name="x"), input_blob=PHOTO, input_from=refused)


async def test_kept_uploads_go_with_retention_and_erasure(db: Database) -> None:
    owner = (await make_user(db)).id
    refused = await _refused_face_job(db, owner)
    later = (await jobs.get_job(db, refused)).finished_at
    assert later is not None
    await jobs.prune(db, older_than_days=1, now=later + timedelta(days=2))
    with pytest.raises(NotFound):
        await jobs.get_job(db, refused)
    await _refused_face_job(db, owner)
    await users.erase_user(db, owner)
    assert (await row_counts(db))["jobs"] == 0


# -- face requests held for consent ---------------------------------------------------------------


async def test_a_held_request_waits_unseen_then_queues_on_release(db: Database) -> None:
    owner = (await make_user(db)).id
    params = FaceParams(name="me", make_default=True)
    held_id = await jobs.hold(db, owner, params, delivery=DELIVERY, input_blob=PHOTO)
    held = await jobs.get_job(db, held_id, with_input=True)
    assert held.held and held.input_blob == PHOTO and held.delivered
    assert await jobs.claim(db, "w") is None
    assert await jobs.undelivered(db) == []
    assert await jobs.count_active(db, owner) == 0

    queued = await jobs.release_held(db, owner)
    assert queued is not None and queued.position == 1
    job = await jobs.get_job(db, queued.job_id, with_input=True)
    assert (job.state, job.params, job.input_blob) == (JobState.QUEUED, params, PHOTO)
    assert job.delivery == DELIVERY and not job.held
    with pytest.raises(NotFound):
        await jobs.get_job(db, held_id)
    assert await jobs.release_held(db, owner) is None
    assert (await users.get_user(db, owner)).jobs_total == 1


async def test_a_new_hold_replaces_the_old_and_drop_erases_it(db: Database) -> None:
    owner = (await make_user(db)).id
    first = await jobs.hold(db, owner, FaceParams(name="a"), input_blob=PHOTO)
    second = await jobs.hold(db, owner, FaceParams(name="b"), input_blob=b"other")
    with pytest.raises(NotFound):
        await jobs.get_job(db, first)
    assert (await jobs.get_job(db, second)).held
    assert await jobs.drop_held(db, owner) == 1
    assert await jobs.drop_held(db, owner) == 0
    assert await jobs.release_held(db, owner) is None
    assert (await row_counts(db))["jobs"] == 0


async def test_hold_and_release_check_like_enqueue(db: Database) -> None:
    owner, _ = await _owner_with_face(db)
    with pytest.raises(NameTaken):
        await jobs.hold(db, owner, FaceParams(name="ME"), input_blob=PHOTO)
    with pytest.raises(NotFound):
        await jobs.hold(db, owner, FaceParams(name="x", mode=FaceMode.MORE), input_blob=PHOTO)
    with pytest.raises(ValueError):
        await jobs.hold(db, owner, FaceParams(name="x"), input_blob=b"")
    await jobs.hold(db, owner, FaceParams(name="two"), input_blob=PHOTO)
    with pytest.raises(QueueFull):
        await jobs.release_held(db, owner, max_active=0)
    await users.ban_user(db, owner)
    with pytest.raises(Banned):
        await jobs.release_held(db, owner)
    await users.unban_user(db, owner)
    assert (await jobs.release_held(db, owner)) is not None


async def test_held_requests_go_with_retention_and_erasure(db: Database) -> None:
    owner = (await make_user(db)).id
    held_id = await jobs.hold(db, owner, FaceParams(name="a"), input_blob=PHOTO)
    created = (await jobs.get_job(db, held_id)).created_at
    await jobs.prune(db, older_than_days=1, now=created + timedelta(days=2))
    assert await jobs.release_held(db, owner) is None
    await jobs.hold(db, owner, FaceParams(name="a"), input_blob=PHOTO)
    await users.erase_user(db, owner)
    assert (await row_counts(db))["jobs"] == 0


async def test_hosts_that_keep_inputs_keep_them_after_the_choice(db: Database) -> None:
    keeping = Database(db.engine, limits=Limits(keep_inputs=True))
    owner = (await make_user(keeping)).id
    refused = await _refused_face_job(keeping, owner)
    chosen = FaceParams(name="group", face_index=1)
    await jobs.enqueue(keeping, owner, chosen, input_from=refused)
    assert (await jobs.get_job(keeping, refused, with_input=True)).input_blob == PHOTO
