"""Result delivery on Telegram: one photo, albums (split beyond 10), progress, resume, dead chats.

The engine worker is a separate process; here a test fixture plays it through storage's queue
API (claim → progress → finish), exactly as the worker writes to the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from bot_worker_fixture import FixtureWorker, png
from fake_telegram import Call, FakeTelegram
from test_telegram_harness import Updates, answering, running_bot
from test_telegram_harness import alice as alice
from test_telegram_harness import server as server

from bot.core.app import Core
from bot.telegram.replies import AI_MARK
from storage import jobs
from storage.config import Settings
from storage.records import ResultData
from storage.schemas import JobState


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Poll a condition that no recorded call signals (a database flag)."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


def labels(call: Call) -> list[str]:
    rows = call.params["reply_markup"]["inline_keyboard"]
    return [b["text"] for row in rows for b in row]


async def test_one_image_is_one_photo_with_its_buttons(
    settings: Settings, core: Core, worker: FixtureWorker, server: FakeTelegram, alice: Updates
) -> None:
    async with running_bot(settings, core, server):
        command = alice.message("/imagine a lighthouse --seed 5")
        receipt = await server.wait_for("sendMessage", answering(command))
        await worker.drain()
        photo = await server.wait_for("sendPhoto")
        closed = await server.wait_for("editMessageText", lambda c: "reply_markup" not in c.params)
    assert photo.params["reply_parameters"]["message_id"] == command["message_id"]
    assert photo.files["photo"].startswith(b"\x89PNG")
    assert photo.params["caption"].startswith("Job #") and "seed 5" in photo.params["caption"]
    assert photo.params["caption"].endswith(f"\n{AI_MARK}")  # the photo loses its PNG tag
    assert labels(photo) == ["Re-roll", "Vary", "Use seed", "Delete"]
    assert all(len(d.encode()) <= 64 for d in photo.markup_data())
    assert closed.params["message_id"] == receipt.result["message_id"]
    assert "done" in closed.params["text"]
    assert server.calls_to("sendMediaGroup") == []


async def test_a_batch_is_an_album_then_a_keyboard_message(
    settings: Settings, core: Core, worker: FixtureWorker, server: FakeTelegram, alice: Updates
) -> None:
    async with running_bot(settings, core, server):
        command = alice.message("/batch me\na knight\na pirate\na chef")
        await server.wait_for("sendMessage", answering(command))
        await worker.drain()
        album = await server.wait_for("sendMediaGroup")
        keyboard = await server.wait_for("sendMessage", lambda c: "reply_markup" in c.params
                                         and "done" in c.params["text"])  # fmt: skip
    assert [m["type"] for m in album.params["media"]] == ["photo"] * 3
    assert [m["caption"] for m in album.params["media"]] == [
        f"{prompt}\n{AI_MARK}" for prompt in ("a knight", "a pirate", "a chef")
    ]
    assert len(album.files) == 3
    assert album.params["reply_parameters"]["message_id"] == command["message_id"]
    first = album.result[0]["message_id"]
    assert keyboard.params["reply_parameters"]["message_id"] == first
    assert labels(keyboard) == ["Re-roll", "Vary 1", "Vary 2", "Vary 3", "Delete"]
    delete = keyboard.button("Delete")
    assert delete.startswith("rm:") and "|" in delete and len(delete.encode()) <= 64


async def test_more_than_ten_images_are_split_into_even_albums(
    settings: Settings, core: Core, worker: FixtureWorker, server: FakeTelegram, alice: Updates
) -> None:
    limits = settings.limits.model_copy(update={"max_batch_prompts": 12})
    many = settings.model_copy(update={"limits": limits})
    big_core = await Core.open(many)
    prompts = "\n".join(f"prompt number {i}" for i in range(1, 13))
    async with running_bot(many, big_core, server):
        alice.message(f"/batch me\n{prompts}")
        await server.wait_for("sendMessage", lambda c: "queued" in c.params["text"])
        await worker.drain()
        await server.wait_for("sendMediaGroup", count=2)
        keyboard = await server.wait_for("sendMessage", lambda c: "12 images" in c.params["text"])
    await big_core.close()
    assert [len(c.params["media"]) for c in server.calls_to("sendMediaGroup")] == [6, 6]
    assert labels(keyboard)[-1] == "Delete" and "Vary 10" in labels(keyboard)


async def test_compare_answers_with_one_scored_grid(
    settings: Settings, core: Core, worker: FixtureWorker, server: FakeTelegram, alice: Updates
) -> None:
    async with running_bot(settings, core, server):
        command = alice.message("/compare me")
        await server.wait_for("sendMessage", answering(command))
        await worker.drain()
        grid = await server.wait_for("sendPhoto")
    assert "likeness" in grid.params["caption"] and "Mean likeness" in grid.params["caption"]
    assert grid.params["caption"].endswith(AI_MARK)
    assert labels(grid) == ["Re-roll", "Delete"]
    assert server.calls_to("sendMediaGroup") == []


async def test_progress_edits_the_receipt(
    settings: Settings, core: Core, server: FakeTelegram, alice: Updates
) -> None:
    async with running_bot(settings, core, server, progress_interval=0.05):
        command = alice.message("/imagine a storm at sea")
        receipt = await server.wait_for("sendMessage", answering(command))
        job = await jobs.claim(core.db, "fixture-worker")  # the worker's part, via storage
        assert job is not None
        await jobs.progress(core.db, job.id, "fixture-worker", 3, 10)
        edit = await server.wait_for("editMessageText", lambda c: "3/10" in c.params["text"])
        assert edit.params["message_id"] == receipt.result["message_id"]
        assert "step 3/10" in edit.params["text"] and edit.button("Cancel") == f"cx:{job.id}"
        await jobs.finish(core.db, job.id, "fixture-worker", [ResultData(0, png((1, 2, 3)), 9)])
        await server.wait_for("sendPhoto")
        await eventually(lambda: _delivered(core, job.id))


async def test_results_finished_while_the_bot_was_down_are_delivered_on_start(
    settings: Settings, core: Core, worker: FixtureWorker, server: FakeTelegram, alice: Updates
) -> None:
    async with running_bot(settings, core, server):
        command = alice.message("/imagine a quiet street")
        receipt = await server.wait_for("sendMessage", answering(command))
        [job_id] = [j.id for j in await jobs.list_jobs(core.db, states=[JobState.QUEUED])]
        await eventually(lambda: _receipt_stored(core, job_id))
    await worker.drain()  # finished while no adapter runs
    async with running_bot(settings, core, server):
        photo = await server.wait_for("sendPhoto")
        closed = await server.wait_for("editMessageText")
    assert photo.params["reply_parameters"]["message_id"] == command["message_id"]
    assert closed.params["message_id"] == receipt.result["message_id"]  # stored with the job
    assert "done" in closed.params["text"] and "reply_markup" not in closed.params


async def test_after_a_restart_progress_still_edits_the_receipt(
    settings: Settings, core: Core, server: FakeTelegram, alice: Updates
) -> None:
    async with running_bot(settings, core, server):
        command = alice.message("/imagine a storm at sea")
        receipt = await server.wait_for("sendMessage", answering(command))
        job = await jobs.claim(core.db, "fixture-worker")
        assert job is not None
        await eventually(lambda: _receipt_stored(core, job.id))
    restarted = await Core.open(settings)  # a new process: new core and adapter, same database
    try:
        async with running_bot(settings, restarted, server, progress_interval=0.05):
            await jobs.progress(core.db, job.id, "fixture-worker", 4, 10)
            edit = await server.wait_for("editMessageText", lambda c: "4/10" in c.params["text"])
            image = [ResultData(0, png((1, 2, 3)), 9)]
            await jobs.finish(core.db, job.id, "fixture-worker", image)
            await server.wait_for("sendPhoto")
            await eventually(lambda: _delivered(core, job.id))
        async with running_bot(settings, restarted, server) as again:  # once more: nothing twice
            assert await again.deliverer.run_once() == 0
    finally:
        await restarted.close()
    assert edit.params["message_id"] == receipt.result["message_id"]
    assert edit.button("Cancel") == f"cx:{job.id}"
    assert len(server.calls_to("sendPhoto")) == 1
    closing = [c for c in server.calls_to("editMessageText") if "done" in c.params["text"]]
    assert [c.params["message_id"] for c in closing] == [receipt.result["message_id"]]


@pytest.mark.parametrize(
    ("status", "error"),
    [(403, "Forbidden: bot was blocked by the user"), (400, "Bad Request: chat not found")],
)
async def test_a_chat_that_blocked_the_bot_is_not_retried(
    settings: Settings,
    core: Core,
    worker: FixtureWorker,
    server: FakeTelegram,
    alice: Updates,
    status: int,
    error: str,
) -> None:
    async with running_bot(settings, core, server) as bot:
        command = alice.message("/imagine a red door")
        await server.wait_for("sendMessage", answering(command))
        server.fail_next("sendPhoto", status, error)
        [job_id] = await worker.drain()
        await eventually(lambda: _delivered(core, job_id))
        assert await bot.deliverer.run_once() == 0  # a whole pass more: not tried again
    assert [c.error for c in server.calls_to("sendPhoto")] == [error]


def closes(receipt: Call) -> Callable[[Call], bool]:
    """Matches the edit that closes ``receipt``: its status line, no keyboard."""
    message_id = receipt.result["message_id"]
    return lambda c: c.params["message_id"] == message_id and "reply_markup" not in c.params


async def test_a_result_delivered_while_its_receipt_is_stored_still_closes_it(
    settings: Settings,
    core: Core,
    worker: FixtureWorker,
    server: FakeTelegram,
    alice: Updates,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storing, stored = asyncio.Event(), asyncio.Event()
    remember = core.remember_receipt

    async def slow_store(job_id: int, message_ref: str | None = None, **kw: object) -> bool:
        storing.set()
        await stored.wait()  # the database is slow: the result goes out meanwhile
        return await remember(job_id, message_ref, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(core, "remember_receipt", slow_store)
    async with running_bot(settings, core, server):
        receipt = await server.wait_for("sendMessage", answering(alice.message("/imagine a fox")))
        await storing.wait()
        [job_id] = await worker.drain()
        await server.wait_for("sendPhoto")
        await eventually(lambda: _delivered(core, job_id))
        stored.set()
        closed = await server.wait_for("editMessageText", closes(receipt), timeout=3)
    assert closed.params["text"].startswith(f"Job #{job_id} done")


async def test_a_result_delivered_before_its_receipt_was_sent_closes_it_when_sent(
    settings: Settings,
    core: Core,
    worker: FixtureWorker,
    server: FakeTelegram,
    alice: Updates,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    arrived, go = asyncio.Event(), asyncio.Event()
    send_message = server._m_sendMessage

    async def late_receipts(p: dict[str, Any], f: dict[str, bytes]) -> Any:
        if "queued" in p.get("text", ""):
            arrived.set()
            await go.wait()  # the receipt is held up on its way to the chat
        return await send_message(p, f)

    monkeypatch.setattr(server, "_m_sendMessage", late_receipts)
    async with running_bot(settings, core, server):
        command = alice.message("/imagine a heron")
        await arrived.wait()
        [job_id] = await worker.drain()
        await server.wait_for("sendPhoto")
        await eventually(lambda: _delivered(core, job_id))
        go.set()
        receipt = await server.wait_for("sendMessage", answering(command))
        closed = await server.wait_for("editMessageText", closes(receipt), timeout=3)
        await eventually(lambda: _receipt_stored(core, job_id))
    assert closed.params["text"].startswith(f"Job #{job_id} done")


async def _delivered(core: Core, job_id: int) -> bool:
    return (await jobs.get_job(core.db, job_id)).delivered


async def _receipt_stored(core: Core, job_id: int) -> bool:
    delivery = (await jobs.get_job(core.db, job_id)).delivery
    return delivery is not None and "receipt" in delivery.extra
