"""``/jobs``, ``/cancel``, ``/settings``, ``/forget``, ``/help``: the caller's queue and data;
``/ban`` and ``/unban`` for the bot's admins (``moderation.admin_ids``).

Discord cannot hide a command from everyone but some users, so the admin commands are listed
for all; the core refuses anyone else with a private one-line error.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from discord import app_commands
from discord.ext import commands

from bot.core.texts import TOPICS
from bot.discord.context import Interaction, caller_of

if TYPE_CHECKING:
    from bot.discord.client import PulidBot

JobId = app_commands.Range[int, 1]
_MENTION = re.compile(r"<@!?(\d+)>")
USER_HELP = "@mention or user id, or platform:user_id (e.g. telegram:42)"


def ban_target(text: str) -> str:
    """The core's ``platform:user_id`` or user id for what was typed: a mention is its id."""
    words = text.split()
    found = _MENTION.fullmatch(words[0]) if len(words) == 1 else None
    return found.group(1) if found else text.strip()


class AccountCog(commands.Cog):
    """Private answers about the caller's own jobs, defaults and data."""

    def __init__(self, bot: PulidBot) -> None:
        self.bot = bot
        self.core = bot.core

    @app_commands.command(name="jobs", description="Your recent jobs")
    async def jobs(self, interaction: Interaction) -> None:
        await self.bot.answer(interaction, self.core.jobs(caller_of(interaction)))

    @app_commands.command(name="cancel", description="Cancel one of your jobs")
    @app_commands.describe(job="The job number (see /jobs)")
    async def cancel(self, interaction: Interaction, job: JobId) -> None:
        await self.bot.answer(interaction, self.core.cancel(caller_of(interaction), job))

    @app_commands.command(name="settings", description="Show or save your defaults")
    @app_commands.describe(values="e.g. --ar 3:4 --steps 20 --id 1.2, or reset (empty: show)")
    async def settings(self, interaction: Interaction, values: str | None = None) -> None:
        work = self.core.settings(caller_of(interaction), values or "")
        await self.bot.answer(interaction, work)

    @app_commands.command(name="forget", description="Erase all your faces, jobs and images")
    async def forget(self, interaction: Interaction) -> None:
        await self.bot.answer(interaction, self.core.forget(caller_of(interaction)))

    @app_commands.command(name="help", description="How to use this bot")
    @app_commands.describe(topic="One topic in detail")
    @app_commands.choices(topic=[app_commands.Choice(name=t, value=t) for t in TOPICS])
    async def help(self, interaction: Interaction, topic: str | None = None) -> None:
        await self.bot.answer(interaction, self.core.help(caller_of(interaction), topic))

    @app_commands.command(name="ban", description="Admins only: ban a user from this bot")
    @app_commands.describe(user=USER_HELP)
    async def ban(self, interaction: Interaction, user: str) -> None:
        await self.bot.answer(interaction, self.core.ban(caller_of(interaction), ban_target(user)))

    @app_commands.command(name="unban", description="Admins only: lift a ban")
    @app_commands.describe(user=USER_HELP)
    async def unban(self, interaction: Interaction, user: str) -> None:
        work = self.core.unban(caller_of(interaction), ban_target(user))
        await self.bot.answer(interaction, work)
