"""Buttons: consent, face choice, and result buttons that still work after a bot restart."""

from __future__ import annotations

import pytest
from bot_worker_fixture import FixtureWorker
from test_discord_fakeapi import (
    ALICE,
    BOB,
    CHANNEL_ID,
    FOLLOW_UP,
    ORIGINAL,
    Call,
)
from test_discord_support import (
    Harness,
    button_id,
    face_add,
    option,
    save_faces,
    stored_receipt,
)
from test_discord_support import h as h

from bot.core.buttons import VARY_SPAN
from bot.core.messages import Button
from bot.discord.views import ActionButton, ButtonsView
from storage import jobs, users
from storage.errors import NotFound
from storage.schemas import FaceParams, ImagineParams, JobState


async def deliver_image(h: Harness, worker: FixtureWorker) -> Call:
    """Alice's /imagine run by the fixture worker; returns the delivered result message."""
    await save_faces(h.core, ALICE, "me")
    await h.callback(h.command("imagine", option("prompt", "a chef"), option("seed", 7)))
    await worker.drain()
    [result] = await h.fake.wait_for("POST", FOLLOW_UP)
    return result


async def test_consent_accept_queues_the_waiting_face_job(h: Harness) -> None:
    consent = await h.callback(face_add(h, "me"))
    receipt = await h.callback(h.press(h.fake.message_for(consent), button_id(consent, "Accept")))
    assert receipt.body["type"] == 4 and not receipt.flags & 64
    assert "(face) queued" in receipt.content
    user = await users.find_user(h.core.db, "discord", str(ALICE))
    assert user is not None and user.consent_at is not None
    [job] = await jobs.list_jobs(h.core.db, owner_id=user.id)
    assert isinstance(job.params, FaceParams) and job.params.name == "me"


async def test_consent_decline_and_other_users_press_nothing(h: Harness) -> None:
    consent = await h.callback(face_add(h, "me"))
    message = h.fake.message_for(consent)
    foreign = await h.callback(h.press(message, button_id(consent, "Accept"), user=BOB))
    assert foreign.flags & 64 and foreign.body["type"] == 4
    declined = await h.callback(h.press(message, button_id(consent, "Decline")))
    assert declined.flags & 64 and declined.content == "Declined: nothing was saved."
    assert await jobs.list_jobs(h.core.db, platform="discord") == []


async def test_face_buttons_complete_the_face_add(h: Harness) -> None:
    await save_faces(h.core, ALICE, "first")
    group = FixtureWorker(h.core.db, faces_in_photo=3)
    receipt = await h.callback(face_add(h, "friend"))
    assert "queued" in receipt.content
    await group.drain()
    [preview] = await h.fake.wait_for("POST", FOLLOW_UP)
    assert preview.content.startswith("Job #") and "3 faces found" in preview.content
    assert preview.labels == ["Face 1", "Face 2", "Face 3"]
    assert [name for name, _ in preview.files] == [f"job{receipt_job(receipt)}-faces.png"]

    chosen = await h.callback(h.press(h.fake.message_for(preview), button_id(preview, "Face 2")))
    assert "(face) queued" in chosen.content and not chosen.flags & 64
    newest = (await jobs.list_jobs(h.core.db, platform="discord"))[0]
    assert isinstance(newest.params, FaceParams)
    assert (newest.params.name, newest.params.face_index) == ("friend", 2)
    await group.drain()
    [_, saved] = await h.fake.wait_for("POST", FOLLOW_UP, 2)
    assert "Saved face 'friend'" in saved.content


def receipt_job(receipt: Call) -> int:
    return int(receipt.content.split("#", 1)[1].split(" ", 1)[0])


async def test_result_buttons_work_after_a_restart(h: Harness, worker: FixtureWorker) -> None:
    result = await deliver_image(h, worker)
    assert result.labels == ["Re-roll", "Vary", "Use seed", "Delete"]
    message = h.fake.message_for(result)
    [first] = await jobs.list_jobs(h.core.db, platform="discord")
    await h.restart()  # a new bot instance: nothing of the old one's memory is left

    reroll = await h.callback(h.press(message, button_id(result, "Re-roll")))
    assert reroll.body["type"] == 4 and "(imagine) queued" in reroll.content
    again = (await jobs.list_jobs(h.core.db, platform="discord"))[0]
    assert again.id != first.id and isinstance(again.params, ImagineParams)
    assert again.params.prompt == "a chef" and again.params.settings.seed is None

    seed = await h.callback(h.press(message, button_id(result, "Use seed")))
    assert seed.flags & 64 and seed.content.startswith("Seed 7 is now your default")

    vary = await h.callback(h.press(message, button_id(result, "Vary")))
    assert "(imagine) queued" in vary.content
    varied = (await jobs.list_jobs(h.core.db, platform="discord"))[0]
    assert isinstance(varied.params, ImagineParams) and varied.params.prompt == "a chef"
    assert 7 < (varied.params.settings.seed or 0) <= 7 + VARY_SPAN  # same prompt, nearby seed


async def test_a_slow_press_still_gets_a_public_receipt_for_progress(
    h: Harness, worker: FixtureWorker
) -> None:
    result = await deliver_image(h, worker)
    h.bot.answer_within = 0.0  # the press is acknowledged before the core answers
    press = h.press(h.fake.message_for(result), button_id(result, "Re-roll"))
    deferred = await h.callback(press)
    assert deferred.body == {"type": 5, "data": {"flags": 64}}  # "thinking", privately
    token = press["token"]
    await h.fake.wait_for("DELETE", rf"/{token}/messages/@original$")
    [receipt] = await h.fake.wait_for("POST", rf"/webhooks/\d+/{token}$")
    assert not receipt.flags & 64 and "(imagine) queued" in receipt.content
    job = await jobs.claim(h.core.db, "test-worker")
    assert job is not None
    assert await stored_receipt(h.core, job.id) == f"{CHANNEL_ID}:{receipt.message_id}"
    await jobs.progress(h.core.db, job.id, "test-worker", 1, 4)
    [edit] = await h.fake.wait_for("PATCH", rf"/{token}/messages/{receipt.message_id}$")
    assert "step 1/4" in edit.content


async def test_delete_is_for_the_owner_only(h: Harness, worker: FixtureWorker) -> None:
    result = await deliver_image(h, worker)
    message = h.fake.message_for(result)
    [job] = await jobs.list_jobs(h.core.db, platform="discord")
    await h.restart()

    refused = await h.callback(h.press(message, button_id(result, "Delete"), user=BOB))
    assert refused.body["type"] == 4 and refused.flags & 64
    assert int(message["id"]) in h.fake.messages

    press = h.press(message, button_id(result, "Delete"))
    deferred = await h.callback(press)
    assert deferred.body == {"type": 6}
    [gone] = await h.fake.wait_for("DELETE", ORIGINAL)
    assert press["token"] in gone.path and int(message["id"]) not in h.fake.messages
    [told] = await h.fake.wait_for("POST", rf"/webhooks/\d+/{press['token']}$")
    assert told.flags & 64 and told.content == f"Deleted job #{job.id} and its images."
    with pytest.raises(NotFound):
        await jobs.get_job(h.core.db, job.id)


async def test_forget_confirmation_is_removed_when_answered(h: Harness) -> None:
    await save_faces(h.core, ALICE, "me")
    ask = await h.callback(h.command("forget"))
    assert ask.flags & 64 and ask.labels == ["Erase everything", "Keep my data"]
    press = h.press(h.fake.message_for(ask), button_id(ask, "Erase everything"))
    await h.fake.wait_for("DELETE", rf"/webhooks/\d+/{press['token']}/messages/@original$")
    [told] = await h.fake.wait_for("POST", rf"/webhooks/\d+/{press['token']}$")
    assert told.flags & 64 and told.content.startswith("Erased 1 face,")
    assert await users.find_user(h.core.db, "discord", str(ALICE)) is None


async def test_buttons_on_private_messages_stay_registered(h: Harness) -> None:
    await save_faces(h.core, ALICE, "me")
    receipt = await h.callback(h.command("imagine", option("prompt", "a cat")))
    listing = await h.callback(h.command("jobs"))
    assert listing.flags & 64 and listing.labels == [f"Cancel #{receipt_job(receipt)}"]
    store = h.bot._connection._view_store
    assert ActionButton.__discord_ui_compiled_template__ in store._dynamic_items
    view = ButtonsView([Button("x", "cx:1")])
    view.timeout = 900.0  # what discord.py does to ephemeral views; it must not stick
    assert view.timeout is None

    cancel = await h.callback(h.press(h.fake.message_for(listing), listing.custom_ids[0]))
    assert cancel.flags & 64 and cancel.content == f"Job #{receipt_job(receipt)} cancelled."
    job = await jobs.get_job(h.core.db, receipt_job(receipt))
    assert job.state is JobState.CANCELLED


async def test_unknown_button_ids_are_refused_privately(h: Harness, worker: FixtureWorker) -> None:
    result = await deliver_image(h, worker)
    message = h.fake.message_for(result)
    for row in message["components"]:
        for c in row["components"]:
            c["custom_id"] = c["custom_id"].replace("pb:rr:", "pb:zz:")
    refused = await h.callback(h.press(message, "pb:zz:" + button_id(result, "Re-roll")[6:]))
    assert refused.flags & 64 and refused.content.startswith("Unknown button action")
