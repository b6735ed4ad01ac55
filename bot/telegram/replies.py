"""Core replies → Telegram messages: text, one photo, albums, files, inline keyboards.

One photo (or file) carries the text as its caption and the keyboard under it. Several photos
go as albums of 2–10 (more are split into even albums), followed by one message with the text
and the keyboard; its Delete button lists the album's messages. A receipt's chat and message id
are stored with its job (``core.remember_receipt``, ``extra["receipt"] = "<chat>:<message>"``),
so progress edits that one message and the result's arrival closes it, after a restart too.
A fast job can be delivered before its receipt is stored, or even sent: the Sender also keeps
the receipts it posted, and the status of results that went out before their receipt was
known, in memory (the last :data:`MEMORY` jobs), so whichever comes second closes the receipt.
A chat that is gone or blocked the bot makes the job :class:`Undeliverable` (not retried).

Telegram re-encodes photos, which drops the PNG's "AI-generated" metadata tag, so every
generated image (``Attachment.generated``) carries a visible :data:`AI_MARK` line in its caption.
"""

from __future__ import annotations

import io
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from PIL import Image
from telegram import Bot, InlineKeyboardMarkup, InputMediaPhoto, Message, ReplyParameters
from telegram.error import BadRequest, Forbidden, TelegramError

from bot.core.delivery import Undeliverable
from bot.core.messages import Attachment, Reply, ReplyKind
from bot.telegram import keyboards
from storage.schemas import Delivery

log = logging.getLogger(__name__)

V = TypeVar("V")
Where = tuple[int, int]  # (chat id, message id)

TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024
ALBUM_MAX = 10
PHOTO_MAX_BYTES = 10 * 1024 * 1024
PHOTO_MIMES = ("image/png", "image/jpeg", "image/webp")
#: The last caption line of a generated image (the photo itself loses its metadata tag).
AI_MARK = "AI-generated image"
#: How many jobs' receipts (and early results) a Sender keeps in memory.
MEMORY = 1000
#: The key of the receipt's ``"<chat id>:<message id>"`` in a job's ``Delivery.extra``.
RECEIPT_KEY = "receipt"

#: ``remember(job_id, extra)``: store where a job's receipt is (``Core.remember_receipt``).
RememberFn = Callable[[int, dict[str, str]], Awaitable[object]]


@dataclass(frozen=True)
class Target:
    """Where a message goes: a chat, the message it answers, the forum topic."""

    chat_id: int
    reply_to: int | None = None
    thread_id: int | None = None

    @property
    def reply(self) -> ReplyParameters | None:
        """Answer the message, or post plainly if it was deleted meanwhile."""
        if self.reply_to is None:
            return None
        return ReplyParameters(self.reply_to, allow_sending_without_reply=True)

    @classmethod
    def of_message(cls, message: Message) -> Target:
        thread = message.message_thread_id if message.is_topic_message else None
        return cls(message.chat_id, message.message_id, thread)

    @classmethod
    def of_delivery(cls, delivery: Delivery) -> Target:
        """Parse what :func:`message_ref` stored: ``"<message id>[:<topic id>]"``."""
        assert delivery.channel_id is not None
        message, _, thread = (delivery.message_ref or "").partition(":")
        return cls(int(delivery.channel_id), _int(message), _int(thread))


def message_ref(message: Message) -> str:
    """The opaque reference the core stores with a job: the message id and forum topic."""
    target = Target.of_message(message)
    return f"{target.reply_to}" + (f":{target.thread_id}" if target.thread_id else "")


def _int(text: str) -> int | None:
    return int(text) if text.lstrip("-").isdigit() else None


def fit(text: str, limit: int) -> str:
    """Text cut to a Telegram limit (never empty: Telegram refuses empty messages)."""
    text = text.strip() or "…"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def caption(text: str, file: Attachment) -> str | None:
    """A file's caption: ``text`` cut to the limit, then the AI mark for a generated image."""
    mark = f"\n{AI_MARK}" if file.generated else ""
    body = fit(text, CAPTION_LIMIT - len(mark)) if text.strip() else ""
    return (body + mark).strip() or None


def fits_caption(text: str, file: Attachment) -> bool:
    """Whether ``text`` fits as the file's caption whole, with the mark it needs."""
    mark = f"\n{AI_MARK}" if file.generated else ""
    return len(text.strip() + mark) <= CAPTION_LIMIT


def is_photo(file: Attachment) -> bool:
    """Whether Telegram accepts the file as a photo (else it goes as a document)."""
    if file.mime not in PHOTO_MIMES or len(file.data) > PHOTO_MAX_BYTES:
        return False
    try:
        with Image.open(io.BytesIO(file.data)) as img:
            w, h = img.size
    except (OSError, ValueError):
        return False
    return w + h <= 10_000 and max(w, h) <= 20 * min(w, h)


def albums(count: int) -> list[int]:
    """Album sizes for ``count`` photos: as even as possible, each 2–10 (1 only alone)."""
    groups = -(-count // ALBUM_MAX)
    base, extra = divmod(count, groups) if groups else (0, 0)
    return [base + (i < extra) for i in range(groups)]


def receipt_ref(chat_id: int, message_id: int) -> dict[str, str]:
    """The ``extra`` entry that records where a job's receipt is."""
    return {RECEIPT_KEY: f"{chat_id}:{message_id}"}


def _keep(memory: OrderedDict[int, V], job_id: int, value: V) -> None:
    """Remember ``value`` for the job, forgetting the oldest beyond :data:`MEMORY` jobs."""
    memory[job_id] = value
    memory.move_to_end(job_id)
    while len(memory) > MEMORY:
        memory.popitem(last=False)


def receipt_of(delivery: Delivery) -> tuple[int, int] | None:
    """The (chat id, message id) of the job's receipt, when it was stored."""
    chat, _, message = delivery.extra.get(RECEIPT_KEY, "").rpartition(":")
    chat_id, message_id = _int(chat), _int(message)
    return None if chat_id is None or message_id is None else (chat_id, message_id)


class Sender:
    """Sends core replies through a Bot; also the Deliverer's send and progress callbacks."""

    def __init__(self, bot: Bot, key: bytes, remember: RememberFn) -> None:
        self.bot = bot
        self.key = key
        self._remember = remember
        self._receipts: OrderedDict[int, Where] = OrderedDict()  # posted, maybe not yet stored
        self._early: OrderedDict[int, str] = OrderedDict()  # result sent, receipt unknown

    async def post(self, target: Target, reply: Reply) -> list[Message]:
        """Send a reply; returns the messages sent (a receipt is remembered)."""
        if not reply.files:
            sent = [await self._text(target, reply.text, self._markup(target, reply))]
        elif len(reply.files) == 1 and fits_caption(reply.text, reply.files[0]):
            markup = self._markup(target, reply)
            sent = [await self._file(target, reply.files[0], reply.text, markup)]
        else:
            sent = await self._media(target, reply.files)
            after = Target(target.chat_id, sent[0].message_id, target.thread_id)
            ids = [m.message_id for m in sent]
            sent.append(await self._text(after, reply.text, self._markup(target, reply, ids)))
        await self._remember_receipt(reply, sent[-1])
        return sent

    async def _remember_receipt(self, reply: Reply, message: Message) -> None:
        """Store where a job's receipt is; close it at once if the result went out first.

        Nothing is awaited before the memory is updated, so either the delivery finds this
        receipt (:meth:`_close_receipt`) or this finds the delivery's status.
        """
        if reply.kind is not ReplyKind.RECEIPT or reply.job_id is None:
            return
        where = (message.chat_id, message.message_id)
        status = self._early.pop(reply.job_id, None)
        if status is None:
            _keep(self._receipts, reply.job_id, where)
        await self._remember(reply.job_id, receipt_ref(*where))
        if status is not None:
            await self._close(reply.job_id, where, status)

    def _markup(
        self, target: Target, reply: Reply, media: Sequence[int] = ()
    ) -> InlineKeyboardMarkup | None:
        return keyboards.markup(reply.buttons, key=self.key, chat_id=target.chat_id, media=media)

    async def _text(
        self, target: Target, text: str, markup: InlineKeyboardMarkup | None
    ) -> Message:
        return await self.bot.send_message(
            target.chat_id, fit(text, TEXT_LIMIT), reply_markup=markup,
            reply_parameters=target.reply, message_thread_id=target.thread_id,
        )  # fmt: skip

    async def _file(
        self,
        target: Target,
        file: Attachment,
        text: str,
        markup: InlineKeyboardMarkup | None = None,
    ) -> Message:
        shown = caption(text, file)
        if is_photo(file):
            return await self.bot.send_photo(
                target.chat_id, file.data, caption=shown, filename=file.name, reply_markup=markup,
                reply_parameters=target.reply, message_thread_id=target.thread_id,
            )  # fmt: skip
        return await self.bot.send_document(
            target.chat_id, file.data, caption=shown, filename=file.name, reply_markup=markup,
            reply_parameters=target.reply, message_thread_id=target.thread_id,
        )  # fmt: skip

    async def _media(self, target: Target, files: Sequence[Attachment]) -> list[Message]:
        photos = [f for f in files if is_photo(f)]
        sent: list[Message] = []
        for size in albums(len(photos)):
            group, photos = photos[:size], photos[size:]
            if size == 1:
                sent.append(await self._file(target, group[0], group[0].description))
                continue
            media = [
                InputMediaPhoto(f.data, caption=caption(f.description, f), filename=f.name)
                for f in group
            ]
            sent += await self.bot.send_media_group(
                target.chat_id, media, reply_parameters=target.reply,
                message_thread_id=target.thread_id,
            )  # fmt: skip
        for doc in (f for f in files if not is_photo(f)):
            sent.append(await self._file(target, doc, doc.description))
        return sent

    # ---- what a button press does to its message ----------------------------------------------

    async def replace(self, message: Message, reply: Reply) -> None:
        """Edit a message into the reply (a confirmation into its outcome or receipt)."""
        markup = self._markup(Target(message.chat_id), reply)
        await self.bot.edit_message_text(
            fit(reply.text, TEXT_LIMIT),
            chat_id=message.chat_id,
            message_id=message.message_id,
            reply_markup=markup,
        )
        await self._remember_receipt(reply, message)

    async def remove(self, chat_id: int, message_ids: Sequence[int]) -> None:
        """Delete messages of this bot (those already gone are skipped)."""
        try:
            await self.bot.delete_messages(chat_id, sorted(set(message_ids)))
        except TelegramError as exc:
            log.info("messages %s in chat %s not deleted: %s", message_ids, chat_id, exc)

    async def drop_keyboard(self, chat_id: int, message_id: int) -> None:
        """Take the buttons off a message whose choice was made."""
        try:
            await self.bot.edit_message_reply_markup(chat_id, message_id, reply_markup=None)
        except TelegramError as exc:
            log.info("keyboard of message %s not removed: %s", message_id, exc)

    # ---- the Deliverer's callbacks ------------------------------------------------------------

    async def deliver(self, delivery: Delivery, reply: Reply) -> None:
        """Send a finished job's result; a chat that is gone for good makes it Undeliverable."""
        target = Target.of_delivery(delivery)
        try:
            await self.post(target, reply)
        except Forbidden as exc:
            raise Undeliverable(f"chat {target.chat_id} refuses the bot: {exc.message}") from exc
        except BadRequest as exc:
            if "chat not found" not in exc.message.lower():
                raise
            raise Undeliverable(f"chat {target.chat_id} is gone: {exc.message}") from exc
        await self._close_receipt(delivery, reply)

    async def _close_receipt(self, delivery: Delivery, reply: Reply) -> None:
        """The result arrived: the receipt keeps a one-line status and loses its Cancel button.

        A receipt posted but not yet stored is found in memory; one not posted yet is closed
        when it is (:meth:`_remember_receipt`).
        """
        status = fit(reply.text.split("\n", 1)[0], TEXT_LIMIT)
        job_id = reply.job_id
        posted = self._receipts.pop(job_id, None) if job_id is not None else None
        where = receipt_of(delivery) or posted
        if where is None:
            if job_id is not None:
                _keep(self._early, job_id, status)
            return
        await self._close(job_id, where, status)

    async def _close(self, job_id: int | None, where: Where, status: str) -> None:
        try:
            await self._edit(where, status, None)
        except TelegramError as exc:
            log.info("job %s: receipt not closed: %s", job_id, exc)

    async def progress(self, delivery: Delivery, reply: Reply) -> None:
        """Edit the job's receipt with a progress line (dropped if the receipt is unknown)."""
        where = receipt_of(delivery)
        if where is not None:
            markup = keyboards.markup(reply.buttons, key=self.key, chat_id=where[0])
            await self._edit(where, fit(reply.text, TEXT_LIMIT), markup)

    async def _edit(
        self, where: tuple[int, int], text: str, markup: InlineKeyboardMarkup | None
    ) -> None:
        try:
            await self.bot.edit_message_text(
                text, chat_id=where[0], message_id=where[1], reply_markup=markup
            )
        except BadRequest as exc:
            if "not modified" not in exc.message and "not found" not in exc.message:
                raise
            log.debug("receipt %s not edited: %s", where, exc.message)
