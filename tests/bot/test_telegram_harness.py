"""Helpers for the Telegram adapter tests: real update JSON, and the adapter run against the fake.

(No tests here; the name keeps it with the Telegram test files.) The fixtures at the end are
shared by importing them under their own names: ``from test_telegram_harness import server as
server``.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from bot_helpers import add_face
from bot_worker_fixture import FixtureWorker
from fake_telegram import Call, FakeTelegram

from bot.core.app import Core
from bot.core.messages import Caller
from bot.telegram.app import TelegramAdapter
from storage import jobs, users
from storage.config import Settings, TelegramSettings

# ---- real update JSON ------------------------------------------------------------------------


def user(user_id: int = 42, first_name: str = "Alice") -> dict[str, Any]:
    return {"id": user_id, "is_bot": False, "first_name": first_name, "language_code": "en"}


def private_chat(who: dict[str, Any]) -> dict[str, Any]:
    return {"id": who["id"], "type": "private", "first_name": who["first_name"]}


def group_chat(chat_id: int = -1001234567890, title: str = "Friends") -> dict[str, Any]:
    return {"id": chat_id, "type": "supergroup", "title": title}


ALICE = user(42, "Alice")
CHAT = private_chat(ALICE)  # Alice's private chat with the bot
GROUP = group_chat()


class Updates:
    """Builds real update JSON for one user in one chat and pushes it to the server."""

    def __init__(
        self,
        server: FakeTelegram,
        who: dict[str, Any],
        chat: dict[str, Any],
        sink: Callable[[dict[str, Any]], object] | None = None,
    ) -> None:
        self.server = server
        self.user = who
        self.chat = chat
        self.sink = sink or server.push  # where updates go (a webhook test collects them)
        self._query_ids = itertools.count(1)

    def message(
        self,
        text: str | None = None,
        *,
        caption: str | None = None,
        photo: bytes | None = None,
        photo_size: int | None = None,
        document: bytes | None = None,
        file_name: str = "face.png",
        mime_type: str | None = "image/png",
        document_size: int | None = None,
        reply_to: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Push a message (a command, a captioned photo or document); returns the message."""
        message: dict[str, Any] = {
            "message_id": self.server.new_message_id(),
            "date": int(time.time()),
            "chat": self.chat,
            "from": self.user,
        }
        if text is not None:
            message["text"] = text
            message["entities"] = _command_entities(text)
        if caption is not None:
            message["caption"] = caption
            message["caption_entities"] = _command_entities(caption)
        if photo is not None:
            message["photo"] = self._photo_sizes(photo, photo_size)
        if document is not None:
            size = len(document) if document_size is None else document_size
            doc = {
                "file_id": self.server.add_file(document, size=size),
                "file_unique_id": "doc-u",
                "file_name": file_name,
                "file_size": size,
            }
            if mime_type is not None:
                doc["mime_type"] = mime_type
            message["document"] = doc
        if reply_to is not None:
            message["reply_to_message"] = reply_to
        self.server.remember(message)
        self.sink({"message": message})
        return message

    def _photo_sizes(self, data: bytes, size: int | None) -> list[dict[str, Any]]:
        small = self.server.add_file(data[: len(data) // 4] or data)
        large = self.server.add_file(data, size=size)
        big = len(data) if size is None else size
        return [
            {"file_id": small, "file_unique_id": "s", "width": 90, "height": 90, "file_size": 99},
            {
                "file_id": large,
                "file_unique_id": "l",
                "width": 512,
                "height": 512,
                "file_size": big,
            },
        ]

    def press(self, message: dict[str, Any], data: str) -> str:
        """Push a callback query for a button of ``message``; returns the query id."""
        query_id = f"q{self.user['id']}-{next(self._query_ids)}"
        query = {
            "id": query_id,
            "from": self.user,
            "chat_instance": "ci-1",
            "data": data,
            "message": message,
        }
        self.sink({"callback_query": query})
        return query_id


def _command_entities(text: str) -> list[dict[str, Any]]:
    if not text.startswith("/"):
        return []
    word = text.split(maxsplit=1)[0]
    return [{"type": "bot_command", "offset": 0, "length": len(word)}]


# ---- the adapter under test ------------------------------------------------------------------


def telegram_settings(settings: Settings, server: FakeTelegram, **telegram: Any) -> Settings:
    """``settings`` with the bot pointed at the fake server and a fast delivery loop."""
    tg = TelegramSettings(token=server.token, base_url=server.base_url, **telegram)
    queue = settings.queue.model_copy(update={"poll_seconds": 0.05})
    return settings.model_copy(update={"telegram": tg, "queue": queue})


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[FakeTelegram]:
    """A started fake server, closed afterwards."""
    server = FakeTelegram()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def running_bot(
    settings: Settings, core: Core, server: FakeTelegram, **options: Any
) -> AsyncIterator[TelegramAdapter]:
    """The real adapter (real Application, AIORateLimiter) started against the fake server."""
    adapter = TelegramAdapter(telegram_settings(settings, server), core, **options)
    await adapter.start()
    try:
        yield adapter
    finally:
        await adapter.stop()


def answering(message: dict[str, Any]) -> Callable[[Call], bool]:
    """Matches calls that reply to ``message``."""

    def match(call: Call) -> bool:
        reply = call.params.get("reply_parameters") or {}
        return bool(reply.get("message_id") == message["message_id"])

    return match


async def saved_face(
    core: Core, worker: FixtureWorker, who: dict[str, Any], chat: dict[str, Any], name: str = "me"
) -> None:
    """``who`` has a saved face (made through the core before the bot starts, delivered)."""
    caller = Caller("telegram", str(who["id"]), channel_id=str(chat["id"]))
    receipt = await add_face(core, worker, caller, name)
    assert receipt.job_id is not None
    await jobs.mark_delivered(core.db, receipt.job_id)


async def consented(core: Core, who: dict[str, Any]) -> None:
    """``who`` has agreed to face storage (no face saved yet)."""
    row = await users.get_or_create_user(core.db, "telegram", str(who["id"]))
    await users.record_consent(core.db, row.id)


# ---- shared fixtures -------------------------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[FakeTelegram]:
    async with serving() as fake:
        yield fake


@pytest.fixture
async def alice(core: Core, worker: FixtureWorker, server: FakeTelegram) -> Updates:
    """Alice in her private chat, with a saved face named 'me'."""
    await saved_face(core, worker, ALICE, CHAT)
    return Updates(server, ALICE, CHAT)
