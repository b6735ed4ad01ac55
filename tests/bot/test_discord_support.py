"""Test support for the Discord adapter (no tests here): payloads and the bot under test.

:class:`Harness` starts a real :class:`PulidBot` whose discord.py ``Route.BASE`` points at the
local :class:`~test_discord_fakeapi.FakeDiscord`, so discord.py's own request building is
exercised, and feeds it raw gateway interaction payloads as the gateway would.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import discord
import pytest
from bot_helpers import astronaut_png
from bot_worker_fixture import face_embedding
from pydantic import SecretStr
from test_discord_fakeapi import (
    ALICE,
    APP_ID,
    CHANNEL_ID,
    GUILD_ID,
    UPLOAD_LIMIT,
    Call,
    FakeDiscord,
    dm_channel_of,
    snowflake,
    user_payload,
    walk,
)

from bot.core.app import Core
from bot.discord.client import DiscordAdapter, PulidBot
from bot.discord.context import InteractionBook
from storage import identities, jobs, users
from storage.config import DiscordSettings, QueueSettings, Settings

# -- interaction payloads ---------------------------------------------------------------------


def option(name: str, value: Any, *, kind: int | None = None, focused: bool = False) -> dict:
    """One command option; the type follows the value (str 3, int 4, bool 5) unless given."""
    if kind is None:
        kind = 5 if isinstance(value, bool) else 4 if isinstance(value, int) else 3
    out: dict[str, Any] = {"name": name, "type": kind, "value": value}
    if focused:
        out["focused"] = True
    return out


def upload_option(name: str, attachment_id: int) -> dict[str, Any]:
    return {"name": name, "type": 11, "value": str(attachment_id)}


def upload(url: str, filename: str, size: int) -> dict[str, Any]:
    """The resolved attachment object of an uploaded file."""
    aid = snowflake()
    return {
        "id": str(aid),
        "filename": filename,
        "size": size,
        "url": url,
        "proxy_url": url,
        "content_type": "image/png",
    }


def interaction_payload(
    kind: int,
    data: dict[str, Any],
    *,
    user: int = ALICE,
    dm: bool = False,
    message: dict[str, Any] | None = None,
    at: dt.datetime | None = None,
    attachment_limit: int = UPLOAD_LIMIT,
) -> dict[str, Any]:
    """A gateway INTERACTION_CREATE payload, in a server channel or (``dm``) a bot DM."""
    iid = snowflake(at)
    payload: dict[str, Any] = {
        "id": str(iid),
        "application_id": str(APP_ID),
        "type": kind,
        "token": f"token-{iid}",
        "version": 1,
        "data": data,
        "locale": "en-US",
        "attachment_size_limit": attachment_limit,
        "entitlements": [],
        "app_permissions": str(discord.Permissions.all().value),
        "authorizing_integration_owners": {"0": "0" if dm else str(GUILD_ID)},
        "context": 1 if dm else 0,
    }
    if message is not None:
        payload["message"] = message
    if dm:
        channel = dm_channel_of(user)
        payload["user"] = user_payload(user)
        payload["channel_id"] = str(channel)
        payload["channel"] = {"id": str(channel), "type": 1, "recipients": [user_payload(user)]}
        return payload
    payload["guild_id"] = str(GUILD_ID)
    payload["guild_locale"] = "en-US"
    payload["channel_id"] = str(CHANNEL_ID)
    payload["channel"] = _text_channel()
    payload["member"] = {
        "user": user_payload(user),
        "roles": [],
        "joined_at": "2024-01-01T00:00:00+00:00",
        "deaf": False,
        "mute": False,
        "flags": 0,
        "permissions": str(discord.Permissions.general().value),
    }
    return payload


def _text_channel() -> dict[str, Any]:
    return {
        "id": str(CHANNEL_ID),
        "type": 0,
        "guild_id": str(GUILD_ID),
        "name": "general",
        "position": 0,
        "permission_overwrites": [],
        "nsfw": False,
        "parent_id": None,
        "rate_limit_per_user": 0,
        "flags": 0,
    }


def command_data(
    name: str,
    options: list[dict[str, Any]] = (),  # type: ignore[assignment]
    *,
    sub: str | None = None,
    uploads: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    """The ``data`` of a slash command (``sub``: a subcommand of the group ``name``)."""
    opts = list(options)
    if sub is not None:
        opts = [{"name": sub, "type": 1, "options": opts}]
    data: dict[str, Any] = {"id": str(snowflake()), "name": name, "type": 1, "options": opts}
    if uploads:
        data["resolved"] = {"attachments": {u["id"]: u for u in uploads}}
    return data


def press_data(custom_id: str) -> dict[str, Any]:
    return {"custom_id": custom_id, "component_type": 2}


def form_data(modal: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    """A submission of the form the bot opened; ``values`` by the start of each field's label."""
    answers = []
    for c in modal["components"]:
        if c.get("type") != 18:  # a label around one input
            raise AssertionError(f"unexpected form component {c}")
        value = next(v for label, v in values.items() if c["label"].startswith(label))
        inner = {"type": c["component"]["type"], "custom_id": c["component"]["custom_id"]}
        answers.append({"type": 18, "component": {**inner, "value": value}})
    return {"custom_id": modal["custom_id"], "components": answers}


# -- the bot under test -------------------------------------------------------------------------


def discord_settings(settings: Settings, **discord_values: Any) -> Settings:
    """``settings`` with a token, fast delivery polling and the given discord values."""
    return settings.model_copy(
        update={
            "discord": DiscordSettings(token=SecretStr("test-token"), **discord_values),
            "queue": QueueSettings(poll_seconds=0.05),
        }
    )


class Harness:
    """A real PulidBot logged in to the fake; ``restart`` replaces it with a fresh instance."""

    def __init__(self, fake: FakeDiscord, settings: Settings, core: Core) -> None:
        self.fake = fake
        self.settings = settings
        self.core = core
        self.now: dt.datetime | None = None  # set to move the bot's clock
        self.answer_within = 1.0
        self.adapter: DiscordAdapter | None = None

    @property
    def bot(self) -> PulidBot:
        assert self.adapter is not None
        return self.adapter.bot

    def clock(self) -> dt.datetime:
        return self.now or discord.utils.utcnow()

    async def start(self) -> PulidBot:
        book = InteractionBook(clock=self.clock)
        bot = PulidBot(
            self.settings,
            self.core,
            book=book,
            answer_within=self.answer_within,
            progress_seconds=0.0,
        )
        self.adapter = DiscordAdapter(self.settings, self.core, bot=bot)
        await self.adapter.login()
        return bot

    async def restart(self) -> PulidBot:
        """Close this bot and start a new instance (empty memory, same database)."""
        await self.stop()
        return await self.start()

    async def stop(self) -> None:
        if self.adapter is not None:
            await self.adapter.stop()
            self.adapter = None

    def send(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Deliver an INTERACTION_CREATE event to the bot as the gateway would."""
        self.fake.interactions[payload["token"]] = payload
        self.bot._connection.parse_interaction_create(payload)  # type: ignore[arg-type]
        return payload

    async def callback(self, payload: dict[str, Any]) -> Call:
        """The interaction response the bot sent for ``payload``."""
        [call] = await self.fake.wait_for("POST", rf"/interactions/{payload['id']}/[^/]+/callback$")
        return call

    def command(self, name: str, *options: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Send a slash command (``sub=``, ``uploads=`` go to the data; ``user``/``dm`` too)."""
        data_keys = {k: kwargs.pop(k) for k in ("sub", "uploads") if k in kwargs}
        return self.send(
            interaction_payload(2, command_data(name, list(options), **data_keys), **kwargs)
        )

    def press(self, message: dict[str, Any], custom_id: str, **kwargs: Any) -> dict[str, Any]:
        """Press a button of a message the bot sent."""
        return self.send(interaction_payload(3, press_data(custom_id), message=message, **kwargs))


@contextlib.asynccontextmanager
async def harness(
    settings: Settings, core: Core, monkeypatch: pytest.MonkeyPatch, **discord_values: Any
) -> AsyncIterator[Harness]:
    """A fake Discord on 127.0.0.1 and a bot logged in to it."""
    fake = FakeDiscord()
    await fake.start()
    monkeypatch.setattr(discord.http.Route, "BASE", f"{fake.base}/api/v10")
    h = Harness(fake, discord_settings(settings, **discord_values), core)
    try:
        await h.start()
        yield h
    finally:
        await h.stop()
        await fake.stop()


@pytest.fixture
async def h(
    settings: Settings, core: Core, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Harness]:
    """The bot under test, logged in to a fresh fake.

    Test modules share it by importing it under its own name: ``from test_discord_support
    import h as h``.
    """
    async with harness(settings, core, monkeypatch) as running:
        yield running


async def save_faces(core: Core, user: int, *names: str) -> None:
    """Faces saved straight into storage (consent given), as finished face jobs leave them."""
    record = await users.get_or_create_user(core.db, "discord", str(user))
    await users.record_consent(core.db, record.id)
    for i, name in enumerate(names):
        await identities.save_identity(core.db, record.id, name, face_embedding(i))


def photo_upload(h: Harness, delay: float = 0.0) -> dict[str, Any]:
    data = astronaut_png()
    return upload(h.fake.add_upload("astronaut.png", data, delay), "astronaut.png", len(data))


def face_add(
    h: Harness, name: str, *extra: dict[str, Any], delay: float = 0.0, **kwargs: Any
) -> dict[str, Any]:
    image = photo_upload(h, delay)
    options = [option("name", name), upload_option("image", int(image["id"])), *extra]
    return h.command("face", *options, sub="add", uploads=[image], **kwargs)


def button_id(call: Call, label: str) -> str:
    """The custom_id of the button labelled ``label`` in a recorded message."""
    for c in walk(call.data.get("components", [])):
        if c.get("type") == 2 and c.get("label") == label:
            return str(c["custom_id"])
    raise AssertionError(f"no button {label!r} in {call.labels}")


async def stored_receipt(core: Core, job_id: int, timeout: float = 5.0) -> str:
    """The receipt reference the bot stores with a job once the receipt is sent (polled)."""
    async with asyncio.timeout(timeout):
        while True:
            delivery = (await jobs.get_job(core.db, job_id)).delivery
            if delivery is not None and "receipt" in delivery.extra:
                return delivery.extra["receipt"]
            await asyncio.sleep(0.02)
