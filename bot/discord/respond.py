"""Answering an interaction with a core reply, always inside Discord's 3-second window.

The core call runs at once; if it has not answered within ``answer_within`` (1 s) the
interaction is deferred and the reply follows as an edit of the deferred message. Replies
decide their own visibility: an ephemeral reply (errors, lists, settings) after a public
deferral replaces the "thinking" message with an ephemeral follow-up, and the reverse.
A reply that removes its source (result "Delete", the /forget confirmation) deletes the
message its button sits on and answers privately. A public receipt's channel and message id
go to storage through ``remember`` so progress and clean-up survive a restart.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import discord

from bot.core.base import INTERNAL
from bot.core.errors import UserError
from bot.core.messages import MAX_TEXT, Button, Reply, ReplyKind, error_reply
from bot.discord import files
from bot.discord.context import Interaction, InteractionBook, Receipt
from bot.discord.views import view_for

log = logging.getLogger(__name__)

ANSWER_WITHIN = 1.0

#: ``remember(job_id, channel_id, message_id)``: store where a job's public receipt is.
RememberFn = Callable[[int, int, int], Awaitable[object]]


@dataclass(frozen=True)
class Sent:
    """The message that carries a reply's text: its id (when known) and whether it is the
    interaction's original response (edited through ``@original``) or a follow-up."""

    message_id: int | None
    original: bool


class Deferral(enum.Enum):
    """How an interaction was acknowledged before its reply was ready."""

    NONE = "none"
    PUBLIC = "public"  # "thinking", the reply will be visible to everyone
    PRIVATE = "private"  # "thinking", ephemeral
    UPDATE = "update"  # a button press acknowledged without a new message


async def answer(
    interaction: Interaction,
    work: Awaitable[Reply],
    *,
    book: InteractionBook,
    private: bool,
    update: bool = False,
    within: float = ANSWER_WITHIN,
    remember: RememberFn | None = None,
) -> Reply:
    """Send ``work``'s reply; defer first if it is not ready within ``within`` seconds."""
    task = asyncio.ensure_future(_safely(work))
    done, _ = await asyncio.wait({task}, timeout=within)
    deferral = Deferral.NONE if done else await defer(interaction, private=private, update=update)
    reply = await task
    sent = await send_reply(interaction, reply, deferral)
    if reply.kind is ReplyKind.RECEIPT and reply.job_id is not None:
        book.remember(
            reply.job_id, Receipt(interaction, None if sent.original else sent.message_id)
        )
        if remember is not None and not reply.ephemeral:
            await _remember(remember, reply.job_id, interaction.channel_id, sent.message_id)
    return reply


async def _remember(
    remember: RememberFn, job_id: int, channel_id: int | None, message_id: int | None
) -> None:
    """Store where a public receipt is (once the token expires, it is edited through there)."""
    if channel_id is not None and message_id is not None:
        await remember(job_id, channel_id, message_id)


async def _safely(work: Awaitable[Reply]) -> Reply:
    """The reply, or a one-line error for anything raised on the way (downloads, mostly)."""
    try:
        return await work
    except UserError as exc:
        return error_reply(exc.message)
    except Exception:
        log.exception("interaction work failed")
        return error_reply(INTERNAL)


async def defer(interaction: Interaction, *, private: bool, update: bool = False) -> Deferral:
    """Acknowledge now; ``update`` defers a button press without a "thinking" message."""
    if update and interaction.type is discord.InteractionType.component:
        await interaction.response.defer()
        return Deferral.UPDATE
    await interaction.response.defer(ephemeral=private, thinking=True)
    return Deferral.PRIVATE if private else Deferral.PUBLIC


async def send_reply(interaction: Interaction, reply: Reply, deferral: Deferral) -> Sent:
    """Send a reply (files split over follow-ups) the way the deferral allows.

    Returns the message that carries the reply's text: the interaction's original response,
    or a follow-up.
    """
    packed = await files.pack_in_thread(reply.files, max_bytes=upload_limit(interaction))
    first = packed.messages[0] if packed.messages else []
    text = packed.note(reply.text)[:MAX_TEXT]
    if reply.remove_source and interaction.type is discord.InteractionType.component:
        await _replace_source(interaction, text, deferral)
        sent = Sent(None, original=False)
    elif deferral is Deferral.NONE:
        response = await interaction.response.send_message(**_send_kwargs(text, first, reply))
        sent = Sent(response.message_id, original=True)
    elif (deferral is Deferral.PRIVATE) == reply.ephemeral and deferral is not Deferral.UPDATE:
        edited = await interaction.edit_original_response(**edit_kwargs(text, first, reply))
        sent = Sent(edited.id, original=True)
    else:
        if deferral is not Deferral.UPDATE:  # "thinking" of the other visibility: replace it
            await interaction.delete_original_response()
        message = await interaction.followup.send(**_send_kwargs(text, first, reply), wait=True)
        sent = Sent(message.id, original=False)
    for more in packed.messages[1:]:
        await interaction.followup.send(files=files.to_discord_all(more), ephemeral=reply.ephemeral)
    return sent


async def _replace_source(interaction: Interaction, text: str, deferral: Deferral) -> None:
    """Delete the message the pressed button is on, then tell the presser privately."""
    if deferral is Deferral.NONE:
        await interaction.response.defer()
    if deferral in (Deferral.NONE, Deferral.UPDATE):
        await interaction.delete_original_response()
    elif interaction.message is not None:  # deferred as "thinking": @original is not the source
        await interaction.message.delete()
    await interaction.followup.send(text, ephemeral=True)


def message_kwargs(text: str, attachments: list[Any], buttons: Sequence[Button]) -> dict[str, Any]:
    """Keyword arguments of ``send_message``, ``followup.send`` and ``channel.send``."""
    kwargs: dict[str, Any] = {"content": text}
    if attachments:
        kwargs["files"] = files.to_discord_all(attachments)
    view = view_for(buttons)
    if view is not None:
        kwargs["view"] = view
    return kwargs


def _send_kwargs(text: str, attachments: list[Any], reply: Reply) -> dict[str, Any]:
    kwargs = message_kwargs(text, attachments, reply.buttons)
    if reply.ephemeral:
        kwargs["ephemeral"] = True
    return kwargs


def edit_kwargs(text: str, attachments: list[Any], reply: Reply) -> dict[str, Any]:
    """Keyword arguments of ``edit_original_response``: replaces text, files and buttons."""
    return {
        "content": text,
        "attachments": files.to_discord_all(attachments),
        "view": view_for(reply.buttons),
    }


def upload_limit(interaction: Interaction | None) -> int:
    """The interaction's own upload limit, or Discord's default."""
    limit = getattr(interaction, "filesize_limit", None)
    return int(limit) if limit else files.MAX_UPLOAD_BYTES
