"""The /face family through the text dispatcher, with the fixture worker playing the engine."""

from __future__ import annotations

import io

import pytest
from bot_helpers import add_face, astronaut_png, button, deliver, photo, say
from bot_worker_fixture import FixtureWorker
from PIL import Image
from sqlalchemy import event

from bot.core import actions
from bot.core.app import Core
from bot.core.messages import Attachment, Caller, ReplyKind
from bot.core.uploads import FIRST_FRAME
from storage import identities, jobs, users, workers
from storage.config import Settings
from storage.schemas import FaceMode, FaceParams, JobState


async def test_first_face_asks_consent_then_queues(core: Core, worker: FixtureWorker) -> None:
    alice = Caller("console", "alice", channel_id="alice")
    reply = await say(core, alice, "/face add me", [photo()])
    assert "Before saving a face" in reply.text and reply.ephemeral
    assert [b.label for b in reply.buttons] == ["Accept", "Decline"]
    user = await users.find_user(core.db, "console", "alice")
    assert user is not None and user.consent_at is None
    [held] = await jobs.list_jobs(core.db, owner_id=user.id)  # held with its photo, not queued
    assert held.held and await jobs.count_active(core.db, user.id) == 0
    listing = await say(core, alice, "/jobs")
    assert f"#{held.id} face: waiting for you to accept the terms" in listing.text

    receipt = await core.press(alice, button(reply, "Accept"))
    assert receipt.kind is ReplyKind.RECEIPT and receipt.job_id is not None
    assert receipt.text == f"Job #{receipt.job_id} (face) queued — position 1 in the queue."
    assert [b.action_id for b in receipt.buttons] == [f"cx:{receipt.job_id}"]
    job = await jobs.get_job(core.db, receipt.job_id, with_input=True)
    assert job.params == FaceParams(mode=FaceMode.ADD, name="me")
    assert job.input_blob == astronaut_png()
    assert job.delivery is not None and job.delivery.channel_id == "alice"

    await worker.drain()
    [result] = (await deliver(core)).for_job(receipt.job_id)
    assert result.text.startswith(f"Job #{receipt.job_id}: Saved face 'me' (1 photo, your default")
    assert [f.name for f in result.files] == [f"job{receipt.job_id}-1.png"]
    again = await say(core, alice, "/face add other", [photo()])
    assert again.kind is ReplyKind.RECEIPT  # consent is asked once


async def test_decline_saves_nothing(core: Core, alice: Caller) -> None:
    reply = await say(core, alice, "/face add me", [photo()])
    answer = await core.press(alice, button(reply, "Decline"))
    assert answer.text == "Declined: nothing was saved."
    user = await users.find_user(core.db, "console", "alice")
    assert user is not None and user.consent_at is None
    assert await jobs.list_jobs(core.db, owner_id=user.id) == []


async def test_face_options_reach_the_job(core: Core, worker: FixtureWorker, alice: Caller) -> None:
    await add_face(core, worker, alice, "first")
    crop = await say(core, alice, "/face add b crop 10,20,200,220 default", [photo()])
    numbered = await say(core, alice, "/face add c face=2", [photo()])
    relative = await say(core, alice, "/face add d crop=10%,10%,50%,50%", [photo()])
    replies = (crop, numbered, relative)
    params = [(await jobs.get_job(core.db, r.job_id or 0)).params for r in replies]
    assert isinstance(params[0], FaceParams) and params[0].make_default
    assert params[0].crop is not None and (params[0].crop.x, params[0].crop.h) == (10, 220)
    assert isinstance(params[1], FaceParams) and params[1].face_index == 2
    assert isinstance(params[2], FaceParams) and params[2].crop and params[2].crop.relative


def _gif(frames: int) -> bytes:
    buf = io.BytesIO()
    images = [Image.new("RGB", (20, 20), (i * 40, 0, 0)) for i in range(frames)]
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:])
    return buf.getvalue()


def _huge(gif: bytes) -> bytes:
    """The GIF claiming an 8000×8000 screen in its header (a decompression bomb's shape)."""
    return gif[:6] + (8000).to_bytes(2, "little") * 2 + gif[10:]


@pytest.mark.parametrize(
    ("text", "upload", "error"),
    [
        ("/face add", photo(), "/face add needs a face name"),
        ("/face add two words", photo(), "unexpected 'words'"),
        ("/face add bad!name", photo(), "face name 'bad!name' must be 1–32 letters"),
        ("/face add me", None, "attach a photo"),
        ("/face add me", Attachment("notes.txt", b"hello"), "'notes.txt' is not an image"),
        ("/face add me", Attachment("empty.png", b""), "the photo 'empty.png' is empty"),
        ("/face add me crop 400,400,200,200", photo(), "reaches outside the 512×512 image"),
        ("/face add me crop 1,2,3", photo(), "expected four numbers"),
        ("/face add me crop 0,0,9,9 face 1", photo(), "a crop box or a face number, not both"),
        ("/face add me face 0", photo(), "expected a face number"),
        ("/face rename me", photo(), "/face rename: expected one of add, more"),
        ("/face more me default", photo(), "does not take 'default'"),
    ],
)
async def test_face_add_errors(
    core: Core, alice: Caller, text: str, upload: Attachment | None, error: str
) -> None:
    reply = await say(core, alice, text, [upload] if upload else [])
    assert reply.is_error and error.lower() in reply.text.lower(), reply.text


async def test_animated_images_are_queued_and_the_receipt_says_the_first_frame_is_used(
    core: Core, worker: FixtureWorker, alice: Caller
) -> None:
    ask = await say(core, alice, "/face add anim", [Attachment("anim.gif", _gif(3))])
    assert ask.text.endswith("\n" + FIRST_FRAME) and button(ask, "Accept")
    await core.press(alice, button(ask, "Accept"))
    await worker.drain()
    animation = Attachment("wave.gif", _gif(4))
    receipt = await say(core, alice, "/face more anim", [animation])
    assert receipt.kind is ReplyKind.RECEIPT, receipt.text
    assert receipt.text.splitlines()[1:] == [FIRST_FRAME]
    queued = await jobs.get_job(core.db, receipt.job_id or 0, with_input=True)
    assert queued.input_blob == animation.data  # the engine decodes its first frame
    still = await say(core, alice, "/face add still", [photo()])
    assert still.kind is ReplyKind.RECEIPT and FIRST_FRAME not in still.text
    bomb = Attachment("bomb.gif", _huge(_gif(2)))
    refused = await say(core, alice, "/face add big", [bomb])
    assert refused.is_error and "megapixels" in refused.text


async def test_upload_size_limit(core: Core, alice: Caller) -> None:
    core.limits = core.limits.model_copy(update={"max_upload_bytes": 1024})
    reply = await say(core, alice, "/face add me", [photo()])
    assert reply.is_error and "the limit is 0.0 MB" in reply.text


async def test_existing_name_and_face_limit(
    core: Core, worker: FixtureWorker, alice: Caller
) -> None:
    await add_face(core, worker, alice, "me")
    taken = await say(core, alice, "/face add ME", [photo()])
    assert taken.is_error and "already have a face named 'ME'" in taken.text
    core.limits = core.limits.model_copy(update={"max_identities_per_user": 1})
    full = await say(core, alice, "/face add two", [photo()])
    assert full.is_error and "at most 1 faces" in full.text


async def test_more_list_show_default_delete(
    core: Core, worker: FixtureWorker, alice: Caller
) -> None:
    await add_face(core, worker, alice, "me")
    await add_face(core, worker, alice, "twin")
    more = await say(core, alice, "/face more me", [photo()])
    assert more.kind is ReplyKind.RECEIPT
    await worker.drain()
    [done] = (await deliver(core)).for_job(more.job_id or 0)
    assert "Added a photo to face 'me' (2 photos, your default face)" in done.text

    listing = await say(core, alice, "/face list")
    assert listing.text.splitlines() == [
        "Your faces (2/20):",
        "• 'me' (2 photos, default)",
        "• 'twin' (1 photo)",
    ]
    shown = await say(core, alice, "/face show twin")
    assert shown.text.startswith("'twin' (1 photo); saved ") and shown.files[0].name == "twin.png"
    assert (await say(core, alice, "/face default twin")).text == "'twin' is now your default face."
    deleted = await say(core, alice, "/face delete twin")
    assert deleted.text == "Deleted face 'twin'. Your default face is now 'me'."
    gone = await say(core, alice, "/face show twin")
    assert gone.is_error and gone.text == "You have no face named 'twin'."
    missing = await say(core, alice, "/face more nobody", [photo()])
    assert missing.is_error and "no face named 'nobody'" in missing.text


async def test_export_import_round_trip(
    core: Core, worker: FixtureWorker, alice: Caller, bob: Caller
) -> None:
    await add_face(core, worker, alice, "me")
    exported = await say(core, alice, "/face export me")
    [file] = exported.files
    assert file.name == "me.safetensors" and file.data[:8] != b""

    await add_face(core, worker, bob, "bobface")  # bob consents through his own face
    imported = await say(core, bob, "/face import alice-copy", [file])
    assert imported.text == "Imported 'alice-copy' (1 photo)."
    bob_user = await users.find_user(core.db, "console", "bob")
    assert bob_user is not None
    names = [f.name for f in await identities.list_identities(core.db, bob_user.id)]
    assert names == ["alice-copy", "bobface"]

    await workers.register_worker(core.db, "w", host="h", device="cpu", preset="flux")
    await workers.mark_worker_ready(core.db, "w", fingerprint="other")
    refused = await say(core, bob, "/face import again", [file])
    assert refused.is_error and "other model weights" in refused.text
    junk = await say(core, bob, "/face import x", [Attachment("x.safetensors", b"junk data")])
    assert junk.is_error and "not a safetensors face file" in junk.text


async def test_import_asks_consent_first(core: Core, worker: FixtureWorker, alice: Caller) -> None:
    await add_face(core, worker, alice, "me")
    file = (await say(core, alice, "/face export me")).files[0]
    carol = Caller("console", "carol")
    ask = await say(core, carol, "/face import mine", [file])
    assert [b.label for b in ask.buttons] == ["Accept", "Decline"]
    done = await core.press(carol, button(ask, "Accept"))
    assert done.text == "Imported 'mine' (1 photo, default)."


async def test_several_faces_offer_face_buttons(core: Core, alice: Caller) -> None:
    group = FixtureWorker(core.db, faces_in_photo=3)
    reply = await say(core, alice, "/face add me", [photo()])
    receipt = await core.press(alice, button(reply, "Accept"))
    await group.drain()
    [failed] = (await deliver(core)).for_job(receipt.job_id or 0)
    assert failed.text.startswith(f"Job #{receipt.job_id} failed: Group photo: 3 faces found")
    assert [b.label for b in failed.buttons] == ["Face 1", "Face 2", "Face 3"]  # not from words
    assert failed.files[0].name == f"job{receipt.job_id}-faces.png"

    bob = Caller("console", "bob")
    stolen = await core.press(bob, button(failed, "Face 2"))
    assert stolen.is_error and "no job" in stolen.text
    chosen = await core.press(alice, button(failed, "Face 2"))
    assert chosen.kind is ReplyKind.RECEIPT
    job = await jobs.get_job(core.db, chosen.job_id or 0, with_input=True)
    assert isinstance(job.params, FaceParams) and job.params.face_index == 2
    assert job.input_blob == astronaut_png()  # the refused job kept it for this choice
    await group.drain()
    done = await jobs.get_job(core.db, chosen.job_id or 0)
    assert done.state is JobState.DONE
    again = await core.press(alice, button(failed, "Face 3"))  # answered once: the photo moved
    assert again.is_error and "no longer stored; send it again" in again.text
    beyond = await core.press(alice, actions.face_choice(receipt.job_id or 0, 4))
    assert beyond.is_error and beyond.text == "Choose a face from 1 to 3"


async def test_face_choice_and_consent_survive_a_restart(
    settings: Settings, core: Core, alice: Caller
) -> None:
    group = FixtureWorker(core.db, faces_in_photo=2)
    ask = await say(core, alice, "/face add me", [photo()])
    restarted = await Core.open(settings)  # a new bot process: nothing of the old memory
    try:
        receipt = await restarted.press(alice, button(ask, "Accept"))
        assert receipt.kind is ReplyKind.RECEIPT, receipt.text
        await group.drain()
        [failed] = (await deliver(restarted)).for_job(receipt.job_id or 0)
        again = await Core.open(settings)
        chosen = await again.press(alice, button(failed, "Face 2"))
        await again.close()
    finally:
        await restarted.close()
    assert chosen.kind is ReplyKind.RECEIPT, chosen.text
    job = await jobs.get_job(core.db, chosen.job_id or 0, with_input=True)
    assert job.input_blob == astronaut_png() and isinstance(job.params, FaceParams)
    assert job.params.face_index == 2
    refused = await jobs.get_job(core.db, receipt.job_id or 0, with_input=True)
    assert refused.input_blob is None


async def test_decline_and_forget_erase_the_waiting_photo(core: Core, alice: Caller) -> None:
    ask = await say(core, alice, "/face add me", [photo()])
    user = await users.find_user(core.db, "console", "alice")
    assert user is not None
    assert (await core.press(alice, button(ask, "Decline"))).text.startswith("Declined")
    assert await jobs.list_jobs(core.db, owner_id=user.id) == []
    late = await core.press(alice, button(ask, "Accept"))  # nothing waits any more
    assert late.text.startswith("Thank you. Now send /face add NAME")
    group = FixtureWorker(core.db, faces_in_photo=2)
    await say(core, alice, "/face add me", [photo()])
    await group.drain()  # refused: several faces, the photo kept for a choice
    [refused] = await jobs.list_jobs(core.db, owner_id=user.id)
    assert (await jobs.get_job(core.db, refused.id, with_input=True)).input_blob
    ask = await say(core, alice, "/forget")
    await core.press(alice, button(ask, "Erase everything"))
    assert await users.find_user(core.db, "console", "alice") is None


async def test_the_newest_request_is_the_one_that_waits(
    core: Core, worker: FixtureWorker, alice: Caller
) -> None:
    await add_face(core, worker, alice, "me")
    file = (await say(core, alice, "/face export me")).files[0]
    carol = Caller("console", "carol")
    await say(core, carol, "/face add first", [photo()])
    ask = await say(core, carol, "/face import second", [file])  # replaces the held photo
    assert (await core.press(carol, button(ask, "Accept"))).text.startswith("Imported 'second'")
    user = await users.find_user(core.db, "console", "carol")
    assert user is not None and await jobs.list_jobs(core.db, owner_id=user.id) == []


async def test_face_names_are_the_callers_own(
    core: Core, worker: FixtureWorker, alice: Caller, bob: Caller
) -> None:
    for name in ("zed", "Anna", "banana", "ann2"):
        await add_face(core, worker, alice, name)
    await add_face(core, worker, bob, "another")
    assert await core.face_names(alice) == ["ann2", "Anna", "banana", "zed"]
    assert await core.face_names(alice, "an") == ["ann2", "Anna", "banana"]
    assert await core.face_names(alice, " AN ", limit=2) == ["ann2", "Anna"]
    assert await core.face_names(alice, "q") == []
    stranger = Caller("console", "stranger")
    assert await core.face_names(stranger) == []
    assert await users.find_user(core.db, "console", "stranger") is None
    alice_row = await users.find_user(core.db, "console", "alice")
    assert alice_row is not None
    await users.ban_user(core.db, alice_row.id)
    assert await core.face_names(alice) == []


async def test_autocomplete_and_name_checks_read_no_face_blobs(
    core: Core, worker: FixtureWorker, alice: Caller
) -> None:
    await add_face(core, worker, alice, "Anna")
    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement.lower())

    engine = core.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        assert await core.face_names(alice, "an") == ["Anna"]
        assert await core.has_face(alice, "ANNA") and not await core.has_face(alice, "bob")
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    reads = [s for s in statements if "from identities" in s]
    assert len(reads) == 3
    assert not [s for s in reads if "embedding" in s or "arcface" in s or "thumbnail" in s]
