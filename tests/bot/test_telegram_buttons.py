"""Inline buttons on Telegram: delete (with its album), use seed, re-roll, face choice, consent.

Every press must be answered exactly once (the fake server refuses a second answer).
"""

from __future__ import annotations

import pytest
from bot_helpers import astronaut_png
from bot_worker_fixture import FixtureWorker
from fake_telegram import Call, FakeTelegram
from test_telegram_harness import (
    ALICE,
    CHAT,
    Updates,
    answering,
    consented,
    running_bot,
    user,
)
from test_telegram_harness import alice as alice
from test_telegram_harness import server as server

from bot.core.app import Core
from bot.telegram.replies import AI_MARK
from storage import jobs, users
from storage.config import Settings
from storage.errors import NotFound

BOB = user(77, "Bob")


def answered_once(server: FakeTelegram, queries: list[str]) -> None:
    calls = server.calls_to("answerCallbackQuery")
    assert sorted(c.params["callback_query_id"] for c in calls) == sorted(queries)
    assert all(c.error is None for c in calls)


async def delivered_photo(
    alice: Updates, worker: FixtureWorker, text: str = "/imagine a cat"
) -> tuple[Call, int]:
    """Alice's command, queued and run by the fixture worker: the photo sent and the job id."""
    command = alice.message(text)
    await alice.server.wait_for("sendMessage", answering(command))
    [job_id] = await worker.drain()
    return await alice.server.wait_for("sendPhoto"), job_id


async def test_delete_removes_the_album_and_its_keyboard(
    settings: Settings, core: Core, worker: FixtureWorker, server: FakeTelegram, alice: Updates
) -> None:
    async with running_bot(settings, core, server):
        alice.message("/batch me\na knight\na pirate")
        await server.wait_for("sendMessage", lambda c: "queued" in c.params["text"])
        [job_id] = await worker.drain()
        album = await server.wait_for("sendMediaGroup")
        keyboard = await server.wait_for("sendMessage", lambda c: "done" in c.params["text"])
        query = alice.press(keyboard.result, keyboard.button("Delete"))
        answer = await server.wait_for("answerCallbackQuery")
        deleted = await server.wait_for("deleteMessages")
    photos = [m["message_id"] for m in album.result]
    assert sorted(deleted.params["message_ids"]) == sorted([*photos, keyboard.result["message_id"]])
    assert not any(server.exists(ALICE["id"], m) for m in photos)
    assert f"Deleted job #{job_id}" in answer.params["text"]
    with pytest.raises(NotFound):
        await jobs.get_job(core.db, job_id)
    answered_once(server, [query])


async def test_a_press_telegram_no_longer_takes_an_answer_for_still_acts(
    settings: Settings, core: Core, worker: FixtureWorker, server: FakeTelegram, alice: Updates
) -> None:
    async with running_bot(settings, core, server):
        photo, job_id = await delivered_photo(alice, worker)
        server.fail_next("answerCallbackQuery", 400, "Bad Request: query is too old")
        alice.press(photo.result, photo.button("Delete"))
        deleted = await server.wait_for("deleteMessages")
    assert deleted.params["message_ids"] == [photo.result["message_id"]]
    with pytest.raises(NotFound):
        await jobs.get_job(core.db, job_id)


async def test_forged_message_ids_in_callback_data_are_ignored(
    settings: Settings, core: Core, worker: FixtureWorker, server: FakeTelegram, alice: Updates
) -> None:
    async with running_bot(settings, core, server):
        other = alice.message("/help")  # a message that must survive
        photo, job_id = await delivered_photo(alice, worker)
        forged = f"rm:{job_id}|{other['message_id']:x}|AAAAAAAA"
        query = alice.press(photo.result, forged)
        deleted = await server.wait_for("deleteMessages")
    assert deleted.params["message_ids"] == [photo.result["message_id"]]
    assert server.exists(ALICE["id"], other["message_id"])
    answered_once(server, [query])


async def test_use_seed_is_a_toast_and_reroll_a_new_receipt(
    settings: Settings, core: Core, worker: FixtureWorker, server: FakeTelegram, alice: Updates
) -> None:
    async with running_bot(settings, core, server):
        photo, _ = await delivered_photo(alice, worker, "/imagine a cat --seed 1234")
        seed_query = alice.press(photo.result, photo.button("Use seed"))
        toast = await server.wait_for("answerCallbackQuery")
        reroll_query = alice.press(photo.result, photo.button("Re-roll"))
        receipt = await server.wait_for("sendMessage", answering(photo.result))
    assert "Seed 1234 is now your default" in toast.params["text"]
    assert toast.params.get("show_alert") in (None, False)
    assert "queued" in receipt.params["text"]
    user_row = await users.find_user(core.db, "telegram", str(ALICE["id"]))
    assert user_row is not None and user_row.settings.get("seed") == 1234
    answered_once(server, [seed_query, reroll_query])


async def test_someone_elses_button_is_an_alert(
    settings: Settings, core: Core, worker: FixtureWorker, server: FakeTelegram, alice: Updates
) -> None:
    bob = Updates(server, BOB, CHAT)
    async with running_bot(settings, core, server):
        photo, job_id = await delivered_photo(alice, worker)
        query = bob.press(photo.result, photo.button("Delete"))
        alert = await server.wait_for("answerCallbackQuery")
    assert alert.params["show_alert"] is True and alert.params["text"]
    assert server.calls_to("deleteMessages") == []
    assert (await jobs.get_job(core.db, job_id)).id == job_id
    answered_once(server, [query])


async def test_face_choice_buttons_under_the_numbered_preview(
    settings: Settings, core: Core, server: FakeTelegram
) -> None:
    group_worker = FixtureWorker(core.db, faces_in_photo=3)
    alice = Updates(server, ALICE, CHAT)
    await consented(core, ALICE)
    async with running_bot(settings, core, server):
        alice.message(caption="/face add crew", document=astronaut_png())
        await server.wait_for("sendMessage", lambda c: "queued" in c.params["text"])
        await group_worker.drain()
        preview = await server.wait_for("sendPhoto")
        assert "3 faces found" in preview.params["caption"]
        assert AI_MARK not in preview.params["caption"]  # the user's own photo, numbered
        assert [b["text"] for b in preview.params["reply_markup"]["inline_keyboard"][0]] == [
            "Face 1", "Face 2", "Face 3",
        ]  # fmt: skip
        query = alice.press(preview.result, preview.button("Face 2"))
        await server.wait_for("answerCallbackQuery")
        dropped = await server.wait_for("editMessageReplyMarkup")
        receipt = await server.wait_for("sendMessage", answering(preview.result))
        await group_worker.drain()
        saved = await server.wait_for("sendPhoto", count=2)
    assert dropped.params["message_id"] == preview.result["message_id"]
    assert "reply_markup" not in server.message(ALICE["id"], preview.result["message_id"])
    assert "queued" in receipt.params["text"]
    assert "Saved face 'crew'" in saved.params["caption"]
    answered_once(server, [query])


async def test_declining_consent_edits_the_question(
    settings: Settings, core: Core, server: FakeTelegram
) -> None:
    alice = Updates(server, ALICE, CHAT)
    async with running_bot(settings, core, server):
        sent = alice.message(caption="/face add me", document=astronaut_png())
        ask = await server.wait_for("sendMessage", answering(sent))
        query = alice.press(ask.result, ask.button("Decline"))
        edit = await server.wait_for("editMessageText")
    assert edit.params["message_id"] == ask.result["message_id"]
    assert edit.params["text"].startswith("Declined") and "reply_markup" not in edit.params
    assert await jobs.list_jobs(core.db, limit=5) == []
    answered_once(server, [query])
