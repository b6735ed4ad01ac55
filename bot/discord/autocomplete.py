"""Autocomplete of the caller's own saved face names (at most 25, Discord's limit).

One core call (:meth:`bot.core.app.Core.face_names`): read-only, so a user the bot has never
seen gets no choices and no row is created.
"""

from __future__ import annotations

from typing import Any

from discord import app_commands

from bot.discord.context import Interaction, caller_of

MAX_CHOICES = 25


async def own_faces(interaction: Interaction, current: str) -> list[app_commands.Choice[str]]:
    """The autocomplete callback of every ``face``/``name`` option naming a saved face."""
    client: Any = interaction.client
    names = await client.core.face_names(caller_of(interaction), current, MAX_CHOICES)
    return [app_commands.Choice(name=n, value=n) for n in names]
