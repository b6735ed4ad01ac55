"""The engine worker end to end on the tiny preset: enqueue → burst worker → results in storage.

Every test runs on SQLite and on PostgreSQL (the ``db`` fixture). Workers run in burst mode in
this process, on one shared compute thread; faults are injected inside real sampling steps.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import insightface
import numpy as np
import pytest
import torch
from worker_helpers import (
    TransformerHook,
    astronaut_face_png,
    astronaut_identity,
    drain,
    job,
    make_user,
    make_worker,
    one_thread_engine,
    outputs,
    png_size,
    png_text,
    save_astronaut,
    small,
)

from engine import worker as worker_module
from engine.codec import AI_TAG_KEY, embedding_from_bytes
from engine.faces_choice import BadFaceIndexError, MultipleFacesError
from engine.identity import FingerprintMismatch
from engine.images import ImageError
from engine.jobs_errors import JobRefused, describe, refusal_of
from engine.jobs_exec import run_face
from engine.presets import TINY_NOTICE, out_of_memory_message
from storage import embeddings, identities, jobs, results
from storage.schemas import (
    BatchParams,
    CropBox,
    FaceMode,
    FaceParams,
    ImagineParams,
    JobKind,
    JobState,
    Refusal,
    RefusalCode,
    ResultKind,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def engine():
    yield from one_thread_engine()


def group_photo() -> bytes:
    """insightface's t1.jpg: several people."""
    return (Path(insightface.__file__).parent / "data" / "images" / "t1.jpg").read_bytes()


# --- face -------------------------------------------------------------------------------------


async def test_face_add_then_more_saves_a_fused_identity(db, engine) -> None:
    owner = await make_user(db)
    upload = astronaut_face_png()
    added = await jobs.enqueue(db, owner, FaceParams(name="astro"), input_blob=upload)
    worker = await make_worker(db, engine)
    await worker.run()
    box = CropBox(x=0, y=0, w=1, h=1, relative=True)
    more = FaceParams(name="astro", mode=FaceMode.MORE, crop=box)
    extra = await jobs.enqueue(db, owner, more, input_blob=upload)
    await worker.run()
    assert worker.endings == Counter(done=2)
    face = await identities.get_identity(db, owner, "astro")
    assert (face.fingerprint, face.n_refs, face.is_default) == (engine.fingerprint, 2, True)
    assert face.thumbnail and png_size(face.thumbnail) == (128, 128)
    fused = engine.identity_tokens(embedding_from_bytes(face.embedding, engine.fingerprint))
    assert fused.cond.shape[0] == 1 and torch.isfinite(fused.cond).all()
    for job_id in (added.job_id, extra.job_id):
        done = await job(db, job_id)
        assert (done.state, done.attempts, done.progress_step) == (JobState.DONE, 1, 2)
        [thumb] = await outputs(db, owner, job_id)
        meta = png_text(thumb.png)
        assert (meta["weights"], meta["face"], meta["kind"]) == (
            engine.fingerprint,
            "astro",
            "face thumbnail",
        )
        assert AI_TAG_KEY not in meta  # a crop of the user's own photo, not a generated image
        assert "Haar fallback" in meta["note"]  # the tiny preset's detector says it is weaker
        assert done.note == meta["note"]  # and the user reads the same note with the result


async def test_a_face_job_killed_mid_run_saves_the_face_once_on_the_rerun(db, engine) -> None:
    """A worker killed (SIGKILL) during a face job wrote nothing: the face is saved with the job's
    finish, in one transaction. The re-run saves it exactly once, and adds a photo once."""
    owner = await make_user(db)
    for params, refs in (
        (FaceParams(name="astro"), 1),
        (FaceParams(name="astro", mode=FaceMode.MORE), 2),
    ):
        queued = await jobs.enqueue(db, owner, params, input_blob=astronaut_face_png())
        dead = await jobs.claim(db, "killed-worker")  # what SIGKILL leaves: a lease nobody renews
        expired = dead.lease_expires + timedelta(seconds=1)
        assert (await jobs.requeue_expired(db, now=expired)).requeued == [queued.job_id]
        worker = await drain(db, engine)
        done = await job(db, queued.job_id)
        assert (done.state, done.attempts) == (JobState.DONE, 2), done.error_user
        assert worker.endings == Counter(done=1)
        assert (await identities.get_identity(db, owner, "astro")).n_refs == refs


async def test_a_face_job_that_loses_its_lease_before_the_finish_saves_no_face(
    db, engine, monkeypatch
) -> None:
    """The face is computed, then the job is taken over (its worker looked dead): the old
    worker's finish writes nothing, not even the face; the next attempt saves it once."""
    owner = await make_user(db)
    upload = astronaut_face_png()
    queued = await jobs.enqueue(db, owner, FaceParams(name="astro"), input_blob=upload)
    taken = []

    async def run_then_lose_the_lease(ctx):
        outcome = await run_face(ctx)
        later = ctx.job.lease_expires + timedelta(seconds=1)
        assert (await jobs.requeue_expired(db, now=later)).requeued == [ctx.job.id]
        taken.append(await jobs.claim(db, "thief", now=later, reap=False))
        return outcome

    monkeypatch.setitem(worker_module.RUNNERS, JobKind.FACE, run_then_lose_the_lease)
    worker = await drain(db, engine)
    assert worker.endings == Counter(abandoned=1)
    assert await identities.list_identities(db, owner) == []
    assert await outputs(db, owner, queued.job_id) == []
    monkeypatch.setitem(worker_module.RUNNERS, JobKind.FACE, run_face)
    expired = taken[0].lease_expires + timedelta(seconds=1)
    assert (await jobs.requeue_expired(db, now=expired)).requeued == [queued.job_id]
    await drain(db, engine)
    done = await job(db, queued.job_id)
    assert (done.state, done.attempts) == (JobState.DONE, 3)
    assert [f.n_refs for f in await identities.list_identities(db, owner)] == [1]


async def test_a_face_name_taken_while_queued_fails_the_job_and_writes_nothing(db, engine) -> None:
    owner = await make_user(db)
    queued = await jobs.enqueue(
        db, owner, FaceParams(name="astro"), input_blob=astronaut_face_png()
    )
    earlier = await save_astronaut(db, owner)  # another job saved the name meanwhile
    worker = await drain(db, engine)
    failed = await job(db, queued.job_id)
    assert (failed.state, failed.error_user) == (
        JobState.FAILED,
        "You already have a face named 'astro'.",
    )
    assert "NameTaken" in failed.error_detail and worker.endings == Counter(failed=1)
    assert await outputs(db, owner, queued.job_id) == []
    assert await identities.get_identity(db, owner, "astro") == earlier


@pytest.mark.parametrize(
    ("upload", "message", "code"),
    [
        (lambda: _gray_png(), "No face found", RefusalCode.NO_FACE),
        (group_photo, "faces found; choose one", RefusalCode.SEVERAL_FACES),
    ],
    ids=["no-face", "several-faces"],
)
async def test_face_refusal_fails_with_message_refusal_and_preview(
    db, engine, upload, message, code
) -> None:
    """A refused face job ends FAILED with its message, a machine-readable refusal and, for
    several faces, the numbered preview as its PREVIEW result and the upload kept."""
    owner = await make_user(db)
    queued = await jobs.enqueue(db, owner, FaceParams(name="me"), input_blob=upload())
    worker = await make_worker(db, engine)
    await worker.run()
    failed = await jobs.get_job(db, queued.job_id, with_input=True)
    assert failed.state is JobState.FAILED and message in failed.error_user
    assert "\n" not in failed.error_user
    assert failed.note == engine.analyzer.quality_note  # which detector looked at the photo
    assert failed.refusal is not None and failed.refusal.code is code
    previews = await results.list_results(db, owner, queued.job_id, kinds=[ResultKind.PREVIEW])
    if code is RefusalCode.SEVERAL_FACES:
        count = int(failed.error_user.split()[0])
        assert failed.refusal.face_choice == count >= 2 and failed.input_blob == upload()
        assert [png_size(p.png) for p in previews] == [(1024, 708)]
    else:
        assert failed.refusal.faces is None and failed.input_blob is None and previews == []
    assert await identities.list_identities(db, owner) == []
    assert worker.endings == Counter(failed=1)


def test_engine_errors_map_to_refusals() -> None:
    several = JobRefused("6 faces found.", preview=b"png")
    several.__cause__ = MultipleFacesError(6)
    assert describe(several).refusal == Refusal(code=RefusalCode.SEVERAL_FACES, faces=6)
    assert describe(several).preview == b"png"
    assert refusal_of(BadFaceIndexError()) == Refusal(code=RefusalCode.BAD_FACE_INDEX)
    assert refusal_of(ImageError("truncated")) == Refusal(code=RefusalCode.BAD_IMAGE)
    assert describe(FingerprintMismatch("made by other weights")).refusal == Refusal(
        code=RefusalCode.OTHER_WEIGHTS
    )
    assert refusal_of(RuntimeError("a bug")) is None and describe(KeyError("x")).refusal is None


def _gray_png() -> bytes:
    from engine.images import png_bytes

    return png_bytes(np.full((256, 256, 3), 128, np.uint8))


# --- imagine, batch -----------------------------------------------------------------------------


async def test_imagine_stores_one_tagged_png(db, engine) -> None:
    owner = await make_user(db)
    face = await save_astronaut(db, owner)
    params = ImagineParams(identity_id=face.id, prompt="a portrait in the rain", settings=small())
    queued = await jobs.enqueue(db, owner, params)
    await drain(db, engine)
    done = await job(db, queued.job_id)
    assert (done.state, done.progress_step, done.progress_total) == (JobState.DONE, 2, 2)
    [image] = await outputs(db, owner, queued.job_id)
    assert (image.index, image.seed, image.prompt, image.kind) == (
        0,
        7,
        params.prompt,
        ResultKind.IMAGE,
    )
    assert image.identity_score is None  # only compare jobs score their images
    assert png_size(image.png) == (256, 256)
    meta = png_text(image.png)
    assert (meta["prompt"], meta["seed"], meta[AI_TAG_KEY]) == (params.prompt, "7", "true")
    assert meta["weights"] == engine.fingerprint and meta["notice"] == TINY_NOTICE
    assert done.note == TINY_NOTICE  # told with the result too: the images are noise
    sampled = json.loads(meta["parameters"])
    assert (sampled["steps"], sampled["width"], sampled["seed"]) == (2, 256, 7)


async def test_batch_one_image_per_prompt_with_consecutive_seeds(db, engine) -> None:
    owner = await make_user(db)
    face = await save_astronaut(db, owner)
    prompts = ["on a beach", "in a forest", "on the moon"]
    params = BatchParams(identity_id=face.id, prompts=prompts, settings=small(steps=1, seed=11))
    queued = await jobs.enqueue(db, owner, params)
    await drain(db, engine)
    done = await job(db, queued.job_id)
    assert (done.state, done.progress_step, done.progress_total) == (JobState.DONE, 3, 3)
    images = await outputs(db, owner, queued.job_id)
    assert [(r.index, r.seed, r.prompt) for r in images] == [
        (0, 11, prompts[0]),
        (1, 12, prompts[1]),
        (2, 13, prompts[2]),
    ]
    assert [png_text(r.png)["seed"] for r in images] == ["11", "12", "13"]
    assert len({r.png for r in images}) == 3


async def test_unset_seed_is_drawn_once_per_job_and_recorded(db, engine) -> None:
    owner = await make_user(db)
    face = await save_astronaut(db, owner)
    params = ImagineParams(
        identity_id=face.id, prompt="a portrait", settings=small(steps=1, seed=None)
    )
    queued = await jobs.enqueue(db, owner, params)
    await drain(db, engine)
    [image] = await outputs(db, owner, queued.job_id)
    assert image.seed is not None and png_text(image.png)["seed"] == str(image.seed)


async def test_a_face_made_by_other_weights_is_refused(db, engine) -> None:
    owner = await make_user(db)
    data, _ = astronaut_identity()
    foreign = replace(embeddings.unpack(data), fingerprint="flux-dev:0123456789abcdef")
    face = await identities.save_identity(db, owner, "other", embeddings.pack(foreign))
    params = ImagineParams(identity_id=face.id, prompt="x", settings=small(steps=1))
    queued = await jobs.enqueue(db, owner, params)
    await drain(db, engine)
    failed = await job(db, queued.job_id)
    assert failed.state is JobState.FAILED and "other model weights" in failed.error_user
    assert failed.error_user[0].isupper() and failed.error_user.endswith(".")


async def test_a_face_deleted_after_enqueue_fails_cleanly(db, engine) -> None:
    owner = await make_user(db)
    face = await save_astronaut(db, owner)
    params = ImagineParams(identity_id=face.id, prompt="x", settings=small(steps=1))
    queued = await jobs.enqueue(db, owner, params)
    await identities.delete_identity(db, owner, face.name)
    await drain(db, engine)
    failed = await job(db, queued.job_id)
    assert (failed.state, failed.error_user) == (JobState.FAILED, "That face no longer exists.")


# --- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"
        ),
    ],
    ids=["cuda", "cpu"],
)
async def test_out_of_memory_in_a_step_fails_that_job_and_the_next_succeeds(
    db, engine, error
) -> None:
    owner = await make_user(db)
    face = await save_astronaut(db, owner)
    params = ImagineParams(identity_id=face.id, prompt="x", settings=small(steps=2))
    first = await jobs.enqueue(db, owner, params)
    second = await jobs.enqueue(db, owner, params)
    worker = await make_worker(db, engine)
    with TransformerHook(engine, at=2, error=error):  # test fixture: OOM inside step 2
        await worker.run()
    failed, done = await job(db, first.job_id), await job(db, second.job_id)
    assert failed.state is JobState.FAILED
    assert failed.error_user == out_of_memory_message(error, engine.memory)
    assert failed.error_user.startswith("The machine ran out of memory")  # a CPU engine
    assert type(error).__name__ in (failed.error_detail or "")
    assert done.state is JobState.DONE and len(await outputs(db, owner, second.job_id)) == 1
    assert worker.endings == Counter(failed=1, done=1)


async def test_an_unexpected_error_fails_only_its_job(db, engine) -> None:
    owner = await make_user(db)
    face = await save_astronaut(db, owner)
    params = ImagineParams(identity_id=face.id, prompt="x", settings=small(steps=1))
    first = await jobs.enqueue(db, owner, params)
    second = await jobs.enqueue(db, owner, params)
    worker = await make_worker(db, engine)
    with TransformerHook(engine, at=1, error=ZeroDivisionError("bug in a step")):
        await worker.run()
    failed = await job(db, first.job_id)
    assert failed.state is JobState.FAILED and "went wrong" in failed.error_user
    assert "ZeroDivisionError" in failed.error_detail
    assert (await job(db, second.job_id)).state is JobState.DONE


async def test_cancel_stops_the_job_at_its_next_step(db, engine) -> None:
    owner = await make_user(db)
    face = await save_astronaut(db, owner)
    params = ImagineParams(identity_id=face.id, prompt="x", settings=small(steps=8))
    queued = await jobs.enqueue(db, owner, params)
    loop = asyncio.get_running_loop()

    def click_cancel() -> None:  # runs on the compute thread, inside step 3
        asyncio.run_coroutine_threadsafe(jobs.cancel(db, owner, queued.job_id), loop).result()

    worker = await make_worker(db, engine, progress_interval=0.0)
    with TransformerHook(engine, at=3, action=click_cancel) as hook:
        await worker.run()
    cancelled = await job(db, queued.job_id)
    assert cancelled.state is JobState.CANCELLED and cancelled.progress_step == 3
    assert hook.calls == 3  # no step ran after the one that saw the request
    assert await outputs(db, owner, queued.job_id) == []
    assert worker.endings == Counter(cancelled=1)


async def test_stop_lets_the_current_job_finish_within_the_grace_period(db, engine) -> None:
    owner = await make_user(db)
    face = await save_astronaut(db, owner)
    params = ImagineParams(identity_id=face.id, prompt="x", settings=small(steps=3))
    first = await jobs.enqueue(db, owner, params)
    second = await jobs.enqueue(db, owner, params)
    worker = await make_worker(db, engine, grace_seconds=60.0)
    loop = asyncio.get_running_loop()
    with TransformerHook(
        engine, at=1, action=lambda: loop.call_soon_threadsafe(worker.request_stop)
    ):
        await worker.run()
    assert (await job(db, first.job_id)).state is JobState.DONE
    assert (await job(db, second.job_id)).state is JobState.QUEUED  # nothing claimed after stop


async def test_stop_after_the_grace_period_releases_the_job(db, engine) -> None:
    owner = await make_user(db)
    face = await save_astronaut(db, owner)
    params = ImagineParams(identity_id=face.id, prompt="x", settings=small(steps=6))
    queued = await jobs.enqueue(db, owner, params)
    worker = await make_worker(db, engine, grace_seconds=0.0)
    loop = asyncio.get_running_loop()
    with TransformerHook(
        engine, at=2, action=lambda: loop.call_soon_threadsafe(worker.request_stop)
    ):
        await worker.run()
    released = await job(db, queued.job_id)
    assert (released.state, released.attempts, released.lease_owner) == (JobState.QUEUED, 0, None)
    assert worker.endings == Counter(released=1)
    await drain(db, engine)  # another worker picks it up
    done = await job(db, queued.job_id)
    assert (done.state, done.attempts) == (JobState.DONE, 1)
    assert len(await outputs(db, owner, queued.job_id)) == 1


async def test_a_stop_on_the_last_attempt_releases_the_job_instead_of_failing_it(
    db, engine
) -> None:
    owner = await make_user(db)
    face = await save_astronaut(db, owner)
    params = ImagineParams(identity_id=face.id, prompt="x", settings=small(steps=4))
    queued = await jobs.enqueue(db, owner, params, max_attempts=1)
    worker = await make_worker(db, engine, grace_seconds=0.0)
    loop = asyncio.get_running_loop()
    with TransformerHook(
        engine, at=1, action=lambda: loop.call_soon_threadsafe(worker.request_stop)
    ):
        await worker.run()
    assert worker.endings == Counter(released=1)
    released = await job(db, queued.job_id)
    assert (released.state, released.attempts) == (JobState.QUEUED, 0)
    await drain(db, engine)
    assert (await job(db, queued.job_id)).state is JobState.DONE


async def test_burst_worker_exits_on_an_empty_queue(db, engine) -> None:
    worker = await make_worker(db, engine)
    await asyncio.wait_for(worker.run(), 10)
    assert worker.endings == Counter()


async def test_two_workers_drain_40_jobs_from_5_users_fairly_and_once(db, engine) -> None:
    owners = [await make_user(db, str(n)) for n in range(5)]
    faces = {o: await save_astronaut(db, o) for o in owners}
    ids = []
    for owner in owners:  # each user queues 8 jobs at once: a burst the others must not wait out
        for n in range(8):
            params = ImagineParams(
                identity_id=faces[owner].id, prompt=f"p{n}", settings=small(steps=1)
            )
            ids.append((await jobs.enqueue(db, owner, params, max_active=100)).job_id)
    a, b = await make_worker(db, engine), await make_worker(db, engine)
    await asyncio.gather(a.run(), b.run())
    done = [await job(db, i) for i in ids]
    assert all(j.state is JobState.DONE and j.attempts == 1 for j in done)
    assert a.endings["done"] + b.endings["done"] == 40 and a.endings["done"] and b.endings["done"]
    assert Counter(j.lease_owner for j in done) == {
        a.worker_id: a.endings["done"],
        b.worker_id: b.endings["done"],
    }
    for j in done:
        assert len(await outputs(db, j.owner_id, j.id)) == 1
    order = [j.owner_id for j in sorted(done, key=lambda j: (j.started_at, j.id))]
    for n in range(1, len(order) + 1):  # round robin: no user ever two turns ahead of another
        counts = Counter(order[:n])
        assert max(counts.values()) - min(counts.get(o, 0) for o in owners) <= 1, order[:n]
