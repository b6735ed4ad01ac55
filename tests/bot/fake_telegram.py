"""A fake Telegram Bot API server on 127.0.0.1 for the Telegram adapter tests (aiohttp).

It speaks the Bot API's HTTP shape: ``POST /bot<token>/<method>`` with form or multipart fields,
answered ``{"ok": true, "result": …}``; ``GET /file/bot<token>/<path>`` serves files the test
registered. Every call is recorded with its decoded parameters and uploaded files, and the limits
the real server enforces are enforced here too (callback data ≤ 64 bytes, captions ≤ 1024, texts
≤ 4096, albums of 2–10, downloads ≤ 20 MB, one answer per callback query, edits that change
something), so a test fails the way production would. ``getUpdates`` long-polls the updates a test
pushed with :meth:`FakeTelegram.push`, built by :class:`Updates` as real update JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TOKEN = "123456:TEST-secret-token-value"
BOT_USER = {
    "id": 123456,
    "is_bot": True,
    "first_name": "Pulid",
    "username": "PulidTestBot",
    "can_join_groups": True,
    "can_read_all_group_messages": False,
    "supports_inline_queries": False,
}
DOWNLOAD_CAP = 20 * 1024 * 1024
#: Fields sent as plain strings that must not be JSON-decoded (a text "42" stays a string).
STRING_FIELDS = {"text", "caption", "callback_query_id", "file_id", "url", "secret_token", "data"}


class ApiError(Exception):
    """An error answer: HTTP status, Telegram's description, optional retry_after."""

    def __init__(self, status: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.retry_after = retry_after


@dataclass
class Call:
    """One recorded Bot API call."""

    method: str
    params: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    result: Any = None  # what the server answered
    error: str | None = None  # or the error it answered

    def markup_data(self) -> list[str]:
        """Every callback_data of the inline keyboard sent with this call."""
        rows = (self.params.get("reply_markup") or {}).get("inline_keyboard", [])
        return [b["callback_data"] for row in rows for b in row if "callback_data" in b]

    def button(self, label: str) -> str:
        """The callback_data of the button with this label."""
        rows = (self.params.get("reply_markup") or {}).get("inline_keyboard", [])
        for b in (b for row in rows for b in row):
            if b["text"] == label:
                return str(b["callback_data"])
        raise AssertionError(f"no button {label!r} in {self.params.get('reply_markup')}")


class FakeTelegram:
    """The fake server: start it, point the Application at ``base_url``/``file_url``."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.calls: list[Call] = []
        self.commands: list[dict[str, Any]] = []
        self.webhook: dict[str, Any] = {}
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(1000)
        self._file_ids = itertools.count(1)
        self._files: dict[str, tuple[bytes, int]] = {}
        self._messages: dict[tuple[int, int], dict[str, Any]] = {}
        self._chats: dict[int, dict[str, Any]] = {}
        self._answered: set[str] = set()
        self._failures: dict[str, list[ApiError]] = {}
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._closing = False
        self.port = 0

    # ---- life -----------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        self._closing = True
        await self._notify()  # end pending long polls
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def file_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/file/bot"

    # ---- what a test feeds in ---------------------------------------------------------------

    def push(self, update: dict[str, Any]) -> int:
        """Queue an update for getUpdates; returns its update_id."""
        update = {"update_id": next(self._update_ids), **update}
        self._updates.append(update)
        asyncio.get_running_loop().create_task(self._notify())
        return int(update["update_id"])

    def add_file(self, data: bytes, *, size: int | None = None) -> str:
        """Register a downloadable file (``size`` may claim more than ``data`` holds)."""
        file_id = f"file-{next(self._file_ids)}"
        self._files[file_id] = (data, len(data) if size is None else size)
        return file_id

    def fail_next(
        self,
        method: str,
        status: int = 400,
        description: str = "Bad Request: test failure",
        retry_after: int | None = None,
    ) -> None:
        """Make the next call of ``method`` fail with this error."""
        self._failures.setdefault(method, []).append(ApiError(status, description, retry_after))

    def new_message_id(self) -> int:
        return next(self._message_ids)

    def remember(self, message: dict[str, Any]) -> None:
        """Store a message (an incoming one, so the bot can reply to it)."""
        chat = message["chat"]
        self._chats[int(chat["id"])] = chat
        self._messages[(int(chat["id"]), int(message["message_id"]))] = message

    def message(self, chat_id: int, message_id: int) -> dict[str, Any]:
        """A message as the server holds it now (after edits)."""
        return self._messages[(chat_id, message_id)]

    def exists(self, chat_id: int, message_id: int) -> bool:
        return (chat_id, message_id) in self._messages

    # ---- what a test reads back -------------------------------------------------------------

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def methods(self) -> list[str]:
        return [c.method for c in self.calls if c.method not in ("getUpdates", "getMe")]

    async def wait_for(
        self,
        method: str,
        predicate: Callable[[Call], bool] | None = None,
        *,
        count: int = 1,
        timeout: float = 10.0,
    ) -> Call:
        """The ``count``-th recorded call of ``method`` matching ``predicate`` (waits for it)."""

        def found() -> list[Call]:
            return [c for c in self.calls_to(method) if predicate is None or predicate(c)]

        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: len(found()) >= count), timeout
                )
            except TimeoutError:
                seen = [(c.method, c.params) for c in self.calls if c.method != "getUpdates"]
                raise AssertionError(
                    f"no {method} call (x{count}) within {timeout}s: {seen}"
                ) from None
        return found()[count - 1]

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ---- HTTP --------------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(ApiError(401, "Unauthorized"))
        method = request.match_info["method"]
        params, files = await _read_params(request)
        call = Call(method, params, files)
        try:
            call.result = await self._handle(call)
        except ApiError as exc:
            call.error = exc.description
            return _error(exc)
        finally:
            if method != "getUpdates":
                self.calls.append(call)
                await self._notify()
        return web.json_response({"ok": True, "result": call.result})

    async def _handle(self, call: Call) -> Any:
        failures = self._failures.get(call.method)
        if failures:
            raise failures.pop(0)
        handler = getattr(self, f"_m_{call.method}", None)
        if handler is None:
            raise ApiError(404, "Not Found: method not found")
        return await handler(call.params, call.files)

    async def _download(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        path = request.match_info["path"]
        self.calls.append(Call("download", {"path": path}))
        await self._notify()
        file_id = path.rpartition("/")[2]
        if file_id not in self._files:
            return web.Response(status=404)
        return web.Response(body=self._files[file_id][0])

    # ---- methods -------------------------------------------------------------------------

    async def _m_getMe(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        return BOT_USER

    async def _m_getUpdates(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        offset = int(p.get("offset") or 0)
        self._updates = [u for u in self._updates if u["update_id"] >= offset]
        timeout = float(p.get("timeout") or 0)
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: bool(self._updates) or self._closing), timeout
                )
        return self._updates[: int(p.get("limit") or 100)]

    async def _m_deleteWebhook(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        self.webhook = {}
        return True

    async def _m_setWebhook(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        self.webhook = dict(p)
        return True

    async def _m_setMyCommands(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        for c in p["commands"]:
            name, description = c["command"], c["description"]
            if not (1 <= len(name) <= 32 and name.islower() and name.replace("_", "").isalnum()):
                raise ApiError(400, "Bad Request: BOT_COMMAND_INVALID")
            if not 1 <= len(description) <= 256:
                raise ApiError(400, "Bad Request: BOT_COMMAND_DESCRIPTION_INVALID")
        self.commands = list(p["commands"])
        return True

    async def _m_sendMessage(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        _check_text(p.get("text"), 4096, "message text")
        return self._send(p, text=p["text"])

    async def _m_sendPhoto(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        _check_caption(p)
        if "photo" not in f:
            raise ApiError(400, "Bad Request: there is no photo in the request")
        return self._send(p, photo=[self._photo_size(f["photo"])], caption=p.get("caption"))

    async def _m_sendDocument(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        _check_caption(p)
        if "document" not in f:
            raise ApiError(400, "Bad Request: there is no document in the request")
        doc = {"file_id": self.add_file(f["document"]), "file_unique_id": "u", "file_size": 1}
        return self._send(p, document=doc, caption=p.get("caption"))

    async def _m_sendMediaGroup(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        media = p["media"]
        if not 2 <= len(media) <= 10:
            raise ApiError(400, "Bad Request: wrong number of media in the album")
        group = f"album-{next(self._file_ids)}"
        out = []
        for item in media:
            _check_caption(item)
            data = f.get(str(item["media"]).removeprefix("attach://"))
            if data is None:
                raise ApiError(400, "Bad Request: wrong file identifier/HTTP URL specified")
            kind = {"photo": [self._photo_size(data)]} if item["type"] == "photo" else {}
            out.append(self._send(p, caption=item.get("caption"), media_group_id=group, **kind))
        return out

    async def _m_editMessageText(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        _check_text(p.get("text"), 4096, "message text")
        return self._edit(p, text=p["text"])

    async def _m_editMessageReplyMarkup(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        return self._edit(p)

    async def _m_deleteMessage(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        key = (int(p["chat_id"]), int(p["message_id"]))
        if self._messages.pop(key, None) is None:
            raise ApiError(400, "Bad Request: message to delete not found")
        return True

    async def _m_deleteMessages(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        for message_id in p["message_ids"]:
            self._messages.pop((int(p["chat_id"]), int(message_id)), None)
        return True

    async def _m_answerCallbackQuery(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        query_id = str(p["callback_query_id"])
        if query_id in self._answered:
            raise ApiError(400, "Bad Request: query is too old and response timeout expired")
        if len(str(p.get("text") or "")) > 200:
            raise ApiError(400, "Bad Request: MESSAGE_TOO_LONG")
        self._answered.add(query_id)
        return True

    async def _m_getFile(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        file_id = str(p["file_id"])
        if file_id not in self._files:
            raise ApiError(400, "Bad Request: invalid file_id")
        size = self._files[file_id][1]
        if size > DOWNLOAD_CAP:
            raise ApiError(400, "Bad Request: file is too big")
        return {
            "file_id": file_id,
            "file_unique_id": f"u{file_id}",
            "file_size": size,
            "file_path": f"documents/{file_id}",
        }

    # ---- message store ---------------------------------------------------------------------

    def _chat(self, chat_id: Any) -> dict[str, Any]:
        cid = int(chat_id)
        if cid in self._chats:
            return self._chats[cid]
        if cid > 0:
            raise ApiError(403, "Forbidden: bot can't initiate conversation with a user")
        raise ApiError(400, "Bad Request: chat not found")

    def _send(self, p: dict[str, Any], **content: Any) -> dict[str, Any]:
        chat = self._chat(p["chat_id"])
        _check_markup(p.get("reply_markup"))
        reply = p.get("reply_parameters") or {}
        missing = reply and not self.exists(int(chat["id"]), int(reply["message_id"]))
        if missing and not reply.get("allow_sending_without_reply"):
            raise ApiError(400, "Bad Request: message to be replied not found")
        message = {
            "message_id": self.new_message_id(),
            "date": int(time.time()),
            "chat": chat,
            "from": BOT_USER,
            **{k: v for k, v in content.items() if v is not None},
        }
        if p.get("reply_markup"):
            message["reply_markup"] = p["reply_markup"]
        if p.get("message_thread_id"):
            message["message_thread_id"] = p["message_thread_id"]
        self.remember(message)
        return message

    def _edit(self, p: dict[str, Any], **content: Any) -> dict[str, Any]:
        key = (int(p["chat_id"]), int(p["message_id"]))
        old = self._messages.get(key)
        if old is None:
            raise ApiError(400, "Bad Request: message to edit not found")
        _check_markup(p.get("reply_markup"))
        new = {**old, **content}
        new.pop("reply_markup", None)
        if p.get("reply_markup"):
            new["reply_markup"] = p["reply_markup"]
        if new == old:
            raise ApiError(400, "Bad Request: message is not modified")
        self._messages[key] = new
        return new

    def _photo_size(self, data: bytes) -> dict[str, Any]:
        file_id = self.add_file(data)
        return {
            "file_id": file_id,
            "file_unique_id": f"u{file_id}",
            "width": 32,
            "height": 32,
            "file_size": len(data),
        }


async def _read_params(request: web.Request) -> tuple[dict[str, Any], dict[str, bytes]]:
    params: dict[str, Any] = {}
    files: dict[str, bytes] = {}
    form = await request.post()
    for name, value in form.items():
        if isinstance(value, web.FileField):
            files[name] = value.file.read()
        elif name in STRING_FIELDS:
            params[name] = value
        else:
            params[name] = _decode(str(value))
    return params, files


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _error(exc: ApiError) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": exc.status, "description": exc.description}
    if exc.retry_after is not None:
        body["parameters"] = {"retry_after": exc.retry_after}
    return web.json_response(body, status=exc.status)


def _check_text(text: Any, limit: int, what: str) -> None:
    if not text or not str(text).strip():
        raise ApiError(400, f"Bad Request: {what} is empty")
    if len(str(text)) > limit:
        raise ApiError(400, f"Bad Request: {what} is too long")


def _check_caption(p: dict[str, Any]) -> None:
    if len(str(p.get("caption") or "")) > 1024:
        raise ApiError(400, "Bad Request: message caption is too long")


def _check_markup(markup: Any) -> None:
    for row in (markup or {}).get("inline_keyboard", []):
        for button in row:
            data = button.get("callback_data")
            if data is not None and not 1 <= len(str(data).encode()) <= 64:
                raise ApiError(400, "Bad Request: BUTTON_DATA_INVALID")
