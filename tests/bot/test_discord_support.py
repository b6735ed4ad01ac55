"""Test support for the Discord adapter (no tests here): a local fake of Discord's HTTP API.

:class:`FakeDiscord` is an aiohttp server on 127.0.0.1 answering the routes the adapter uses
(login, command sync, interaction callbacks, webhook follow-ups and edits, channel messages,
DM channels, and a CDN for uploads), recording every request. discord.py's own ``Route.BASE``
is pointed at it, so the real request building of discord.py is exercised. :class:`Harness`
starts a real :class:`PulidBot` against it and feeds it raw gateway interaction payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import discord
import pytest
from aiohttp import BodyPartReader, web
from bot_helpers import astronaut_png
from bot_worker_fixture import face_embedding
from pydantic import SecretStr

from bot.core.app import Core
from bot.discord.client import DiscordAdapter, PulidBot
from bot.discord.context import InteractionBook
from storage import identities, users
from storage.config import DiscordSettings, QueueSettings, Settings

APP_ID = 900000000000000001
GUILD_ID = 900000000000000100
CHANNEL_ID = 900000000000000200
ALICE = 800000000000000001
BOB = 800000000000000002
NAMES = {ALICE: "alice", BOB: "bob"}
UPLOAD_LIMIT = 10 * 1024 * 1024
CALLBACK = r"/interactions/\d+/[^/]+/callback$"
ORIGINAL = r"/webhooks/\d+/[^/]+/messages/@original$"
FOLLOW_UP = r"/webhooks/\d+/[^/]+$"
CHANNEL_POST = r"/channels/\d+/messages$"
_ids = itertools.count(1)


def snowflake(at: dt.datetime | None = None) -> int:
    """A fresh snowflake for ``at`` (now by default), unique within the test run."""
    return discord.utils.time_snowflake(at or discord.utils.utcnow()) + next(_ids) % 4096


def dm_channel_of(user_id: int) -> int:
    return user_id + 5_000


def user_payload(user_id: int) -> dict[str, Any]:
    name = NAMES.get(user_id, f"user{user_id}")
    return {
        "id": str(user_id),
        "username": name,
        "discriminator": "0",
        "global_name": name.title(),
        "avatar": None,
    }


@dataclass
class Call:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    files: list[tuple[str, bytes]] = field(default_factory=list)
    at: float = field(default_factory=time.monotonic)
    message_id: str | None = None  # the message the request created or edited
    answered: float = 0.0  # when the fake sent its response

    @property
    def data(self) -> dict[str, Any]:
        """The message part of the body (inside ``data`` for interaction callbacks)."""
        if isinstance(self.body, dict) and isinstance(self.body.get("data"), dict):
            return self.body["data"]
        return self.body if isinstance(self.body, dict) else {}

    @property
    def flags(self) -> int:
        return int(self.data.get("flags") or 0)

    @property
    def content(self) -> str:
        return str(self.data.get("content") or "")

    @property
    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for c in _walk(self.data.get("components", [])) if "custom_id" in c]

    @property
    def labels(self) -> list[str]:
        return [
            c.get("label", "") for c in _walk(self.data.get("components", [])) if c["type"] == 2
        ]


def _walk(components: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for c in components:
        out.append(c)
        out += _walk(c.get("components", []))
        if isinstance(c.get("component"), dict):
            out += _walk([c["component"]])
    return out


class FakeDiscord:
    """Discord's HTTP API as far as the adapter uses it, recording every request."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.messages: dict[int, dict[str, Any]] = {}
        self.interactions: dict[str, dict[str, Any]] = {}  # token → payload
        self.originals: dict[str, int] = {}  # token → message id of its @original
        self.cdn: dict[str, tuple[bytes, float]] = {}
        self.forbidden_channels: set[int] = set()
        self.dead_tokens: set[str] = set()
        self.base = ""
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., Any]]] = [
            ("GET", re.compile(r"/api/v10/users/@me"), self._me),
            ("GET", re.compile(r"/api/v10/oauth2/applications/@me"), self._application),
            ("PUT", re.compile(r"/api/v10/applications/\d+(?:/guilds/\d+)?/commands"), self._sync),
            ("POST", re.compile(r"/api/v10/interactions/(\d+)/([^/]+)/callback"), self._callback),
            (
                "PATCH",
                re.compile(r"/api/v10/webhooks/\d+/([^/]+)/messages/(@original|\d+)"),
                self._edit,
            ),
            ("DELETE", re.compile(r"/api/v10/webhooks/\d+/([^/]+)/messages/@original"), self._drop),
            ("POST", re.compile(r"/api/v10/webhooks/\d+/([^/]+)"), self._follow_up),
            ("POST", re.compile(r"/api/v10/channels/(\d+)/messages"), self._post),
            ("DELETE", re.compile(r"/api/v10/channels/\d+/messages/(\d+)"), self._delete),
            ("POST", re.compile(r"/api/v10/users/@me/channels"), self._open_dm),
            ("GET", re.compile(r"/cdn/(.+)"), self._download),
        ]

    # -- lifecycle and inspection ---------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def find(self, method: str, pattern: str, since: int = 0) -> list[Call]:
        """Recorded requests (from index ``since``) whose path matches ``pattern``."""
        regex = re.compile(pattern)
        calls = self.calls[since:]
        return [c for c in calls if c.method == method and regex.search(c.path)]

    async def wait_for(
        self, method: str, pattern: str, count: int = 1, *, since: int = 0, timeout: float = 10.0
    ) -> list[Call]:
        """Wait until ``count`` matching requests were received; returns them."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: len(self.find(method, pattern, since)) >= count),
                timeout,
            )
        return self.find(method, pattern, since)

    def add_upload(self, name: str, data: bytes, delay: float = 0.0) -> str:
        """Serve ``data`` on the fake CDN (after ``delay`` seconds); returns its URL."""
        self.cdn[name] = (data, delay)
        return f"{self.base}/cdn/{name}"

    def message_for(self, call: Call) -> dict[str, Any]:
        """The message a recorded request created (as Discord would return it)."""
        assert call.message_id is not None, f"{call.method} {call.path} made no message"
        return self.messages[int(call.message_id)]

    # -- dispatch -------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body, files = await _read_body(request)
        call = Call(request.method, request.path, dict(request.query), body, files)
        response = await self._route(call)
        call.answered = time.monotonic()
        async with self._changed:  # recorded once answered, so message ids are known
            self.calls.append(call)
            self._changed.notify_all()
        return response

    async def _route(self, call: Call) -> web.StreamResponse:
        for method, regex, handler in self._routes:
            match = regex.fullmatch(call.path)
            if match and method == call.method:
                return await handler(call, *match.groups())
        return _json({"message": "404: Not Found", "code": 0}, status=404)

    # -- routes ---------------------------------------------------------------------------------

    async def _me(self, call: Call) -> web.Response:
        return _json({**user_payload(APP_ID), "username": "pulid", "bot": True})

    async def _application(self, call: Call) -> web.Response:
        return _json(
            {
                "id": str(APP_ID),
                "name": "pulid",
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": user_payload(ALICE),
                "verify_key": "00",
                "flags": 0,
            }
        )

    async def _sync(self, call: Call) -> web.Response:
        out = [
            {**c, "id": str(snowflake()), "application_id": str(APP_ID), "version": "1"}
            for c in call.body
        ]
        return _json(out)

    async def _callback(self, call: Call, interaction_id: str, token: str) -> web.Response:
        if token in self.dead_tokens:
            return _unknown_webhook()
        kind = int(call.body["type"])
        interaction = self.interactions[token]
        message = self._answer(kind, token, interaction, call)
        call.message_id = message["id"] if message else None
        resource: dict[str, Any] = {"type": kind}
        if message is not None:
            resource["message"] = message
        return _json(
            {
                "interaction": {
                    "id": interaction_id,
                    "type": interaction["type"],
                    "response_message_id": message["id"] if message else None,
                    "response_message_loading": kind == 5,
                    "response_message_ephemeral": bool(call.flags & 64),
                },
                "resource": resource,
            }
        )

    def _answer(
        self, kind: int, token: str, interaction: dict[str, Any], call: Call
    ) -> dict[str, Any] | None:
        source = interaction.get("message")
        if kind in (4, 5):
            message = self._create(int(interaction["channel_id"]), call)
            self.originals[token] = int(message["id"])
            return message
        if kind in (6, 7) and source is not None:
            self.originals[token] = int(source["id"])
            stored = self.messages.setdefault(int(source["id"]), dict(source))
            if kind == 7:
                stored.update(self._fields(call))
            return stored
        return None

    async def _edit(self, call: Call, token: str, which: str) -> web.Response:
        message_id = self.originals.get(token) if which == "@original" else int(which)
        if token in self.dead_tokens or message_id not in self.messages:
            return _unknown_webhook()
        message = self.messages[message_id]
        message.update(self._fields(call, keep=message))
        call.message_id = message["id"]
        return _json(message)

    async def _drop(self, call: Call, token: str) -> web.Response:
        if token in self.dead_tokens or token not in self.originals:
            return _unknown_webhook()
        self.messages.pop(self.originals.pop(token), None)
        return web.Response(status=204)

    async def _follow_up(self, call: Call, token: str) -> web.Response:
        if token in self.dead_tokens or token not in self.interactions:
            return _unknown_webhook()
        channel = int(self.interactions[token]["channel_id"])
        message = self._create(channel, call)
        call.message_id = message["id"]
        if call.query.get("wait") in ("true", "1", "True"):
            return _json(message)
        return web.Response(status=204)

    async def _post(self, call: Call, channel_id: str) -> web.Response:
        if int(channel_id) in self.forbidden_channels:
            return _json({"message": "Missing Access", "code": 50001}, status=403)
        message = self._create(int(channel_id), call)
        call.message_id = message["id"]
        return _json(message)

    async def _delete(self, call: Call, message_id: str) -> web.Response:
        self.messages.pop(int(message_id), None)
        return web.Response(status=204)

    async def _open_dm(self, call: Call) -> web.Response:
        user = int(call.body["recipient_id"])
        return _json(
            {"id": str(dm_channel_of(user)), "type": 1, "recipients": [user_payload(user)]}
        )

    async def _download(self, call: Call, name: str) -> web.Response:
        if name not in self.cdn:
            return web.Response(status=404)
        data, delay = self.cdn[name]
        await asyncio.sleep(delay)
        return web.Response(body=data, content_type="application/octet-stream")

    # -- messages -------------------------------------------------------------------------------

    def _create(self, channel_id: int, call: Call) -> dict[str, Any]:
        message_id = snowflake()
        message = {
            "id": str(message_id),
            "channel_id": str(channel_id),
            "author": {**user_payload(APP_ID), "username": "pulid", "bot": True},
            "timestamp": discord.utils.utcnow().isoformat(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "embeds": [],
            "pinned": False,
            "type": 0,
            **self._fields(call),
        }
        self.messages[message_id] = message
        return message

    def _fields(self, call: Call, keep: dict[str, Any] | None = None) -> dict[str, Any]:
        data, keep = call.data, keep or {}
        out = {
            "content": data.get("content", keep.get("content", "")),
            "components": data.get("components", keep.get("components", [])),
            "flags": int(data.get("flags", keep.get("flags", 0)) or 0),
            "attachments": keep.get("attachments", []),
        }
        if "attachments" in data or call.files:
            out["attachments"] = [_attachment(name, blob) for name, blob in call.files]
        return out


def _attachment(name: str, data: bytes) -> dict[str, Any]:
    aid = snowflake()
    url = f"https://cdn.example/{aid}/{name}"
    return {"id": str(aid), "filename": name, "size": len(data), "url": url, "proxy_url": url}


def _json(data: Any, status: int = 200) -> web.Response:
    """A JSON answer with Discord's exact content type (discord.py compares it verbatim)."""
    body = json.dumps(data).encode()
    return web.Response(body=body, status=status, headers={"Content-Type": "application/json"})


def _unknown_webhook() -> web.Response:
    return _json({"message": "Unknown Webhook", "code": 10015}, status=404)


async def _read_body(request: web.Request) -> tuple[Any, list[tuple[str, bytes]]]:
    if request.content_type.startswith("multipart/"):
        body: Any = None
        files = []
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            assert isinstance(part, BodyPartReader)
            blob = await part.read()
            if part.name == "payload_json":
                body = json.loads(blob)
            else:
                files.append((part.filename or "", bytes(blob)))
        return body, files
    if request.can_read_body:
        text = await request.text()
        return (json.loads(text) if text else None), []
    return None, []


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
    for c in _walk(call.data.get("components", [])):
        if c.get("type") == 2 and c.get("label") == label:
            return str(c["custom_id"])
    raise AssertionError(f"no button {label!r} in {call.labels}")
