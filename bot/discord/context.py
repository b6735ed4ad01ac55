"""Who asked and where answers go: callers from interactions, and the interactions still usable.

A job stores its channel and ``"<interaction id>:<user id>"`` as its delivery reference; the
interaction token itself is never written anywhere. Once its public receipt is sent, the job
also stores ``extra["receipt"] = "<channel id>:<message id>"`` (``core.remember_receipt``).
While the token is valid (15 minutes) the live :class:`discord.Interaction` is kept in memory
with the job's :class:`Receipt`, so progress edits the receipt through the interaction and the
result is a follow-up. After that, or after a restart, progress edits the stored receipt
message through its channel, and results go to the channel (or the DM).
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import discord

from bot.core.messages import Caller
from storage.schemas import Delivery

PLATFORM = "discord"
#: An interaction is not used for a result this close to its 15-minute expiry.
TOKEN_MARGIN = dt.timedelta(seconds=60)
BOOK_SIZE = 2000
#: The key of the receipt's ``"<channel id>:<message id>"`` in a job's ``Delivery.extra``.
RECEIPT_KEY = "receipt"

Interaction = discord.Interaction[Any]


def caller_of(interaction: Interaction) -> Caller:
    """The core's view of whoever sent this interaction, and where its jobs deliver."""
    user = interaction.user
    channel = interaction.channel_id
    return Caller(
        platform=PLATFORM,
        user_id=str(user.id),
        channel_id=str(channel) if channel is not None else None,
        message_ref=f"{interaction.id}:{user.id}",
        display_name=user.display_name,
    )


@dataclass(frozen=True)
class Target:
    """Where a delivery can go without the interaction: its channel, or the user's DMs, and
    the receipt message (channel id, message id) when it was stored."""

    channel_id: int | None
    user_id: int | None
    interaction_id: int | None
    receipt: tuple[int, int] | None = None


def target_of(delivery: Delivery) -> Target:
    """Decode what :func:`caller_of` and :func:`receipt_ref` stored with a job."""
    channel = _snowflake(delivery.channel_id)
    interaction, _, user = (delivery.message_ref or "").partition(":")
    where, _, message = delivery.extra.get(RECEIPT_KEY, "").partition(":")
    receipt_channel, receipt_message = _snowflake(where), _snowflake(message)
    receipt = None
    if receipt_channel is not None and receipt_message is not None:
        receipt = (receipt_channel, receipt_message)
    return Target(channel, _snowflake(user), _snowflake(interaction), receipt)


def receipt_ref(channel_id: int, message_id: int) -> dict[str, str]:
    """The ``extra`` entry that records where a job's public receipt is."""
    return {RECEIPT_KEY: f"{channel_id}:{message_id}"}


def _snowflake(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


@dataclass(frozen=True)
class Receipt:
    """The message that shows a job's receipt: the interaction's original response, or one of
    its follow-ups (when the receipt had to replace a deferred answer of other visibility)."""

    interaction: Interaction
    message_id: int | None = None  # None: the original response

    async def edit(self, **fields: Any) -> None:
        """Edit the receipt message (``content``, ``view``, …) through the interaction."""
        if self.message_id is None:
            await self.interaction.edit_original_response(**fields)
        else:
            await self.interaction.followup.edit_message(self.message_id, **fields)


class InteractionBook:
    """Receipts of jobs, by job id, while their interaction's token is valid."""

    def __init__(
        self,
        clock: Callable[[], dt.datetime] = discord.utils.utcnow,
        capacity: int = BOOK_SIZE,
    ) -> None:
        self.clock = clock
        self.capacity = capacity
        self._by_job: OrderedDict[int, Receipt] = OrderedDict()

    def remember(self, job_id: int, receipt: Receipt) -> None:
        self._by_job[job_id] = receipt
        self._by_job.move_to_end(job_id)
        while len(self._by_job) > self.capacity:
            self._by_job.popitem(last=False)

    def get(self, job_id: int) -> Receipt | None:
        """The job's receipt if its token is still good for a while; drops stale ones."""
        receipt = self._by_job.get(job_id)
        if receipt is None:
            return None
        if self.clock() >= receipt.interaction.expires_at - TOKEN_MARGIN:
            del self._by_job[job_id]
            return None
        return receipt

    def forget(self, job_id: int) -> None:
        self._by_job.pop(job_id, None)

    def __len__(self) -> int:
        return len(self._by_job)
