"""Who asked and where answers go: callers from interactions, and the interactions still usable.

A job stores its channel and ``"<interaction id>:<user id>"`` as its delivery reference; the
interaction token itself is never written anywhere. While it is valid (15 minutes) the live
:class:`discord.Interaction` is kept in memory by job id, so progress edits the receipt and the
result is a follow-up. After that, or after a restart, results go to the channel (or the DM).
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
    """Where a delivery can go without the interaction: its channel, or the user's DMs."""

    channel_id: int | None
    user_id: int | None
    interaction_id: int | None


def target_of(delivery: Delivery) -> Target:
    """Decode what :func:`caller_of` stored with a job."""
    channel = _snowflake(delivery.channel_id)
    interaction, _, user = (delivery.message_ref or "").partition(":")
    return Target(channel, _snowflake(user), _snowflake(interaction))


def _snowflake(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


class InteractionBook:
    """Live interactions whose original response is a job's receipt, while their token is valid."""

    def __init__(
        self,
        clock: Callable[[], dt.datetime] = discord.utils.utcnow,
        capacity: int = BOOK_SIZE,
    ) -> None:
        self.clock = clock
        self.capacity = capacity
        self._by_job: OrderedDict[int, Interaction] = OrderedDict()

    def remember(self, job_id: int, interaction: Interaction) -> None:
        self._by_job[job_id] = interaction
        self._by_job.move_to_end(job_id)
        while len(self._by_job) > self.capacity:
            self._by_job.popitem(last=False)

    def get(self, job_id: int) -> Interaction | None:
        """The job's interaction if its token is still good for a while; drops stale ones."""
        interaction = self._by_job.get(job_id)
        if interaction is None:
            return None
        if self.clock() >= interaction.expires_at - TOKEN_MARGIN:
            del self._by_job[job_id]
            return None
        return interaction

    def forget(self, job_id: int) -> None:
        self._by_job.pop(job_id, None)

    def __len__(self) -> int:
        return len(self._by_job)
