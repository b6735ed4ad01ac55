"""The Telegram Application's life: entry point, webhook mode, rate limits, errors, secrets."""

from __future__ import annotations

import logging
import socket
from typing import Any

import httpx
import pytest
from fake_telegram import TOKEN, FakeTelegram
from test_telegram_harness import (
    ALICE,
    Updates,
    answering,
    private_chat,
    running_bot,
    telegram_settings,
    user,
)
from test_telegram_harness import server as server

from bot.core.app import Core
from bot.telegram import TelegramAdapter, start_telegram
from storage.config import ConfigError, ModerationSettings, Settings, TelegramSettings

ADMIN = user(999, "Admin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_start_telegram_runs_next_to_other_work(
    settings: Settings, core: Core, server: FakeTelegram
) -> None:
    adapter = await start_telegram(telegram_settings(settings, server), core)
    try:
        sent = Updates(server, ALICE, private_chat(ALICE)).message("/help imagine")
        answer = await server.wait_for("sendMessage", answering(sent))
    finally:
        await adapter.stop()
    assert "/imagine PROMPT" in answer.params["text"]
    assert not adapter.application.running


async def test_webhook_mode_sets_the_webhook_and_takes_updates(
    settings: Settings, core: Core, server: FakeTelegram
) -> None:
    port = free_port()
    hook = telegram_settings(
        settings, server, mode="webhook", webhook_url="https://bot.example.org/tg/hook",
        webhook_port=port, webhook_secret="s3cret-Value_1",
    )  # fmt: skip
    received: list[dict[str, Any]] = []
    alice = Updates(server, ALICE, private_chat(ALICE), sink=received.append)
    adapter = TelegramAdapter(hook, core)
    await adapter.start()
    try:
        assert server.webhook["url"] == "https://bot.example.org/tg/hook"
        assert server.webhook["secret_token"] == "s3cret-Value_1"
        assert server.calls_to("deleteWebhook") == []
        sent = alice.message("/help")
        url = f"http://127.0.0.1:{port}/tg/hook"
        async with httpx.AsyncClient() as client:
            update = {"update_id": 1, **received[0]}
            wrong = await client.post(url, json=update, headers=_secret("nope"))
            right = await client.post(url, json=update, headers=_secret("s3cret-Value_1"))
        answer = await server.wait_for("sendMessage", answering(sent))
    finally:
        await adapter.stop()
    assert (wrong.status_code, right.status_code) == (403, 200)
    assert "Commands:" in answer.params["text"]
    assert len(server.calls_to("sendMessage")) == 1


def _secret(value: str) -> dict[str, str]:
    return {"X-Telegram-Bot-Api-Secret-Token": value}


async def test_a_webhook_without_a_configured_secret_gets_a_random_one(
    settings: Settings, core: Core, server: FakeTelegram
) -> None:
    hook = telegram_settings(
        settings, server, mode="webhook", webhook_url="https://bot.example.org/",
        webhook_port=free_port(),
    )  # fmt: skip
    adapter = TelegramAdapter(hook, core)
    await adapter.start()
    await adapter.stop()
    assert len(server.webhook["secret_token"]) >= 32


async def test_the_real_rate_limiter_waits_out_a_flood_error(
    settings: Settings, core: Core, server: FakeTelegram
) -> None:
    server.fail_next("sendMessage", 429, "Too Many Requests: retry after 1", retry_after=1)
    async with running_bot(settings, core, server) as bot:
        assert type(bot.application.bot.rate_limiter).__name__ == "AIORateLimiter"
        sent = Updates(server, ALICE, private_chat(ALICE)).message("/help")
        answer = await server.wait_for("sendMessage", lambda c: c.error is None)
    first, second = server.calls_to("sendMessage")
    assert first.error and first.error.startswith("Too Many Requests")
    assert (
        second is answer and answer.params["reply_parameters"]["message_id"] == sent["message_id"]
    )


async def test_errors_are_logged_and_told_to_the_admin_without_the_token(
    settings: Settings, core: Core, server: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    admins = ModerationSettings(admin_ids=["telegram:999", "discord:5"])
    with_admin = settings.model_copy(update={"moderation": admins})
    server.remember({"message_id": 1, "date": 0, "chat": private_chat(ADMIN), "from": ADMIN})
    caplog.set_level(logging.DEBUG)
    async with running_bot(with_admin, core, server):
        server.fail_next("sendMessage", 400, f"Bad Request: broken near {TOKEN}")
        Updates(server, ALICE, private_chat(ALICE)).message("/help")
        alert = await server.wait_for("sendMessage", lambda c: c.params["chat_id"] == 999)
    assert "BadRequest" in alert.params["text"] and "<token>" in alert.params["text"]
    for variant in (TOKEN, TOKEN.lower()):  # the error description comes capitalised
        assert variant not in alert.params["text"]
        assert variant not in caplog.text, "… with the token masked, exception text included"
    assert "telegram update" in caplog.text and "failed" in caplog.text
    assert "HTTP Request" in caplog.text, "httpx request lines are logged …"
    assert "<token>" in caplog.text


@pytest.mark.parametrize(
    ("telegram", "message"),
    [
        ({}, "telegram.token is not set"),
        ({"token": TOKEN, "mode": "webhook"}, "webhook_url is required"),
        ({"token": TOKEN, "base_url": "http://127.0.0.1:8081/api"}, "must end with /bot"),
    ],
)
def test_configuration_errors_are_clear(
    settings: Settings, core: Core, telegram: dict[str, Any], message: str
) -> None:
    bad = settings.model_copy(update={"telegram": TelegramSettings(**telegram)})
    with pytest.raises(ConfigError, match=message):
        TelegramAdapter(bad, core)
