"""The Discord adapter: a bot whose ``setup_hook`` loads every cog, the buttons and the commands.

``adapter = await start_discord(settings, core)`` logs in (a bad token fails here), syncs the
slash commands, starts the delivery loop and connects to the gateway in a background task of
the running loop; ``await adapter.stop()`` closes it. No privileged intents are needed: every
command arrives as an interaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.actions import Verb, parse_action
from bot.core.app import Core
from bot.core.base import INTERNAL
from bot.core.errors import BadInput
from bot.core.messages import Reply, error_reply
from bot.discord import respond
from bot.discord.account import AccountCog
from bot.discord.context import Interaction, InteractionBook, caller_of, receipt_ref
from bot.discord.delivery import PROGRESS_SECONDS, DeliveryCog
from bot.discord.faces import FaceCog
from bot.discord.generate import GenerateCog
from bot.discord.views import ActionButton
from storage.config import ConfigError, Settings

log = logging.getLogger(__name__)

INVITE_SCOPES = ("bot", "applications.commands")
#: What the bot's role needs: see docs/discord.md for why each one.
INVITE_PERMISSIONS = discord.Permissions(
    view_channel=True, send_messages=True, send_messages_in_threads=True, attach_files=True
)
#: Verbs whose reply removes the message the button is on.
_REMOVING = (Verb.DELETE, Verb.FORGET)


def invite_url(application_id: int) -> str:
    """The OAuth2 URL that adds the bot to a server with its commands and permissions."""
    return discord.utils.oauth_url(
        application_id, permissions=INVITE_PERMISSIONS, scopes=INVITE_SCOPES
    )


def intents() -> discord.Intents:
    """Only the non-privileged guilds intent: commands and buttons come as interactions."""
    return discord.Intents(guilds=True)


class PulidTree(app_commands.CommandTree[Any]):
    """Command errors are logged and shown to the user as one private line."""

    async def on_error(self, interaction: Interaction, error: app_commands.AppCommandError) -> None:
        if isinstance(error, app_commands.CommandInvokeError):
            log.error("command %s failed", _name(interaction), exc_info=error.original)
            message = INTERNAL
        elif isinstance(error, app_commands.TransformerError):
            message = f"{error.value!r} is not a valid {error.type.name} here."
        elif isinstance(error, app_commands.CommandNotFound):
            message = "This command is not known (any more); Discord may still show an old list."
        else:
            log.warning("command %s refused: %s", _name(interaction), error)
            message = str(error) or INTERNAL
        await tell_error(interaction, message)


def _name(interaction: Interaction) -> str:
    command = interaction.command
    return command.qualified_name if command is not None else "?"


async def tell_error(interaction: Interaction, message: str) -> None:
    """A private one-line error, whether or not the interaction was answered already."""
    text = error_reply(message).text
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException:
        log.warning("could not send an error to interaction %s", interaction.id, exc_info=True)


class PulidBot(commands.Bot):
    """The bot: one cog per feature, persistent buttons, delivery loop; core calls only."""

    def __init__(
        self,
        settings: Settings,
        core: Core,
        *,
        book: InteractionBook | None = None,
        answer_within: float = respond.ANSWER_WITHIN,
        progress_seconds: float = PROGRESS_SECONDS,
    ) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            help_command=None,
            intents=intents(),
            tree_cls=PulidTree,
            allowed_contexts=app_commands.AppCommandContext(guild=True, dm_channel=True),
            allowed_installs=app_commands.AppInstallationType(guild=True),
        )
        self.config = settings
        self.core = core
        self.book = book if book is not None else InteractionBook()
        self.answer_within = answer_within
        self.progress_seconds = progress_seconds

    async def setup_hook(self) -> None:
        for cog in (FaceCog(self), GenerateCog(self), AccountCog(self), DeliveryCog(self)):
            await self.add_cog(cog)
        self.add_dynamic_items(ActionButton)
        await self.sync_commands()
        if self.application_id is not None:
            log.info("invite the bot with %s", invite_url(self.application_id))

    async def sync_commands(self) -> list[app_commands.AppCommand]:
        """Register the slash commands: in the test guild only (instant), or globally."""
        guild_id = self.config.discord.test_guild_id
        if guild_id is None:
            synced = await self.tree.sync()
        else:
            guild = discord.Object(guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
        where = "globally" if guild_id is None else f"to guild {guild_id}"
        log.info("synced %d slash commands %s", len(synced), where)
        return synced

    async def answer(
        self,
        interaction: Interaction,
        work: Awaitable[Reply],
        *,
        private: bool = True,
        update: bool = False,
    ) -> Reply:
        """Answer with the core's reply within Discord's 3 s (see :mod:`bot.discord.respond`).

        ``private`` is the visibility to defer with if the reply is slow: a guess, since the
        reply decides in the end; ``update`` acknowledges a button without a new message.
        """
        return await respond.answer(
            interaction,
            work,
            book=self.book,
            private=private,
            update=update,
            within=self.answer_within,
            remember=self.remember_receipt,
        )

    async def remember_receipt(self, job_id: int, channel_id: int, message_id: int) -> None:
        """Store a public receipt's place with its job, for progress and clean-up later."""
        await self.core.remember_receipt(job_id, extra=receipt_ref(channel_id, message_id))

    async def press_button(self, interaction: Interaction, action_id: str) -> None:
        """A press of any :class:`ActionButton`, from this run or an earlier one."""
        work = self.core.press(caller_of(interaction), action_id)
        await self.answer(interaction, work, private=True, update=_removes_source(action_id))

    async def tell_error(self, interaction: Interaction, message: str) -> None:
        await tell_error(interaction, message)


def _removes_source(action_id: str) -> bool:
    try:
        return parse_action(action_id).verb in _REMOVING
    except BadInput:
        return False


class DiscordAdapter:
    """The Discord side of ``pulid-bot serve``: start and stop it inside a running loop."""

    def __init__(self, settings: Settings, core: Core, *, bot: PulidBot | None = None) -> None:
        if settings.discord.token is None:
            raise ConfigError("setting discord.token is not set (PULID_BOT__DISCORD__TOKEN)")
        self._token = settings.discord.token
        self.bot = bot if bot is not None else PulidBot(settings, core)
        self._gateway: asyncio.Task[None] | None = None

    async def login(self) -> None:
        """Log in over HTTP and run ``setup_hook`` (cogs, buttons, command sync, delivery)."""
        try:
            await self.bot.login(self._token.get_secret_value())
        except BaseException:
            await self.bot.close()
            raise

    async def start(self) -> None:
        """Log in, then keep the gateway connection in a background task."""
        await self.login()
        self._gateway = asyncio.create_task(self.bot.connect(reconnect=True), name="discord")
        self._gateway.add_done_callback(_gateway_ended)

    async def wait(self) -> None:
        """Until the gateway connection ends for good (it reconnects by itself otherwise)."""
        if self._gateway is not None:
            await asyncio.shield(self._gateway)

    async def stop(self) -> None:
        """Stop delivery, close the gateway and the HTTP session."""
        await self.bot.close()
        if self._gateway is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._gateway


def _gateway_ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("Discord gateway connection ended", exc_info=task.exception())


async def start_discord(settings: Settings, core: Core) -> DiscordAdapter:
    """Start the Discord adapter in the running loop; ``await adapter.stop()`` ends it."""
    adapter = DiscordAdapter(settings, core)
    await adapter.start()
    return adapter
