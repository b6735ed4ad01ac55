"""Update handlers: each parses the update, makes one core call and sends the reply.

:meth:`Handlers.register` is the one place handlers are added. Commands arrive as text
(``/imagine@Bot a cat``), as the caption of a photo or file, or as a reply to one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import replace

from telegram import BotCommand, CallbackQuery, MaybeInaccessibleMessage, Message, Update
from telegram.constants import ChatType
from telegram.error import BadRequest, Forbidden, TelegramError
from telegram.ext import (
    Application,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from bot.core import parsing
from bot.core.app import Core
from bot.core.base import INTERNAL
from bot.core.dispatch import Dispatcher
from bot.core.errors import BadInput
from bot.core.messages import Caller, Reply, error_reply
from bot.telegram import keyboards, presses
from bot.telegram.redact import redact_token
from bot.telegram.replies import Sender, Target, message_ref
from bot.telegram.uploads import TIP, Need, check_upload, download, find_upload, need_of
from storage.config import Settings

log = logging.getLogger(__name__)

PLATFORM = "telegram"
MENU = (
    ("face", "Save a face: /face add NAME with a photo; list, show, default, delete, export"),
    ("imagine", "One image of your face: /imagine PROMPT [--face NAME --ar 3:4 --seed 7]"),
    ("batch", "One image per prompt: /batch [NAME], then one prompt per line"),
    ("compare", "Your face across prompts, one grid with likeness scores"),
    ("jobs", "Your queue and recent jobs"),
    ("cancel", "Cancel a job: /cancel ID"),
    ("settings", "Show or save your defaults: /settings --ar 3:4 --steps 20"),
    ("forget", "Erase all your faces, jobs and images"),
    ("help", "How to use this bot: /help [face|imagine|params|batch|compare]"),
)
COMMANDS = (*(name for name, _ in MENU), "start", "ban", "unban")
TELEGRAM_HELP = (
    "On Telegram: send the photo with /face add NAME as its caption, or reply to a photo "
    "with the command. Sent as a file (uncompressed), it gives a better likeness."
)
ALERT_EVERY = 60.0
_CAPTION_COMMAND = r"^/[A-Za-z_]+(@\w+)?(\s|$)"


def menu() -> list[BotCommand]:
    """The command menu shown by Telegram clients (setMyCommands)."""
    return [BotCommand(name, description) for name, description in MENU]


def caller_of(message: Message) -> Caller:
    """The core's view of who sent a message and where its answers go."""
    assert message.from_user is not None
    return Caller(
        PLATFORM,
        str(message.from_user.id),
        channel_id=str(message.chat_id),
        message_ref=message_ref(message),
        display_name=message.from_user.full_name,
    )


def addressed_to_me(text: str, username: str, private: bool) -> bool:
    """A caption command is ours: not ``@another_bot``, and known (or in a private chat)."""
    word = text.split(maxsplit=1)[0] if text.split() else ""
    name, _, target = word.lstrip("/").partition("@")
    if target and target.lower() != username.lower():
        return False
    return private or name.lower() in COMMANDS


def telegram_admins(admin_ids: Sequence[str]) -> list[int]:
    """The chat ids of admins written ``telegram:<user id>``."""
    ids = [a.partition(":")[2] for a in admin_ids if a.startswith(f"{PLATFORM}:")]
    return [int(i) for i in ids if i.lstrip("-").isdigit()]


class Handlers:
    """The adapter's update handlers over one core."""

    def __init__(self, core: Core, sender: Sender, settings: Settings) -> None:
        self.core = core
        self.dispatcher = Dispatcher(core)
        self.sender = sender
        self.max_upload = settings.limits.max_upload_bytes
        self.admins = telegram_admins(settings.moderation.admin_ids)
        self._last_alert = float("-inf")

    def register(self, app: Application) -> None:  # type: ignore[type-arg]
        """Every handler, in one place."""
        new = filters.UpdateType.MESSAGE
        media = filters.PHOTO | filters.Document.ALL
        app.add_handler(CommandHandler(COMMANDS, self.on_command, filters=new))
        app.add_handler(
            MessageHandler(new & media & filters.CaptionRegex(_CAPTION_COMMAND), self.on_caption)
        )
        app.add_handler(
            MessageHandler(new & filters.COMMAND & filters.ChatType.PRIVATE, self.on_command)
        )
        app.add_handler(CallbackQueryHandler(self.on_button))
        app.add_error_handler(self.on_error)

    async def on_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A text command (or an unknown one in a private chat): run it, answer it."""
        message = update.effective_message
        if message is not None and message.from_user is not None:
            await self._run(message, message.text or "")

    async def on_caption(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A photo or file whose caption is a command for this bot."""
        message = update.effective_message
        if message is None or message.from_user is None:
            return
        private = message.chat.type == ChatType.PRIVATE
        if addressed_to_me(message.caption or "", context.bot.username, private):
            await self._run(message, message.caption or "")

    async def _run(self, message: Message, text: str) -> None:
        reply, compressed = await self._command(caller_of(message), message, text)
        if compressed and not reply.is_error:
            reply = replace(reply, text=f"{reply.text}\n\n{TIP}")
        elif _is_help(text) and not reply.is_error:
            reply = replace(reply, text=f"{reply.text}\n\n{TELEGRAM_HELP}")
        await self._reply(message, reply)

    async def _command(self, caller: Caller, message: Message, text: str) -> tuple[Reply, bool]:
        """The core's reply, and whether a compressed photo was used."""
        need = need_of(text)
        if need is Need.NOTHING:
            return await self.dispatcher.handle(caller, text), False
        try:
            upload = check_upload(find_upload(message), need, self.max_upload)
            file = await download(message.get_bot(), upload)
        except BadInput as exc:
            return error_reply(exc.message), False
        return await self.dispatcher.handle(caller, text, [file]), upload.compressed

    async def _reply(self, message: Message, reply: Reply) -> None:
        """Reply in the chat; private files asked for in a group go to a private chat."""
        if reply.ephemeral and reply.files and message.chat.type != ChatType.PRIVATE:
            await self._privately(message, reply)
            return
        await self.sender.post(Target.of_message(message), reply)

    async def _privately(self, message: Message, reply: Reply) -> None:
        assert message.from_user is not None
        here = Target.of_message(message)
        try:
            await self.sender.post(Target(message.from_user.id), reply)
        except Forbidden:
            name = message.get_bot().username
            note = f"I can't message you privately yet: open a chat with @{name}, press Start."
            await self.sender.post(here, error_reply(note))
            return
        await self.sender.post(here, Reply("Sent to you in a private chat.", ephemeral=True))

    async def on_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A button press: the core acts on its action id; the query is always answered."""
        query = update.callback_query
        assert query is not None
        source = query.message
        if not query.data or source is None:
            await _answer_query(query)
            return
        chat_id = source.chat.id
        action_id, media = keyboards.parse_callback_data(query.data, self.sender.key, chat_id)
        try:
            reply = await self.core.press(_presser(query, source), action_id)
        except Exception:
            await _answer_query(query, INTERNAL[: presses.ANSWER_LIMIT], alert=True)
            raise
        await self._show_press(query, source, action_id, media, reply)

    async def _show_press(
        self,
        query: CallbackQuery,
        source: MaybeInaccessibleMessage,
        action_id: str,
        media: Sequence[int],
        reply: Reply,
    ) -> None:
        editable = isinstance(source, Message) and source.text is not None
        plan = presses.plan(action_id, reply, editable=editable)
        await _answer_query(query, plan.answer, alert=plan.alert)
        chat_id = source.chat.id
        if plan.remove_source:
            await self.sender.remove(chat_id, [source.message_id, *media])
        if plan.replace_source and isinstance(source, Message):
            await self.sender.replace(source, reply)
        if plan.drop_keyboard:
            await self.sender.drop_keyboard(chat_id, source.message_id)
        if plan.post:
            target = Target.of_message(source) if isinstance(source, Message) else Target(chat_id)
            await self.sender.post(target, reply)

    async def on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Log the failure, then tell the admins (at most once a minute)."""
        error = context.error
        update_id = getattr(update, "update_id", None)
        log.error("telegram update %s failed", update_id, exc_info=error)
        now = time.monotonic()
        if not self.admins or now - self._last_alert < ALERT_EVERY:
            return
        self._last_alert = now
        detail = redact_token(str(error), context.bot.token)[:300]
        text = f"pulid-bot: {type(error).__name__} while handling update {update_id}: {detail}"
        for admin in self.admins:
            with suppress(TelegramError):
                await context.bot.send_message(admin, text)


async def _answer_query(
    query: CallbackQuery, text: str | None = None, *, alert: bool = False
) -> None:
    """Answer a press; one Telegram no longer takes (pressed long ago) is logged, not fatal."""
    try:
        await query.answer(text, show_alert=alert)
    except BadRequest as exc:
        log.info("callback query %s not answered: %s", query.id, exc.message)


def _presser(query: CallbackQuery, source: MaybeInaccessibleMessage) -> Caller:
    ref = message_ref(source) if isinstance(source, Message) else str(source.message_id)
    return Caller(
        PLATFORM,
        str(query.from_user.id),
        channel_id=str(source.chat.id),
        message_ref=ref,
        display_name=query.from_user.full_name,
    )


def _is_help(text: str) -> bool:
    try:
        name, rest = parsing.split_command(text)
    except BadInput:
        return False
    return name in ("help", "start") and rest.strip().lower() in ("", "face")
