"""What a result reply says besides the images: the worker's note; jobs that cannot be read."""

from __future__ import annotations

from bot_helpers import add_face, button, deliver, photo, say
from bot_worker_fixture import FixtureWorker
from sqlalchemy import update

from bot.core import actions
from bot.core.app import Core
from bot.core.messages import Attachment, Caller, ReplyKind
from bot.core.render import with_note
from storage import jobs
from storage.job_sql import JOBS
from storage.records import ResultData
from storage.schemas import JobState, Refusal, RefusalCode

TINY = "tiny preset: random test weights, the images are noise"


async def _claim(core: Core, caller: Caller, command: str, *uploads: Attachment) -> int:
    receipt = await say(core, caller, command, uploads)
    assert receipt.kind is ReplyKind.RECEIPT, receipt.text
    job = await jobs.claim(core.db, "engine")
    assert job is not None and job.id == receipt.job_id
    return job.id


def test_the_note_is_the_second_line_one_sentence() -> None:
    assert with_note("Job #1 done: 2 images.\n1. a\n2. b", "mean  likeness 0.52\n(2 of 2)") == (
        "Job #1 done: 2 images.\nMean likeness 0.52 (2 of 2).\n1. a\n2. b"
    )
    assert with_note("Job #1 done.", None) == with_note("Job #1 done.", "  ") == "Job #1 done."
    assert with_note("Job #1 done.", "Saved!") == "Job #1 done.\nSaved!"


async def test_a_done_job_shows_its_note_under_the_head_line(
    core: Core, worker: FixtureWorker, alice: Caller
) -> None:
    await add_face(core, worker, alice)
    job_id = await _claim(core, alice, "/imagine a cat --seed 3")
    result = [ResultData(0, b"png", seed=3, prompt="a cat")]
    assert await jobs.finish(core.db, job_id, "engine", result, note=TINY)
    [reply] = (await deliver(core)).for_job(job_id)
    assert reply.text.splitlines() == [
        f"Job #{job_id} done: “a cat” · seed 3",
        "Tiny preset: random test weights, the images are noise.",
    ]


async def test_a_failed_job_shows_its_note_after_the_message(
    core: Core, worker: FixtureWorker, alice: Caller
) -> None:
    await add_face(core, worker, alice)
    job_id = await _claim(core, alice, "/imagine a cat")
    note = "lower quality: Haar fallback detector"
    assert await jobs.fail(core.db, job_id, "engine", "No face found.", "x", note=note)
    [reply] = (await deliver(core)).for_job(job_id)
    assert (
        reply.text
        == f"Job #{job_id} failed: No face found.\nLower quality: Haar fallback detector."
    )


async def test_a_compare_note_gives_the_mean_with_its_count(
    core: Core, worker: FixtureWorker, alice: Caller
) -> None:
    await add_face(core, worker, alice)
    job_id = await _claim(core, alice, "/compare me\na chef\na pilot")
    out = [ResultData(i, b"png", seed=i, prompt=p, identity_score=0.5) for i, p in enumerate("ab")]
    note = f"mean likeness 0.50 (2 of 2 with a face); {TINY}"
    assert await jobs.finish(core.db, job_id, "engine", out, note=note)
    [reply] = (await deliver(core)).for_job(job_id)
    lines = reply.text.splitlines()
    assert lines[0] == f"Job #{job_id} done: the face across 2 prompts."  # no second mean
    assert lines[1] == f"Mean likeness 0.50 (2 of 2 with a face); {TINY}."
    assert lines[2].startswith("1. likeness 0.50")


async def test_a_job_that_cannot_be_read_is_failed_delivered_and_refused_by_buttons(
    core: Core, worker: FixtureWorker, alice: Caller
) -> None:
    await add_face(core, worker, alice)
    await deliver(core)
    unreadable = (await say(core, alice, "/imagine a cat")).job_id
    later = (await say(core, alice, "/imagine a dog")).job_id
    async with core.db.transaction() as s:  # as if written by another version of the bot
        garbled = {"v": 99, "params": {"kind": "imagine", "prompt": "a cat"}}
        await s.execute(update(JOBS).where(JOBS.c.id == unreadable).values(params=garbled))
    assert await worker.drain() == [later]  # the queue moved on
    replies = (await deliver(core)).replies
    failed = [r for _, r in replies if r.job_id == unreadable]
    assert [r.text for r in failed] == [
        f"Job #{unreadable} failed: This request could not be read; please send it again."
    ]
    [done] = [r for _, r in replies if r.job_id == later]
    assert (await jobs.get_job(core.db, later or 0)).state is JobState.DONE
    async with core.db.transaction() as s:  # the finished job's parameters become unreadable
        await s.execute(update(JOBS).where(JOBS.c.id == later).values(params={"v": 99}))
    refused = await core.press(alice, button(done, "Re-roll"))
    assert refused.kind is ReplyKind.ERROR
    assert refused.text == "This request could not be read; please send it again."


async def test_face_buttons_come_from_the_stored_refusal_not_the_words(
    core: Core, worker: FixtureWorker, alice: Caller
) -> None:
    await add_face(core, worker, alice)
    worded = await _claim(core, alice, "/face add two", photo())
    words = "3 faces found; choose one with a face number."  # but no refusal stored with it
    assert await jobs.fail(core.db, worded, "engine", words, preview=b"progress")
    coded = await _claim(core, alice, "/face add three", photo())
    several = Refusal(code=RefusalCode.SEVERAL_FACES, faces=2)
    assert await jobs.fail(core.db, coded, "engine", "Zwei Gesichter.", refusal=several,
                           preview=b"numbered")  # fmt: skip
    inbox = await deliver(core)
    [plain] = inbox.for_job(worded)
    [offered] = inbox.for_job(coded)
    assert (plain.buttons, plain.files) == ((), ())
    assert [b.label for b in offered.buttons] == ["Face 1", "Face 2"]
    assert [(f.name, f.data) for f in offered.files] == [(f"job{coded}-faces.png", b"numbered")]
    chosen = await core.press(alice, button(offered, "Face 2"))
    assert chosen.kind is ReplyKind.RECEIPT, chosen.text
    assert (await core.press(alice, actions.face_choice(worded, 1))).text == (
        "That face choice is no longer open"
    )
