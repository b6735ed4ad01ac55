"""Telegram text commands through the real Application, against the fake Bot API server."""

from __future__ import annotations

from bot_worker_fixture import FixtureWorker
from fake_telegram import BOT_USER, FakeTelegram
from test_telegram_harness import (
    ALICE,
    GROUP,
    Updates,
    answering,
    private_chat,
    running_bot,
    saved_face,
)
from test_telegram_harness import alice as alice
from test_telegram_harness import server as server

from bot.core.app import Core
from bot.telegram.handlers import MENU, TELEGRAM_HELP
from storage import jobs
from storage.config import Settings
from storage.schemas import BatchParams, CompareParams, ImagineParams, JobState


async def test_start_publishes_the_menu_and_polls(
    settings: Settings, core: Core, server: FakeTelegram
) -> None:
    async with running_bot(settings, core, server) as bot:
        assert bot.application.bot.username == BOT_USER["username"]
        [menu] = server.calls_to("setMyCommands")
        assert [c["command"] for c in menu.params["commands"]] == [name for name, _ in MENU]
        assert server.calls_to("deleteWebhook"), "polling mode clears any webhook first"


async def test_help_in_a_private_chat_answers_the_command(
    settings: Settings, core: Core, server: FakeTelegram
) -> None:
    alice = Updates(server, ALICE, private_chat(ALICE))
    async with running_bot(settings, core, server):
        command = alice.message("/help")
        call = await server.wait_for("sendMessage")
    assert call.params["chat_id"] == ALICE["id"]
    assert call.params["reply_parameters"]["message_id"] == command["message_id"]
    assert "/imagine PROMPT" in call.params["text"]
    assert TELEGRAM_HELP in call.params["text"]


async def test_imagine_addressed_to_the_bot_in_a_group_is_queued(
    settings: Settings, core: Core, worker: FixtureWorker, server: FakeTelegram
) -> None:
    await saved_face(core, worker, ALICE, GROUP)
    alice = Updates(server, ALICE, GROUP)
    async with running_bot(settings, core, server):
        alice.message("/imagine@OtherBot a cat")  # another bot's command: ignored
        alice.message("/imagine@PulidTestBot a cat on the moon --seed 7")
        receipt = await server.wait_for("sendMessage")
    assert "queued" in receipt.params["text"]
    assert receipt.params["chat_id"] == GROUP["id"]
    [job] = [j for j in await jobs.list_jobs(core.db, limit=10) if j.kind.value == "imagine"]
    assert isinstance(job.params, ImagineParams)
    assert job.params.prompt == "a cat on the moon" and job.params.settings.seed == 7
    assert job.delivery is not None and job.delivery.channel_id == str(GROUP["id"])
    assert receipt.button("Cancel") == f"cx:{job.id}"
    assert len(server.calls_to("sendMessage")) == 1


async def test_batch_takes_one_prompt_per_following_line(
    settings: Settings, core: Core, server: FakeTelegram, alice: Updates
) -> None:
    async with running_bot(settings, core, server):
        alice.message("/batch me\na knight --steps 4\na pirate\na chef")
        await server.wait_for("sendMessage", lambda c: "queued" in c.params["text"])
        alice.message("/compare")
        await server.wait_for("sendMessage", lambda c: "(compare) queued" in c.params["text"])
    queued = await jobs.list_jobs(core.db, states=[JobState.QUEUED], limit=10)
    batch, compare = sorted(queued, key=lambda j: j.id)
    assert isinstance(batch.params, BatchParams) and isinstance(compare.params, CompareParams)
    assert batch.params.prompts == ["a knight", "a pirate", "a chef"]
    assert batch.params.settings.steps == 4


async def test_jobs_cancel_and_settings(
    settings: Settings, core: Core, server: FakeTelegram, alice: Updates
) -> None:
    async def say(text: str) -> str:
        sent = alice.message(text)
        answer = await server.wait_for("sendMessage", answering(sent))
        return str(answer.params["text"])

    async with running_bot(settings, core, server):
        assert "queued" in await say("/imagine a lighthouse")
        assert "queued, position 1" in await say("/jobs")
        [job] = await jobs.list_jobs(core.db, states=[JobState.QUEUED], limit=5)
        assert f"Job #{job.id} cancelled" in await say(f"/cancel {job.id}")
        assert "Saved. Your defaults" in await say("/settings --steps 12")
        assert "--steps 12" in await say("/settings")


async def test_unknown_commands_answered_in_private_ignored_in_groups(
    settings: Settings, core: Core, server: FakeTelegram
) -> None:
    in_group = Updates(server, ALICE, GROUP)
    in_private = Updates(server, ALICE, private_chat(ALICE))
    async with running_bot(settings, core, server):
        in_group.message("/frobnicate")
        in_private.message("/frobnicate")
        call = await server.wait_for("sendMessage")
        in_private.message("/help face")
        await server.wait_for("sendMessage", count=2)
    assert call.params["chat_id"] == ALICE["id"]
    assert "Unknown command /frobnicate" in call.params["text"]
    assert all(c.params["chat_id"] == ALICE["id"] for c in server.calls_to("sendMessage"))


async def test_forget_erases_after_confirmation(
    settings: Settings, core: Core, server: FakeTelegram, alice: Updates
) -> None:
    async with running_bot(settings, core, server):
        alice.message("/forget")
        ask = await server.wait_for("sendMessage")
        question = ask.result
        alice.press(question, ask.button("Erase everything"))
        answer = await server.wait_for("answerCallbackQuery")
        await server.wait_for("deleteMessages")
    assert "Erased 1 face" in answer.params["text"]
    assert not server.exists(ALICE["id"], question["message_id"])
