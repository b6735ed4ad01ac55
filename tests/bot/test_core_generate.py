"""/imagine, /batch, /compare and the result buttons, with the fixture worker."""

from __future__ import annotations

import time

import pytest
from bot_helpers import add_face, button, deliver, say
from bot_worker_fixture import BUILT_IN_COMPARE, FixtureWorker

from bot.core import actions
from bot.core.app import Core
from bot.core.buttons import VARY_SPAN, nearby_seed
from bot.core.messages import Caller, Reply, ReplyKind
from bot.core.moderation import Moderation
from storage import identities, jobs, users
from storage.config import ModerationSettings
from storage.schemas import BatchParams, CompareParams, ImagineParams, JobState


async def _params(core: Core, reply: Reply) -> ImagineParams | BatchParams | CompareParams:
    assert reply.kind is ReplyKind.RECEIPT, reply.text
    params = (await jobs.get_job(core.db, reply.job_id or 0)).params
    assert not hasattr(params, "mode")
    return params  # type: ignore[return-value]


async def test_imagine_receipt_fast_and_params(
    core: Core, worker: FixtureWorker, alice: Caller
) -> None:
    await add_face(core, worker, alice)
    began = time.monotonic()
    reply = await say(core, alice, '/imagine a chef in Paris --ar 3:4 --seed 7 --no "blur, text"')
    assert time.monotonic() - began < 1.0
    assert reply.text == f"Job #{reply.job_id} (imagine) queued — position 1 in the queue."
    params = await _params(core, reply)
    assert isinstance(params, ImagineParams) and params.prompt == "a chef in Paris"
    gs = params.settings
    assert (gs.width, gs.height, gs.seed, gs.negative_prompt) == (880, 1184, 7, "blur, text")

    await worker.drain()
    [result] = (await deliver(core)).for_job(reply.job_id or 0)
    assert result.kind is ReplyKind.RESULT
    assert result.text == f"Job #{reply.job_id} done: “a chef in Paris” · seed 7 · likeness 0.50"
    assert [b.label for b in result.buttons] == ["Re-roll", "Vary", "Use seed", "Delete"]
    assert result.files[0].name == f"job{reply.job_id}-1.png"
    assert (await deliver(core)).replies == []  # delivered once


async def test_imagine_uses_named_or_default_face(
    core: Core, worker: FixtureWorker, alice: Caller
) -> None:
    await add_face(core, worker, alice, "me")
    await add_face(core, worker, alice, "twin")
    user = await users.find_user(core.db, "console", "alice")
    assert user is not None
    default = await _params(core, await say(core, alice, "/imagine a cat"))
    named = await _params(core, await say(core, alice, "/imagine a cat --face twin"))
    typed = await _params(core, await core.imagine(alice, "a cat", face="twin"))
    assert default.identity_id != named.identity_id == typed.identity_id
    clash = await core.imagine(alice, "a cat --face me", face="twin")
    assert clash.is_error and "Two faces given" in clash.text


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("/imagine", "The prompt is empty"),
        ("/imagine --ar 3:4", "The prompt is empty"),
        ("/imagine a cat --face nobody", "You have no face named 'nobody'."),
        ("/imagine a cat --steps 0", "--steps 0: expected a whole number from 1 to 50"),
        ("/imagine a cat --start 30", "--start 30 must be below --steps 28"),
        ("/imagine a cat --ar 1:9", "--ar 1:9 is too far from square"),
        ("/imagine a cat --size 100x100", "multiples of 16"),
        ("/imagine a cat --wat 1", "Unknown parameter --wat"),
        ("/imagine " + "x" * 1001, "The prompt has 1001 characters; the limit is 1000"),
        ("/imagine a bloody gore scene", "blocked word 'gore'"),
        ("/batch me\n" + "\n".join(f"p{i}" for i in range(9)), "/batch takes at most 8 prompts"),
        ("/batch me", "/batch needs prompts"),
        ("/batch a | b | gore", "blocked word 'gore'"),
        ("/compare me\n" + "\n".join(f"p{i}" for i in range(13)), "at most 12 prompts"),
        ("/nonsense", "Unknown command /nonsense"),
        ("hello", "Commands start with /"),
    ],
)
async def test_generation_errors(
    core: Core, worker: FixtureWorker, alice: Caller, text: str, error: str
) -> None:
    core.moderation = Moderation(ModerationSettings(blocked_words=["gore"]))
    await add_face(core, worker, alice)
    reply = await say(core, alice, text)
    assert reply.is_error and error in reply.text, reply.text


async def test_no_face_yet(core: Core, alice: Caller) -> None:
    reply = await say(core, alice, "/imagine a cat")
    assert reply.is_error and reply.text.startswith("You have no saved faces yet")


async def test_batch_forms_and_results(core: Core, worker: FixtureWorker, alice: Caller) -> None:
    await add_face(core, worker, alice, "me")
    await add_face(core, worker, alice, "twin")
    lines = await _params(core, await say(core, alice, "/batch twin\na chef\na pilot --steps 4"))
    piped = await _params(core, await say(core, alice, "/batch a chef | a pilot | a monk"))
    assert isinstance(lines, BatchParams) and lines.prompts == ["a chef", "a pilot"]
    assert lines.settings.steps == 4
    assert isinstance(piped, BatchParams) and piped.prompts == ["a chef", "a pilot", "a monk"]
    assert lines.identity_id != piped.identity_id  # "twin" named vs the default "me"

    await worker.drain()
    inbox = await deliver(core)
    [batch] = [r for _, r in inbox.replies if "3 images." in r.text]
    assert [f.name for f in batch.files] == [f"job{batch.job_id}-{i}.png" for i in (1, 2, 3)]
    assert [b.label for b in batch.buttons] == ["Re-roll", "Vary 1", "Vary 2", "Vary 3", "Delete"]
    assert batch.text.splitlines()[1].startswith("1. “a chef” · seed ")


async def test_a_first_line_is_the_face_only_when_it_names_a_saved_one(
    core: Core, worker: FixtureWorker, alice: Caller, bob: Caller
) -> None:
    await add_face(core, worker, alice, "me")
    await add_face(core, worker, alice, "Twin")
    await add_face(core, worker, bob, "selfie")  # another user's face names nothing for alice
    owner = await users.find_user(core.db, alice.platform, alice.user_id)
    assert owner is not None
    default = await identities.get_identity(core.db, owner.id, "me")
    twin = await identities.get_identity(core.db, owner.id, "twin")
    cases = {
        "/batch\nselfie\na chef in Paris": (default.id, ["selfie", "a chef in Paris"]),
        "/batch twin\na chef\na pilot": (twin.id, ["a chef", "a pilot"]),
        "/batch --face TWIN\na chef\na pilot": (twin.id, ["a chef", "a pilot"]),
        "/compare portrait": (default.id, ["portrait"]),
        "/compare twin": (twin.id, []),
        "/compare --face twin\nsunset\nrain": (twin.id, ["sunset", "rain"]),
    }
    for text, (identity_id, prompts) in cases.items():
        params = await _params(core, await say(core, alice, text))
        assert isinstance(params, BatchParams | CompareParams), text
        assert (params.identity_id, params.prompts) == (identity_id, prompts), text
        await worker.drain()  # under the queue cap
    named = await say(core, alice, "/batch --face selfie\na chef")
    assert named.is_error and "no face named 'selfie'" in named.text


async def test_compare_default_set_and_grid(
    core: Core, worker: FixtureWorker, alice: Caller
) -> None:
    await add_face(core, worker, alice)
    built_in = await _params(core, await say(core, alice, "/compare"))
    own = await _params(core, await say(core, alice, "/compare me\na chef\na pilot"))
    assert isinstance(built_in, CompareParams) and built_in.prompts == []
    assert isinstance(own, CompareParams) and own.prompts == ["a chef", "a pilot"]
    await worker.drain()
    replies = (await deliver(core)).replies
    grids = [r for _, r in replies if r.files and r.files[0].name.endswith("-grid.png")]
    assert len(grids) == 2
    first = grids[0].text.splitlines()
    assert first[0].endswith(f"across {len(BUILT_IN_COMPARE)} prompts. Mean likeness 0.51.")
    assert first[1] == "1. likeness 0.50 — a portrait in a park"


async def test_result_buttons(
    core: Core, worker: FixtureWorker, alice: Caller, bob: Caller
) -> None:
    await add_face(core, worker, alice)
    receipt = await say(core, alice, "/imagine a chef --seed 11 --guidance 4")
    await worker.drain()
    [result] = (await deliver(core)).for_job(receipt.job_id or 0)

    reroll = await core.press(alice, button(result, "Re-roll"))
    rerolled = await _params(core, reroll)
    assert isinstance(rerolled, ImagineParams) and rerolled.settings.seed is None
    assert rerolled.prompt == "a chef"
    original = (await jobs.get_job(core.db, receipt.job_id or 0)).params
    presses = [await core.press(alice, button(result, "Vary")) for _ in "ab"]
    varied = [await _params(core, p) for p in presses]
    seeds = [v.settings.seed or 0 for v in varied]
    assert all(11 < s <= 11 + VARY_SPAN for s in seeds) and seeds[0] != seeds[1]
    for v in varied:  # same prompt and settings, only the seed moved
        assert isinstance(v, ImagineParams) and v.prompt == "a chef"
        assert v.settings.model_copy(update={"seed": 11}) == original.settings
    seed = await core.press(alice, button(result, "Use seed"))
    assert seed.text.startswith("Seed 11 is now your default")
    assert (await _params(core, await say(core, alice, "/imagine x"))).settings.seed == 11

    for label in ("Re-roll", "Vary", "Use seed", "Delete"):
        foreign = await core.press(bob, button(result, label))
        assert foreign.is_error and foreign.text == f"You have no job {receipt.job_id}."

    queued = await core.press(alice, actions.delete(presses[0].job_id or 0))
    assert (
        queued.is_error
        and queued.text == f"Job {presses[0].job_id} is still queued; cancel it first."
    )
    busy = await core.press(alice, button(reroll, "Cancel"))
    assert busy.text == f"Job #{reroll.job_id} cancelled."
    deleted = await core.press(alice, button(result, "Delete"))
    assert deleted.remove_source
    assert deleted.text == f"Deleted job #{receipt.job_id} and its images."
    with pytest.raises(Exception, match="no job"):
        await jobs.get_job(core.db, receipt.job_id or 0)
    again = await core.press(alice, button(result, "Delete"))
    assert again.is_error


def test_nearby_seeds_move_with_each_press_and_wrap() -> None:
    assert [nearby_seed(11, press) for press in (0, 1, VARY_SPAN - 1, VARY_SPAN)] == [
        12, 13, 11 + VARY_SPAN, 12,
    ]  # fmt: skip
    assert nearby_seed(2**32 - 1, 0) == 0


async def test_bad_action_ids_are_refused(core: Core, alice: Caller) -> None:
    reply = await core.press(alice, "rr:notanumber")
    assert reply.is_error and "Unknown button action" in reply.text


async def test_cancel_running_job(core: Core, worker: FixtureWorker, alice: Caller) -> None:
    await add_face(core, worker, alice)
    receipt = await say(core, alice, "/imagine a cat")
    claimed = await jobs.claim(core.db, "w")
    assert claimed is not None and claimed.id == receipt.job_id
    reply = await say(core, alice, f"/cancel #{receipt.job_id}")
    assert reply.text == f"Job #{receipt.job_id} will stop at its next step."
    assert await jobs.heartbeat(core.db, claimed.id, "w") is True
    await FixtureWorker(core.db, worker_id="w").process(claimed)
    assert (await jobs.get_job(core.db, claimed.id)).state is JobState.CANCELLED
    [cancelled] = (await deliver(core)).for_job(claimed.id)
    assert cancelled.text == f"Job #{claimed.id} was cancelled."
