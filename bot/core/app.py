"""The command core: one object every adapter calls (see :mod:`bot.core` for the vocabulary)."""

from __future__ import annotations

from bot.core.base import database_limits
from bot.core.buttons import ButtonCommands
from storage.config import Settings
from storage.db import Database


class Core(ButtonCommands):
    """Every command as a plain async method returning a :class:`~bot.core.messages.Reply`.

    Methods never raise for user-caused failures (they answer an error reply) and never wait
    for a generation: jobs are queued and answered with a receipt.
    """

    @classmethod
    async def open(cls, settings: Settings) -> Core:
        """Connect to the configured database (its schema must be current)."""
        db = await Database.open(settings.database.url, limits=database_limits(settings))
        return cls(settings, db)

    async def close(self) -> None:
        await self.db.close()
