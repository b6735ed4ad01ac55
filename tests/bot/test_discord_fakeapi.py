"""A local fake of Discord's HTTP API (and CDN) on 127.0.0.1 for the Discord adapter tests.

:class:`FakeDiscord` answers the routes the adapter uses — login, command sync, interaction
callbacks, webhook follow-ups and edits, channel messages and their edits, DM channels, and a
CDN for uploads — and records every request as a :class:`Call`. It holds no tests.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import discord
from aiohttp import BodyPartReader, web

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
CHANNEL_EDIT = r"/channels/\d+/messages/\d+$"
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
        return [c["custom_id"] for c in walk(self.data.get("components", [])) if "custom_id" in c]

    @property
    def labels(self) -> list[str]:
        return [c.get("label", "") for c in walk(self.data.get("components", [])) if c["type"] == 2]


Filter = Callable[["Call"], bool]


def walk(components: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for c in components:
        out.append(c)
        out += walk(c.get("components", []))
        if isinstance(c.get("component"), dict):
            out += walk([c["component"]])
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
            ("PATCH", re.compile(r"/api/v10/channels/(\d+)/messages/(\d+)"), self._edit_posted),
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

    def find(
        self, method: str, pattern: str, since: int = 0, where: Filter | None = None
    ) -> list[Call]:
        """Recorded requests (from index ``since``) whose path matches, and ``where`` holds."""
        regex = re.compile(pattern)
        calls = [c for c in self.calls[since:] if c.method == method and regex.search(c.path)]
        return [c for c in calls if where is None or where(c)]

    async def wait_for(
        self,
        method: str,
        pattern: str,
        count: int = 1,
        *,
        since: int = 0,
        where: Filter | None = None,
        timeout: float = 10.0,
    ) -> list[Call]:
        """Wait until ``count`` matching requests were received; returns them."""

        def enough() -> bool:
            return len(self.find(method, pattern, since, where)) >= count

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(enough), timeout)
        return self.find(method, pattern, since, where)

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

    async def _edit_posted(self, call: Call, channel_id: str, message_id: str) -> web.Response:
        """PATCH /channels/{channel}/messages/{message}: the bot edits one of its messages."""
        if int(channel_id) in self.forbidden_channels:
            return _json({"message": "Missing Access", "code": 50001}, status=403)
        message = self.messages.get(int(message_id))
        if message is None or message["channel_id"] != channel_id:
            return _json({"message": "Unknown Message", "code": 10008}, status=404)
        message.update(self._fields(call, keep=message))
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
