"""Telegram uploads: photos, image files, replies to photos, refusals before any download."""

from __future__ import annotations

import asyncio
import re

import pytest
from bot_helpers import astronaut_png
from bot_worker_fixture import FixtureWorker
from fake_telegram import FakeTelegram
from test_telegram_harness import (
    ALICE,
    GROUP,
    Updates,
    answering,
    consented,
    private_chat,
    running_bot,
    saved_face,
)
from test_telegram_harness import alice as alice
from test_telegram_harness import server as server

from bot.core.app import Core
from bot.telegram.replies import AI_MARK
from bot.telegram.uploads import TIP
from storage import identities, jobs
from storage.config import Settings

MB = 1024 * 1024


async def test_photo_caption_asks_consent_then_saves_the_face(
    settings: Settings, core: Core, worker: FixtureWorker, server: FakeTelegram
) -> None:
    alice = Updates(server, ALICE, private_chat(ALICE))
    async with running_bot(settings, core, server):
        sent = alice.message(caption="/face add me", photo=astronaut_png())
        ask = await server.wait_for("sendMessage", answering(sent))
        largest = sent["photo"][-1]["file_id"]
        assert server.calls_to("getFile")[0].params["file_id"] == largest
        assert server.calls_to("download"), "the photo was downloaded"
        assert "Before saving a face" in ask.params["text"] and TIP in ask.params["text"]
        query = alice.press(ask.result, ask.button("Accept"))
        answered = await server.wait_for("answerCallbackQuery")
        receipt = await server.wait_for("editMessageText")
        assert answered.params["callback_query_id"] == query
        assert "queued" in receipt.params["text"] and receipt.button("Cancel").startswith("cx:")
        assert receipt.params["message_id"] == ask.result["message_id"]
        await _receipt_stored(core, _job_id(receipt.params["text"]))
        await worker.drain()
        result = await server.wait_for("sendPhoto")
        closed = await server.wait_for("editMessageText", lambda c: "reply_markup" not in c.params)
    assert "Saved face 'me'" in result.params["caption"]
    assert AI_MARK not in result.params["caption"]  # the thumbnail is a crop of the photo
    assert result.params["reply_parameters"]["message_id"] == sent["message_id"]
    assert closed.params["text"].startswith("Job #") and "Saved face" in closed.params["text"]
    assert [f.name for f in await identities.list_identities(core.db, 1)] == ["me"]


def _job_id(text: str) -> int:
    match = re.search(r"Job #(\d+)", text)
    assert match, text
    return int(match.group(1))


async def _receipt_stored(core: Core, job_id: int, timeout: float = 5.0) -> None:
    """Wait until the adapter has stored the receipt's message id with the job."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while "receipt" not in (await jobs.get_job(core.db, job_id)).delivery.extra:
        assert loop.time() < deadline, "the receipt was never stored with its job"
        await asyncio.sleep(0.01)


async def test_image_document_in_a_group_gets_no_compression_tip(
    settings: Settings, core: Core, server: FakeTelegram
) -> None:
    await consented(core, ALICE)
    alice = Updates(server, ALICE, GROUP)
    async with running_bot(settings, core, server):
        sent = alice.message(caption="/face@PulidTestBot add me", document=astronaut_png())
        receipt = await server.wait_for("sendMessage", answering(sent))
    assert "queued" in receipt.params["text"] and TIP not in receipt.params["text"]
    assert server.calls_to("getFile")[0].params["file_id"] == sent["document"]["file_id"]


async def test_a_reply_to_a_photo_uses_that_photo(
    settings: Settings, core: Core, server: FakeTelegram
) -> None:
    await consented(core, ALICE)
    alice = Updates(server, ALICE, GROUP)
    async with running_bot(settings, core, server):
        photo = alice.message(photo=astronaut_png())  # no caption: nothing happens
        sent = alice.message("/face add me crop 0,0,256,256", reply_to=photo)
        receipt = await server.wait_for("sendMessage", answering(sent))
    assert "queued" in receipt.params["text"]
    [get_file] = server.calls_to("getFile")
    assert get_file.params["file_id"] == photo["photo"][-1]["file_id"]


@pytest.mark.parametrize(
    ("upload", "message"),
    [
        ({"document": b"%PDF-1.4", "file_name": "cv.pdf", "mime_type": "application/pdf"},
         "'cv.pdf' is not an image"),
        ({"photo": b"x" * 100, "photo_size": 25 * MB},
         "Telegram lets bots download files up to 20.0 MB"),
        ({"document": b"x" * 100, "document_size": 2 * MB}, "this bot takes files up to 1.0 MB"),
        ({}, "Send the photo with the command as its caption"),
    ],
)  # fmt: skip
async def test_refused_before_any_download(
    settings: Settings, core: Core, server: FakeTelegram, upload: dict, message: str
) -> None:
    small = settings.limits.model_copy(update={"max_upload_bytes": MB})
    host = settings.model_copy(update={"limits": small}) if "document_size" in upload else settings
    alice = Updates(server, ALICE, private_chat(ALICE))
    async with running_bot(host, core, server):
        if upload:
            sent = alice.message(caption="/face add me", **upload)
        else:
            sent = alice.message("/face add me")
        error = await server.wait_for("sendMessage", answering(sent))
    assert message in error.params["text"]
    assert server.calls_to("getFile") == [] and server.calls_to("download") == []


async def test_face_show_in_a_private_chat_sends_the_thumbnail(
    settings: Settings, core: Core, server: FakeTelegram, alice: Updates
) -> None:
    async with running_bot(settings, core, server):
        sent = alice.message("/face show me")
        shown = await server.wait_for("sendPhoto", answering(sent))
    assert shown.params["caption"].startswith("'me' (1 photo")
    assert shown.files["photo"].startswith(b"\x89PNG")


async def test_export_in_a_group_goes_private_and_imports_back(
    settings: Settings, core: Core, worker: FixtureWorker, server: FakeTelegram
) -> None:
    await saved_face(core, worker, ALICE, GROUP)
    in_group = Updates(server, ALICE, GROUP)
    in_private = Updates(server, ALICE, private_chat(ALICE))
    async with running_bot(settings, core, server):
        asked = in_group.message("/face export me")
        refused = await server.wait_for("sendMessage", answering(asked))
        assert "can't message you privately" in refused.params["text"]
        in_private.message("/start")  # Alice opens a private chat with the bot
        await server.wait_for("sendMessage", lambda c: c.params["chat_id"] == ALICE["id"])
        asked = in_group.message("/face export me")
        exported = await server.wait_for("sendDocument", lambda c: c.error is None)
        note = await server.wait_for("sendMessage", answering(asked))
        assert exported.params["chat_id"] == ALICE["id"]
        assert "private chat" in note.params["text"]
        await identities.delete_identity(core.db, 1, "me")
        data = exported.files["document"]
        sent = in_private.message(caption="/face import", document=data, file_name="me.safetensors",
                                  mime_type="application/octet-stream")  # fmt: skip
        imported = await server.wait_for("sendMessage", answering(sent))
    assert "Imported 'me'" in imported.params["text"]
    assert [f.name for f in await identities.list_identities(core.db, 1)] == ["me"]
