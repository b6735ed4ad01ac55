"""Results and progress to Discord: the restart-safe delivery loop as a cog.

The core's :class:`~bot.core.delivery.Deliverer` finds finished, undelivered jobs in the
database and hands each to :meth:`DiscordDelivery.send`; the job is marked delivered only once
that returned. While the job's interaction is alive the result is a follow-up to it (no
channel permission needed); afterwards, or after a restart, a channel message — and when the
channel refuses, a direct message to the job's owner. When the DM is refused too (or the
channel is gone and the owner unknown) the job is :class:`Undeliverable`: dropped, not retried.

Progress edits the receipt: through the interaction while its token lives, afterwards (or
after a restart) through the receipt's channel and message id stored with the job. A receipt
that was deleted, or can no longer be edited, gets no more progress edits for that job. The
same stored id takes the receipt's Cancel button off once the result is out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from bot.core.delivery import Deliverer, Undeliverable
from bot.core.messages import MAX_TEXT, Reply
from bot.discord import files
from bot.discord.context import PLATFORM, InteractionBook, Receipt, Target, target_of
from bot.discord.respond import message_kwargs, upload_limit
from bot.discord.views import view_for
from storage.schemas import Delivery

if TYPE_CHECKING:
    from bot.discord.client import PulidBot

log = logging.getLogger(__name__)

#: Seconds between two edits of one receipt (Discord allows about five edits in five seconds).
PROGRESS_SECONDS = 3.0
#: Interaction tokens that no longer work: 401 Unauthorized, 404 Unknown Webhook.
_DEAD_TOKEN = (401, 404)

Messageable = discord.PartialMessageable | discord.DMChannel


class DiscordDelivery:
    """The Deliverer's ``send`` and ``progress`` callbacks for Discord."""

    def __init__(self, client: discord.Client, book: InteractionBook) -> None:
        self.client = client
        self.book = book
        self._gone: set[int] = set()  # jobs whose receipt cannot be edited any more

    async def send(self, delivery: Delivery, reply: Reply) -> None:
        """Post a finished job's reply: follow-up while possible, else channel or DM."""
        self._gone.discard(reply.job_id or 0)
        receipt = self.book.get(reply.job_id) if reply.job_id is not None else None
        if receipt is not None:
            try:
                await self._follow_up(receipt, reply)
                return
            except discord.HTTPException as exc:
                if exc.status not in _DEAD_TOKEN:
                    raise
                log.info("job %s: interaction token refused; posting instead", reply.job_id)
        target = target_of(delivery)
        await self._post(target, reply)
        with contextlib.suppress(discord.HTTPException):  # the receipt's Cancel is moot now
            await self._edit_stored(target, view=None)

    async def progress(self, delivery: Delivery, reply: Reply) -> None:
        """Edit the job's receipt: through the interaction while it lives, else its channel.

        A receipt that is gone (deleted) or refused is not edited again for that job."""
        if reply.job_id in self._gone:
            return
        fields: dict[str, Any] = {"content": reply.text[:MAX_TEXT], "view": view_for(reply.buttons)}
        receipt = self.book.get(reply.job_id) if reply.job_id is not None else None
        try:
            if receipt is not None:
                await receipt.edit(**fields)
            else:
                await self._edit_stored(target_of(delivery), **fields)
        except (discord.Forbidden, discord.NotFound) as exc:
            log.info("job %s: receipt not edited (%s); no more progress", reply.job_id, exc.status)
            if reply.job_id is not None:
                self._gone.add(reply.job_id)

    async def _edit_stored(self, target: Target, **fields: Any) -> None:
        """Edit the receipt message stored with the job (nothing when none was stored)."""
        if target.receipt is None:
            return
        channel_id, message_id = target.receipt
        channel = self.client.get_partial_messageable(channel_id)
        await channel.get_partial_message(message_id).edit(**fields)

    async def _follow_up(self, receipt: Receipt, reply: Reply) -> None:
        for kwargs in await _messages(reply, upload_limit(receipt.interaction)):
            await receipt.interaction.followup.send(**kwargs)
        assert reply.job_id is not None
        self.book.forget(reply.job_id)
        with contextlib.suppress(discord.HTTPException):  # the receipt's Cancel is moot now
            await receipt.edit(view=None)

    async def _post(self, target: Target, reply: Reply) -> None:
        if target.channel_id is not None:
            channel = self.client.get_partial_messageable(target.channel_id)
            try:
                await _send_all(channel, reply)
                return
            except (discord.Forbidden, discord.NotFound) as exc:
                if target.user_id is None:
                    raise Undeliverable(
                        f"channel {target.channel_id} refused ({exc.status})"
                    ) from exc
                log.info(
                    "job %s: channel %s refused; sending a DM", reply.job_id, target.channel_id
                )
        if target.user_id is None:
            raise Undeliverable(f"job {reply.job_id} has neither a channel nor a user to send to")
        await self._direct(target.user_id, reply)

    async def _direct(self, user_id: int, reply: Reply) -> None:
        """A direct message to the job's owner; one who takes none makes it undeliverable."""
        try:
            dm = await self.client.create_dm(discord.Object(user_id))
            await _send_all(dm, reply)
        except (discord.Forbidden, discord.NotFound) as exc:
            raise Undeliverable(f"user {user_id} takes no direct messages ({exc.status})") from exc


async def _send_all(channel: Messageable, reply: Reply) -> None:
    for kwargs in await _messages(reply, files.MAX_UPLOAD_BYTES):
        await channel.send(**kwargs)


async def _messages(reply: Reply, max_bytes: int) -> list[dict[str, Any]]:
    """The messages a reply needs: text, buttons and the first files, then the other files."""
    packed = await files.pack_in_thread(reply.files, max_bytes=max_bytes)
    groups: Sequence[list[Any]] = packed.messages or [[]]
    text = packed.note(reply.text)[:MAX_TEXT]
    first = message_kwargs(text, groups[0], reply.buttons)
    return [first] + [{"files": files.to_discord_all(g)} for g in groups[1:]]


class DeliveryCog(commands.Cog):
    """Runs the delivery loop from the bot's setup until it closes."""

    def __init__(self, bot: PulidBot) -> None:
        self.bot = bot
        self.callbacks = DiscordDelivery(bot, bot.book)
        self.deliverer = Deliverer(
            bot.core.db,
            PLATFORM,
            self.callbacks.send,
            progress=self.callbacks.progress,
            poll_seconds=bot.config.queue.poll_seconds,
            progress_interval=bot.progress_seconds,
        )
        self._task: asyncio.Task[None] | None = None

    async def cog_load(self) -> None:
        self._task = asyncio.create_task(self.deliverer.run(), name="discord-delivery")

    async def cog_unload(self) -> None:
        self.deliverer.stop()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
