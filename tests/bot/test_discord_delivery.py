"""Progress and result delivery: follow-ups while the interaction lives, channel or DM after.

Finished jobs are produced through storage's queue API — claim, progress, finish with
``ResultData`` — by this test playing the engine worker (``WORKER``), or by the fixture worker.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import logging
from functools import cache

import numpy as np
import pytest
from bot_worker_fixture import FixtureWorker, png
from PIL import Image, PngImagePlugin
from test_discord_fakeapi import (
    ALICE,
    CHANNEL_ID,
    CHANNEL_POST,
    FOLLOW_UP,
    ORIGINAL,
    dm_channel_of,
)
from test_discord_support import (
    Harness,
    command_data,
    form_data,
    interaction_payload,
    option,
    save_faces,
    stored_receipt,
)
from test_discord_support import h as h

from bot.core.app import Core
from bot.discord.delivery import DeliveryCog
from bot.discord.files import MAX_UPLOAD_BYTES
from storage import jobs
from storage.config import LimitSettings, Settings
from storage.records import JobRecord, ResultData

WORKER = "test-worker"  # this test, playing the engine worker through the storage API


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"limits": LimitSettings(max_batch_prompts=12)})


@pytest.fixture(autouse=True)
async def alice_has_a_face(h: Harness) -> None:
    """Every test here starts with Alice's saved face 'me'."""
    await save_faces(h.core, ALICE, "me")


async def imagine(h: Harness, prompt: str = "a chef", **payload: object) -> dict:
    """Send /imagine and wait for its receipt; returns the interaction payload."""
    data = command_data("imagine", [option("prompt", prompt)])
    sent = h.send(interaction_payload(2, data, **payload))  # type: ignore[arg-type]
    receipt = await h.callback(sent)
    assert "queued" in receipt.content, receipt.content
    return sent


async def delivered(h: Harness, job_id: int) -> bool:
    """Whether the job gets marked delivered within a few seconds."""
    for _ in range(100):
        if (await jobs.get_job(h.core.db, job_id)).delivered:
            return True
        await asyncio.sleep(0.05)
    return False


async def delivery_pass(h: Harness) -> int:
    """One pass of the bot's own delivery loop (progress, then results), awaited to its end."""
    cog = h.bot.get_cog("DeliveryCog")
    assert isinstance(cog, DeliveryCog)
    return await cog.deliverer.run_once()


async def claim(h: Harness) -> JobRecord:
    job = await jobs.claim(h.core.db, WORKER)
    assert job is not None
    return job


@cache
def big_png() -> bytes:
    """A 10.3 MiB PNG of noise (over Discord's 10 MiB), tagged as the engine tags outputs."""
    noise = np.random.default_rng(7).integers(0, 256, (1900, 1900, 3), dtype=np.uint8)
    info = PngImagePlugin.PngInfo()
    info.add_text("AI-generated", "true")
    info.add_text("prompt", "a chef")
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG", pnginfo=info, compress_level=1)
    assert len(buf.getvalue()) > MAX_UPLOAD_BYTES
    return buf.getvalue()


async def test_progress_edits_the_receipt_then_the_result_follows_up(h: Harness) -> None:
    sent = await imagine(h)
    job = await claim(h)
    await jobs.progress(h.core.db, job.id, WORKER, 3, 10)
    token = sent["token"]
    receipt = rf"/{token}/messages/@original$"
    [edit] = await h.fake.wait_for("PATCH", receipt, where=lambda c: "step 3/10" in c.content)
    assert edit.content.startswith(f"Job #{job.id} (imagine) running: step 3/10")
    assert edit.custom_ids == [f"pb:cx:{job.id}"]

    await jobs.finish(h.core.db, job.id, WORKER, [ResultData(0, png((1, 2, 3)), 11, "a chef")])
    [result] = await h.fake.wait_for("POST", rf"/webhooks/\d+/{token}$")
    assert result.content == f"Job #{job.id} done: “a chef” · seed 11"
    assert [name for name, _ in result.files] == [f"job{job.id}-1.png"]
    assert result.custom_ids == [
        f"pb:rr:{job.id}",
        f"pb:va:{job.id}:0",
        f"pb:us:{job.id}:0",
        f"pb:rm:{job.id}",
    ]
    [closed] = await h.fake.wait_for("PATCH", receipt, where=lambda c: "content" not in c.data)
    assert closed.data["components"] == []  # the receipt's Cancel button is gone
    assert await delivered(h, job.id)


async def test_after_the_token_expired_progress_and_results_use_the_channel(h: Harness) -> None:
    sent = await imagine(h)
    receipt = h.fake.originals[sent["token"]]
    h.now = discord_now() + dt.timedelta(minutes=16)  # the token has expired
    job = await claim(h)
    assert await stored_receipt(h.core, job.id) == f"{CHANNEL_ID}:{receipt}"
    await jobs.progress(h.core.db, job.id, WORKER, 5, 10)
    own = rf"/channels/{CHANNEL_ID}/messages/{receipt}$"
    [edit] = await h.fake.wait_for("PATCH", own, where=lambda c: "step 5/10" in c.content)
    assert edit.custom_ids == [f"pb:cx:{job.id}"]
    await jobs.finish(h.core.db, job.id, WORKER, [ResultData(0, png((1, 2, 3)), 11, "a chef")])
    [post] = await h.fake.wait_for("POST", rf"/channels/{CHANNEL_ID}/messages$")
    assert post.content.startswith(f"Job #{job.id} done") and len(post.files) == 1
    assert post.labels == ["Re-roll", "Vary", "Use seed", "Delete"]
    await h.fake.wait_for("PATCH", own, where=lambda c: c.data.get("components") == [])
    assert h.fake.find("PATCH", ORIGINAL) == [] and h.fake.find("POST", FOLLOW_UP) == []


async def test_after_a_restart_progress_edits_the_receipt_and_the_result_comes_once(
    h: Harness,
) -> None:
    sent = await imagine(h)
    receipt = h.fake.originals[sent["token"]]
    job = await claim(h)
    assert await stored_receipt(h.core, job.id) == f"{CHANNEL_ID}:{receipt}"
    await h.stop()
    h.core = await Core.open(h.settings)  # a new process: new core, new adapter, same database
    try:
        await h.start()
        await jobs.progress(h.core.db, job.id, WORKER, 3, 10)
        own = rf"/channels/{CHANNEL_ID}/messages/{receipt}$"
        [edit] = await h.fake.wait_for("PATCH", own, where=lambda c: "step 3/10" in c.content)
        assert edit.content.startswith(f"Job #{job.id} (imagine) running: step 3/10")
        image = [ResultData(0, png((1, 2, 3)), 11, "a chef")]
        await jobs.finish(h.core.db, job.id, WORKER, image)
        [post] = await h.fake.wait_for("POST", CHANNEL_POST)
        [closed] = await h.fake.wait_for("PATCH", own, where=lambda c: "content" not in c.data)
        assert await delivered(h, job.id)
        await h.restart()  # once more: nothing is sent twice
        assert await delivery_pass(h) == 0
    finally:
        await h.stop()
        await h.core.close()
    assert post.content.startswith(f"Job #{job.id} done") and closed.data["components"] == []
    assert len(h.fake.find("POST", CHANNEL_POST)) == 1 and h.fake.find("POST", FOLLOW_UP) == []
    assert h.fake.messages[receipt]["components"] == []


async def test_after_a_restart_results_resume_to_the_channel_re_encoded(h: Harness) -> None:
    await imagine(h)
    job = await claim(h)
    await h.stop()  # the bot is down while the worker finishes
    await jobs.finish(h.core.db, job.id, WORKER, [ResultData(0, big_png(), 11, "a chef")])
    await h.start()
    [post] = await h.fake.wait_for("POST", rf"/channels/{CHANNEL_ID}/messages$")
    [(name, data)] = post.files
    assert name == f"job{job.id}-1.jpg" and len(data) <= MAX_UPLOAD_BYTES
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (1900, 1900) and b"AI-generated" in img.info["comment"]
    assert await delivered(h, job.id)


async def test_a_refusing_channel_gets_the_result_by_dm(h: Harness, worker: FixtureWorker) -> None:
    await imagine(h)
    await h.restart()
    h.fake.forbidden_channels.add(CHANNEL_ID)
    await worker.drain()
    [opened] = await h.fake.wait_for("POST", r"/users/@me/channels$")
    assert int(opened.body["recipient_id"]) == ALICE
    [post] = await h.fake.wait_for("POST", rf"/channels/{dm_channel_of(ALICE)}/messages$")
    assert "done" in post.content and len(post.files) == 1


async def test_a_refused_channel_and_dm_make_the_job_undeliverable(
    h: Harness, worker: FixtureWorker
) -> None:
    await imagine(h)
    await h.restart()
    h.fake.forbidden_channels |= {CHANNEL_ID, dm_channel_of(ALICE)}
    [job_id] = await worker.drain()
    assert await delivered(h, job_id)  # given up at once, not retried with backoff
    assert await delivery_pass(h) == 0
    assert len(h.fake.find("POST", rf"/channels/{CHANNEL_ID}/messages$")) == 1
    assert len(h.fake.find("POST", rf"/channels/{dm_channel_of(ALICE)}/messages$")) == 1


async def test_a_dead_token_falls_back_to_the_channel(h: Harness, worker: FixtureWorker) -> None:
    sent = await imagine(h)
    h.fake.dead_tokens.add(sent["token"])
    await worker.drain()
    [post] = await h.fake.wait_for("POST", CHANNEL_POST)
    assert "done" in post.content
    assert len(h.fake.find("POST", rf"/webhooks/\d+/{sent['token']}$")) == 1  # the refused try


async def test_more_than_ten_images_are_split_over_messages(
    h: Harness, worker: FixtureWorker
) -> None:
    prompts = "\n".join(f"prompt {i}" for i in range(12))
    h.send(interaction_payload(2, command_data("batch", [option("face", "me")])))
    [opened] = await h.fake.wait_for("POST", r"/callback$")
    form = h.send(interaction_payload(5, form_data(opened.body["data"], {"Prompts": prompts})))
    await h.callback(form)
    await worker.drain()
    first, second = await h.fake.wait_for("POST", rf"/webhooks/\d+/{form['token']}$", 2)
    assert len(first.files) == 10 and len(second.files) == 2
    assert first.content.startswith("Job #") and "12 images" in first.content
    assert first.labels[0] == "Re-roll" and second.labels == []
    names = [n for n, _ in first.files + second.files]
    assert names == [f"job{names[0].split('-')[0][3:]}-{i}.png" for i in range(1, 13)]


async def test_files_follow_the_interactions_upload_limit(h: Harness) -> None:
    small_limit = 300 * 1024
    sent = await imagine(h, attachment_limit=small_limit)
    job = await claim(h)
    noise = np.random.default_rng(1).integers(0, 256, (180, 180, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")  # ~95 KiB each
    images = [ResultData(0, buf.getvalue(), 1, "a"), ResultData(1, buf.getvalue(), 2, "b")]
    images.append(ResultData(2, buf.getvalue(), 3, "c"))
    await jobs.finish(h.core.db, job.id, WORKER, images)
    calls = await h.fake.wait_for("POST", rf"/webhooks/\d+/{sent['token']}$", 2)
    assert [len(c.files) for c in calls] == [2, 1]
    assert all(sum(len(d) for _, d in c.files) < small_limit for c in calls)


async def test_a_deleted_receipt_gets_no_more_progress_edits(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.discord.delivery")
    sent = await imagine(h)
    del h.fake.messages[h.fake.originals[sent["token"]]]  # the user deleted the receipt
    job = await claim(h)
    edits = rf"/{sent['token']}/messages/@original$"
    await jobs.progress(h.core.db, job.id, WORKER, 3, 10)
    await h.fake.wait_for("PATCH", edits)  # "running", with or without the step yet
    for _ in range(100):  # until the bot has taken the refusal in
        if any("no more progress" in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the refused edit was not logged")
    await jobs.progress(h.core.db, job.id, WORKER, 5, 10)
    await delivery_pass(h)
    await delivery_pass(h)
    assert len(h.fake.find("PATCH", edits)) == 1  # refused once, then left alone
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    await jobs.finish(h.core.db, job.id, WORKER, [ResultData(0, png((1, 2, 3)), 11, "a chef")])
    [result] = await h.fake.wait_for("POST", rf"/webhooks/\d+/{sent['token']}$")
    assert result.content.startswith(f"Job #{job.id} done")


def discord_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
