"""Autocomplete of the caller's own saved face names (at most 25, Discord's limit).

Read-only: a user the bot has never seen gets no choices and no row is created. The core has
no call returning names, so this reads the storage API directly (see the adapter notes).
"""

from __future__ import annotations

from typing import Any

from discord import app_commands

from bot.discord.context import PLATFORM, Interaction
from storage import identities, users
from storage.db import Database

MAX_CHOICES = 25


async def face_choices(
    db: Database, interaction: Interaction, current: str
) -> list[app_commands.Choice[str]]:
    """The caller's faces whose name contains ``current``, names starting with it first."""
    user = await users.find_user(db, PLATFORM, str(interaction.user.id))
    if user is None or user.banned:
        return []
    needle = current.strip().lower()
    names = [f.name for f in await identities.list_identities(db, user.id)]
    hits = [n for n in names if needle in n.lower()]
    hits.sort(key=lambda n: (not n.lower().startswith(needle), n.lower()))
    return [app_commands.Choice(name=n, value=n) for n in hits[:MAX_CHOICES]]


async def own_faces(interaction: Interaction, current: str) -> list[app_commands.Choice[str]]:
    """The autocomplete callback of every ``face``/``name`` option naming a saved face."""
    client: Any = interaction.client
    return await face_choices(client.core.db, interaction, current)
