"""Slash commands through the real discord.py CommandTree, against a local fake Discord API."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from bot_worker_fixture import FixtureWorker
from test_discord_fakeapi import (
    ALICE,
    BOB,
    CALLBACK,
    CHANNEL_ID,
    FOLLOW_UP,
    GUILD_ID,
    ORIGINAL,
    dm_channel_of,
)
from test_discord_support import (
    Harness,
    command_data,
    face_add,
    form_data,
    harness,
    interaction_payload,
    option,
    photo_upload,
    save_faces,
    stored_receipt,
    upload,
    upload_option,
)
from test_discord_support import h as h

from bot.core.app import Core
from bot.core.moderation import Moderation
from bot.discord.client import INVITE_PERMISSIONS, DiscordAdapter, intents, invite_url
from storage import identities, jobs, users
from storage.config import (
    ConfigError,
    LimitSettings,
    ModerationSettings,
    Settings,
    load_settings,
)
from storage.schemas import BatchParams, FaceMode, FaceParams, ImagineParams


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"limits": LimitSettings(max_identities_per_user=40)})


async def test_login_syncs_every_command_for_servers_and_dms(h: Harness) -> None:
    [sync] = h.fake.find("PUT", r"/applications/\d+/commands$")
    by_name = {c["name"]: c for c in sync.body}
    assert sorted(by_name) == sorted(
        [
            *("face", "imagine", "batch", "compare", "jobs", "cancel", "settings", "forget"),
            *("help", "ban", "unban"),
        ]
    )
    assert {tuple(c["contexts"]) for c in sync.body} == {(0, 1)}  # guilds and bot DMs
    assert {tuple(c["integration_types"]) for c in sync.body} == {(0,)}
    subs = {s["name"]: s for s in by_name["face"]["options"]}
    assert sorted(subs) == sorted(
        ["add", "more", "list", "show", "default", "delete", "export", "import"]
    )
    add = {o["name"]: o for o in subs["add"]["options"]}
    assert add["image"]["type"] == 11 and add["image"]["required"]
    assert add["crop"]["type"] == 3 and not add["crop"]["required"]
    assert add["face"]["type"] == 4 and add["face"]["min_value"] == 1
    assert subs["show"]["options"][0]["autocomplete"] is True


async def test_test_guild_gets_the_commands_instead(
    settings: Settings, core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with harness(settings, core, monkeypatch, test_guild_id=GUILD_ID) as h:
        assert h.fake.find("PUT", r"/applications/\d+/commands$") == []
        [sync] = h.fake.find("PUT", rf"/applications/\d+/guilds/{GUILD_ID}/commands$")
        assert "imagine" in {c["name"] for c in sync.body}


async def test_help_is_answered_at_once_and_privately(h: Harness) -> None:
    h.command("help", option("topic", "face"))
    [call] = await h.fake.wait_for("POST", CALLBACK)
    assert call.body["type"] == 4 and call.flags & 64
    assert "/face add NAME IMAGE" in call.content


async def test_errors_are_ephemeral(h: Harness) -> None:
    h.command("imagine", option("prompt", "a cat"))
    [call] = await h.fake.wait_for("POST", CALLBACK)
    assert call.body["type"] == 4 and call.flags & 64
    assert call.content.startswith("You have no saved faces yet")


async def test_first_face_add_asks_consent_privately(h: Harness) -> None:
    face_add(h, "me")
    [call] = await h.fake.wait_for("POST", CALLBACK)
    assert call.flags & 64 and call.content.startswith("Before saving a face")
    assert call.labels == ["Accept", "Decline"]
    user = await users.find_user(h.core.db, "discord", str(ALICE))
    assert call.custom_ids == [f"pb:cs:{user.id}:y", f"pb:cs:{user.id}:n"]
    [held] = await jobs.list_jobs(h.core.db, owner_id=user.id)  # waits in storage, not queued
    assert held.held and await jobs.count_active(h.core.db, user.id) == 0


async def test_slow_download_is_deferred_then_the_receipt_replaces_it(h: Harness) -> None:
    await save_faces(h.core, ALICE, "first")
    h.bot.answer_within = 0.2
    started = time.monotonic()
    face_add(h, "second", option("crop", "10,20,200,220"), option("default", True), delay=1.2)
    [defer] = await h.fake.wait_for("POST", CALLBACK)
    [download] = await h.fake.wait_for("GET", r"/cdn/astronaut.png$")
    assert defer.body == {"type": 5} and defer.at - started < 3.0
    assert defer.answered < download.answered  # acknowledged while the photo was still downloading
    [edit] = await h.fake.wait_for("PATCH", ORIGINAL)
    assert "(face) queued — position 1" in edit.content
    assert edit.custom_ids[0].startswith("pb:cx:")
    [job] = await jobs.list_jobs(h.core.db, states=None, platform="discord")
    assert isinstance(job.params, FaceParams)
    assert job.params.crop is not None and job.params.crop.w == 200 and job.params.make_default
    assert job.delivery.channel_id == str(CHANNEL_ID)
    assert await stored_receipt(h.core, job.id) == f"{CHANNEL_ID}:{edit.message_id}"


async def test_private_answer_after_a_public_deferral_replaces_it(h: Harness) -> None:
    h.bot.answer_within = 0.2
    face_add(h, "me", delay=0.6)  # first use: the answer is the private consent request
    await h.fake.wait_for("POST", CALLBACK)
    await h.fake.wait_for("DELETE", ORIGINAL)
    [follow] = await h.fake.wait_for("POST", FOLLOW_UP)
    assert follow.flags & 64 and follow.content.startswith("Before saving a face")


async def test_face_number_option_reaches_the_job(h: Harness) -> None:
    await save_faces(h.core, ALICE, "first")
    face_add(h, "group", option("face", 2))
    [call] = await h.fake.wait_for("POST", CALLBACK)
    assert call.body["type"] == 4 and not call.flags & 64 and "queued" in call.content
    [job] = await jobs.list_jobs(h.core.db, platform="discord")
    assert isinstance(job.params, FaceParams) and job.params.face_index == 2


async def test_face_more_downloads_the_photo_then_queues_it(h: Harness) -> None:
    await save_faces(h.core, ALICE, "me")
    image = photo_upload(h)
    options = [option("name", "me"), upload_option("image", int(image["id"])), option("face", 2)]
    call = await h.callback(h.command("face", *options, sub="more", uploads=[image]))
    assert call.body["type"] == 4 and not call.flags & 64 and "(face) queued" in call.content
    assert len(h.fake.find("GET", r"/cdn/astronaut.png$")) == 1
    [job] = await jobs.list_jobs(h.core.db, platform="discord")
    assert isinstance(job.params, FaceParams) and job.params.mode is FaceMode.MORE
    assert job.params.name == "me" and job.params.face_index == 2


async def test_an_exported_face_imports_under_a_new_name(h: Harness) -> None:
    await save_faces(h.core, ALICE, "me")
    exported = await h.callback(h.command("face", option("name", "me"), sub="export"))
    [(filename, data)] = exported.files
    file = upload(h.fake.add_upload(filename, data), filename, len(data))
    options = [upload_option("file", int(file["id"])), option("name", "copy")]
    call = await h.callback(h.command("face", *options, sub="import", uploads=[file]))
    assert call.flags & 64 and call.content.startswith("Imported 'copy'")
    user = await users.find_user(h.core.db, "discord", str(ALICE))
    faces = await identities.list_identities(h.core.db, user.id)
    assert sorted(f.name for f in faces) == ["copy", "me"]


async def test_autocomplete_offers_only_the_callers_faces(h: Harness) -> None:
    await save_faces(h.core, ALICE, *[f"al{i:02d}" for i in range(30)], "zed", "lazy")
    await save_faces(h.core, BOB, "bobface")

    async def choices(typed: str, **who: object) -> list[str]:
        data = command_data("imagine", [option("face", typed, focused=True)])
        call = await h.callback(h.send(interaction_payload(4, data, **who)))
        assert call.body["type"] == 8
        return [c["value"] for c in call.body["data"]["choices"]]

    assert await choices("") == [f"al{i:02d}" for i in range(25)]  # at most 25
    assert await choices("ZE") == ["zed"]
    assert await choices("z") == ["zed", "lazy"]  # names starting with it first
    assert await choices("", user=BOB, dm=True) == ["bobface"]


async def test_autocomplete_creates_no_user(h: Harness) -> None:
    h.send(interaction_payload(4, command_data("imagine", [option("face", "", focused=True)])))
    [call] = await h.fake.wait_for("POST", CALLBACK)
    assert call.body["data"]["choices"] == []
    assert await users.find_user(h.core.db, "discord", str(ALICE)) is None


async def test_direct_messages_work_and_deliver_to_the_dm(
    h: Harness, worker: FixtureWorker
) -> None:
    await save_faces(h.core, BOB, "me")
    h.command(
        "imagine", option("prompt", "a chef in Paris"), option("ar", "3:4"), user=BOB, dm=True
    )
    [call] = await h.fake.wait_for("POST", CALLBACK)
    assert call.body["type"] == 4 and "(imagine) queued" in call.content
    [job] = await jobs.list_jobs(h.core.db, platform="discord")
    assert isinstance(job.params, ImagineParams) and job.params.prompt == "a chef in Paris"
    gs = job.params.settings
    assert abs(gs.width / gs.height - 3 / 4) < 0.05  # the ar option became --ar 3:4
    assert job.delivery.channel_id == str(dm_channel_of(BOB))
    assert job.delivery.message_ref.endswith(f":{BOB}")
    await worker.drain()
    [result] = await h.fake.wait_for("POST", FOLLOW_UP)
    assert result.content.startswith(f"Job #{job.id} done") and len(result.files) == 1
    assert h.fake.message_for(result)["channel_id"] == str(dm_channel_of(BOB))


async def test_batch_opens_a_form_and_queues_its_prompts(h: Harness) -> None:
    await save_faces(h.core, ALICE, "me")
    h.command("batch", option("face", "me"))
    [opened] = await h.fake.wait_for("POST", CALLBACK)
    assert opened.body["type"] == 9
    modal = opened.body["data"]
    assert modal["components"][0]["component"]["style"] == 2  # a multi-line field
    h.send(interaction_payload(5, form_data(modal, {"Prompts": "a chef\nan astronaut --ar 3:4"})))
    [_, receipt] = await h.fake.wait_for("POST", CALLBACK, 2)
    assert "(batch) queued" in receipt.content and not receipt.flags & 64
    [job] = await jobs.list_jobs(h.core.db, platform="discord")
    assert isinstance(job.params, BatchParams) and job.params.prompts == ["a chef", "an astronaut"]


async def test_steps_follow_the_configured_limit(h: Harness) -> None:
    await save_faces(h.core, ALICE, "me")
    h.core.limits = h.core.limits.model_copy(update={"max_steps": 20})
    refused = await h.callback(h.command("imagine", option("prompt", "a cat"), option("steps", 30)))
    assert refused.flags & 64 and "--steps 30: expected a whole number from 1 to 20" in (
        refused.content
    )
    queued = await h.callback(h.command("imagine", option("prompt", "a cat"), option("steps", 20)))
    assert "queued" in queued.content


async def test_admins_ban_and_unban_by_mention_id_or_platform(h: Harness) -> None:
    h.core.moderation = Moderation(ModerationSettings(admin_ids=[f"discord:{ALICE}"]))
    refused = await h.callback(h.command("ban", option("user", f"<@{ALICE}>"), user=BOB))
    assert refused.flags & 64 and "Only this bot's admins can ban" in refused.content
    banned = await h.callback(h.command("ban", option("user", f"<@!{BOB}>"), user=ALICE))
    assert banned.flags & 64 and banned.content == f"discord:{BOB} is banned."
    bob = await users.find_user(h.core.db, "discord", str(BOB))
    assert bob is not None and bob.banned
    shut_out = await h.callback(h.command("jobs", user=BOB))
    assert shut_out.content.startswith("You are banned from this bot.")
    lifted = await h.callback(h.command("unban", option("user", str(BOB)), user=ALICE))
    assert lifted.content == f"discord:{BOB} is no longer banned."
    other = await h.callback(h.command("ban", option("user", "telegram:42"), user=ALICE))
    assert other.content == "telegram:42 is banned."
    bob = await users.find_user(h.core.db, "discord", str(BOB))
    assert bob is not None and not bob.banned


async def test_unknown_commands_get_a_private_error(h: Harness) -> None:
    call = await h.callback(h.command("nosuch"))
    assert call.body["type"] == 4 and call.flags & 64 and "not known" in call.content


def test_no_privileged_intent_and_the_documented_invite() -> None:
    wanted = intents()
    assert not (wanted.members or wanted.presences or wanted.message_content)
    docs = (Path(__file__).resolve().parents[2] / "docs" / "discord.md").read_text()
    assert f"permissions={INVITE_PERMISSIONS.value}" in invite_url(1)
    assert f"permissions={INVITE_PERMISSIONS.value}" in docs
    assert f"**{INVITE_PERMISSIONS.value}**" in docs and "applications.commands" in docs


def test_the_token_comes_from_the_environment(core: Core) -> None:
    with pytest.raises(ConfigError, match="PULID_BOT__DISCORD__TOKEN"):
        DiscordAdapter(load_settings(environ={}), core)
    settings = load_settings(environ={"PULID_BOT__DISCORD__TOKEN": "abc.def"})
    assert settings.discord.token is not None
    assert settings.discord.token.get_secret_value() == "abc.def"
    assert DiscordAdapter(settings, core).bot.config is settings
