"""/jobs, /cancel, /settings, /forget, privacy between users, moderation, rate limits, bans."""

from __future__ import annotations

import pytest
from bot_helpers import add_face, button, deliver, rows_of, say
from bot_worker_fixture import FixtureWorker

from bot.core.app import Core
from bot.core.messages import Caller, ReplyKind
from bot.core.moderation import Moderation
from storage import identities, jobs, users
from storage.config import ModerationSettings
from storage.db import Limits
from storage.schemas import BatchParams, ImagineParams


async def _user_id(core: Core, caller: Caller) -> int:
    user = await users.find_user(core.db, caller.platform, caller.user_id)
    assert user is not None
    return user.id


async def test_jobs_and_cancel(
    core: Core, worker: FixtureWorker, alice: Caller, bob: Caller
) -> None:
    assert (await say(core, alice, "/jobs")).text == "You have no jobs yet. Try /imagine."
    face = await add_face(core, worker, alice)
    first = await say(core, alice, "/imagine one")
    second = await say(core, alice, "/imagine two")
    assert second.text.endswith("position 2 in the queue.")
    listing = await say(core, alice, "/jobs")
    assert listing.text.splitlines() == [
        "Your jobs:",
        f"#{second.job_id} imagine: queued, position 2",
        f"#{first.job_id} imagine: queued, position 1",
        f"#{face.job_id} face: done",
    ]
    assert [b.label for b in listing.buttons] == [
        f"Cancel #{second.job_id}",
        f"Cancel #{first.job_id}",
    ]
    foreign = await say(core, bob, f"/cancel {first.job_id}")
    assert foreign.is_error and foreign.text == f"You have no job {first.job_id}."
    assert (await say(core, alice, f"/cancel {first.job_id}")).text.endswith("cancelled.")
    again = await say(core, alice, f"/cancel {first.job_id}")
    assert again.is_error and "already finished (cancelled)" in again.text
    bad = await say(core, alice, "/cancel soon")
    assert bad.is_error and bad.text == "'soon' is not a job id (see /jobs)"


async def test_settings_saved_shown_reset(core: Core, worker: FixtureWorker, alice: Caller) -> None:
    await add_face(core, worker, alice, "me")
    await add_face(core, worker, alice, "twin")
    shown = await say(core, alice, "/settings")
    assert shown.text.splitlines() == [
        "Your defaults:",
        "--size 896x1152 --steps 28 --id 1 --start 0 --cfg 1 --guidance 4 --seed random",
        "--face me",
    ]
    saved = await say(
        core, alice, '/settings --ar 1:1 --steps 12 --id 1.2 --seed 5 --face twin --no "ugly"'
    )
    assert saved.text.splitlines() == [
        "Saved. Your defaults:",
        "--size 1024x1024 --steps 12 --id 1.2 --start 0 --cfg 1 --guidance 4 --seed 5",
        "--face twin",
        '--no "ugly"',
    ]
    reply = await say(core, alice, "/imagine a cat --steps 20")
    params = (await jobs.get_job(core.db, reply.job_id or 0)).params
    assert isinstance(params, ImagineParams)
    gs = params.settings
    assert (gs.width, gs.steps, gs.id_weight, gs.seed, gs.negative_prompt) == (
        1024,
        20,
        1.2,
        5,
        "ugly",
    )
    unpinned = await say(core, alice, "/settings --seed random --size 512x768")
    assert "--size 512x768 --steps 12" in unpinned.text and "--seed random" in unpinned.text
    reset = await say(core, alice, "/settings reset")
    assert reset.text.splitlines()[1].startswith("--size 896x1152 --steps 28")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("/settings bigger please", "/settings takes --flags only"),
        ("/settings --steps 99", "--steps 99: expected a whole number from 1 to 50"),
        ("/settings --start 5 --steps 4", "--start 5 must be below --steps 4"),
        ("/settings --face nobody", "You have no face named 'nobody'."),
    ],
)
async def test_settings_errors(core: Core, alice: Caller, text: str, error: str) -> None:
    reply = await say(core, alice, text)
    assert reply.is_error and error in reply.text, reply.text


async def test_a_refused_settings_command_saves_nothing(
    core: Core, worker: FixtureWorker, alice: Caller
) -> None:
    await add_face(core, worker, alice, "me")
    refused = await say(core, alice, "/settings --steps 20 --face nobody")
    assert refused.is_error and "You have no face named 'nobody'." in refused.text
    user = await users.find_user(core.db, alice.platform, alice.user_id)
    assert user is not None and user.settings == {}
    shown = await say(core, alice, "/settings")
    assert "--steps 28" in shown.text and "--face me" in shown.text


async def test_forget_erases_every_row_of_the_user_only(
    core: Core, worker: FixtureWorker, alice: Caller, bob: Caller
) -> None:
    for caller in (alice, bob):
        await add_face(core, worker, caller)
        await say(core, caller, "/settings --steps 9")
        await say(core, caller, "/imagine a cat")
        await say(core, caller, "/compare")
    await worker.drain()
    await deliver(core)
    await say(core, alice, "/batch a | b")  # still queued when erased
    alice_id, bob_id = await _user_id(core, alice), await _user_id(core, bob)
    before_bob = await rows_of(core, bob_id)

    ask = await say(core, alice, "/forget")
    assert ask.text.startswith("This erases your 1 saved face, 4 jobs and all their images")
    assert [b.label for b in ask.buttons] == ["Erase everything", "Keep my data"]
    refused = await core.press(bob, button(ask, "Erase everything"))
    assert refused.is_error and refused.text == "This button is not for you."
    kept = await core.press(alice, button(ask, "Keep my data"))
    assert kept.text == "Kept: nothing was erased." and (await rows_of(core, alice_id))["jobs"] == 4

    done = await core.press(alice, button(ask, "Erase everything"))
    assert done.text.startswith("Erased 1 face, 4 jobs and 6 images.") and done.remove_source
    assert await rows_of(core, alice_id) == {"users": 0, "identities": 0, "jobs": 0, "results": 0}
    assert await rows_of(core, bob_id) == before_bob
    stale = await core.press(alice, button(ask, "Erase everything"))
    assert stale.is_error and stale.text == "Nothing is stored for you on this bot."
    assert await users.find_user(core.db, "console", "alice") is None
    nothing = await say(core, Caller("console", "nobody"), "/forget")
    assert nothing.is_error and await users.find_user(core.db, "console", "nobody") is None


async def test_users_cannot_touch_each_others_faces(
    core: Core, worker: FixtureWorker, alice: Caller, bob: Caller
) -> None:
    await add_face(core, worker, alice, "me")
    await add_face(core, worker, bob, "bobface")
    for text in (
        "/face show me",
        "/face export me",
        "/face default me",
        "/face delete me",
        "/imagine a cat --face me",
        "/batch --face me\na\nb",
        "/compare --face me",
    ):
        reply = await say(core, bob, text)
        assert reply.is_error and reply.text == "You have no face named 'me'.", (text, reply.text)
    prompts = await say(core, bob, "/batch me\na")  # not his face: a prompt, with his own face
    batch = (await jobs.get_job(core.db, prompts.job_id or 0)).params
    assert isinstance(batch, BatchParams) and batch.prompts == ["me", "a"]
    bob_user = await users.find_user(core.db, bob.platform, bob.user_id)
    assert bob_user is not None
    assert batch.identity_id == (await identities.get_identity(core.db, bob_user.id, "bobface")).id
    assert "'me'" not in (await say(core, bob, "/face list")).text
    alice_face = await say(core, alice, "/face show me")
    assert not alice_face.is_error  # untouched
    alice_job = await say(core, alice, "/imagine a cat")
    params = (await jobs.get_job(core.db, alice_job.job_id or 0)).params
    assert isinstance(params, ImagineParams)
    smuggled = await core.imagine(bob, "a cat", face="me")
    assert smuggled.is_error
    assert (await say(core, bob, f"/cancel {alice_job.job_id}")).is_error


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("/imagine a Violent scene", "Your prompt contains the blocked word 'violent'"),
        ("/imagine a BAD  word", None),
        ("/imagine a bad word here", "Your prompt contains the blocked word 'bad word'"),
        ("/batch ok | kill them all", "Your prompt is not allowed here"),
        ("/compare me\nfine\nkill  them", "Your prompt is not allowed here"),
    ],
)
async def test_blocked_prompts(
    core: Core, worker: FixtureWorker, alice: Caller, text: str, error: str | None
) -> None:
    core.moderation = Moderation(
        ModerationSettings(blocked_words=["violent", "bad word"], blocked_patterns=[r"kill\s+them"])
    )
    await add_face(core, worker, alice)
    reply = await say(core, alice, text)
    if error is None:
        assert reply.kind is ReplyKind.RECEIPT, reply.text
    else:
        assert reply.is_error and reply.text.startswith(error), reply.text


async def test_rate_limit_and_queue_cap(core: Core, worker: FixtureWorker, alice: Caller) -> None:
    await add_face(core, worker, alice)  # 1 job this hour
    core.limits = core.limits.model_copy(update={"jobs_per_hour": 3})
    assert (await say(core, alice, "/imagine a")).kind is ReplyKind.RECEIPT
    assert (await say(core, alice, "/imagine b")).kind is ReplyKind.RECEIPT
    limited = await say(core, alice, "/imagine c")
    assert limited.is_error
    assert (
        limited.text == "You have started 3 jobs in the last hour, the limit here; try again later."
    )
    core.limits = core.limits.model_copy(update={"jobs_per_hour": 100})
    core.db.limits = Limits(max_active_jobs=2)
    full = await say(core, alice, "/imagine d")
    assert full.is_error and "You already have 2 jobs waiting or running" in full.text


async def test_admins_ban_and_unban(core: Core, worker: FixtureWorker, alice: Caller) -> None:
    core.moderation = Moderation(ModerationSettings(admin_ids=["console:root"]))
    root = Caller("console", "root")
    await add_face(core, worker, alice)
    refused = await say(core, alice, "/ban console:root")
    assert refused.is_error and refused.text == "Only this bot's admins can ban or unban users."
    assert (await say(core, root, "/ban alice")).text == "console:alice is banned."
    for text in ("/imagine a cat", "/face list", "/jobs", "/settings", "/forget"):
        reply = await say(core, alice, text)
        assert reply.is_error and reply.text.startswith("You are banned from this bot."), text
    assert not (await say(core, alice, "/help")).is_error
    assert (
        await say(core, root, "/unban console:alice")
    ).text == "console:alice is no longer banned."
    assert (await say(core, alice, "/imagine a cat")).kind is ReplyKind.RECEIPT
    assert (await say(core, root, "/ban discord:42")).text == "discord:42 is banned."
    self_ban = await say(core, root, "/ban root")
    assert self_ban.is_error and "is an admin" in self_ban.text
    assert (await say(core, root, "/ban a b")).is_error


async def test_help(core: Core, alice: Caller) -> None:
    summary = await say(core, alice, "/help")
    assert summary.text.startswith("Commands:") and summary.ephemeral
    assert "/imagine PROMPT" in (await say(core, alice, "/help imagine")).text
    assert (await say(core, alice, "/start")).text == summary.text
