"""``/imagine``, ``/batch`` (a form with one prompt per line) and ``/compare``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands, ui
from discord.ext import commands

from bot.core.base import INTERNAL
from bot.discord.autocomplete import own_faces
from bot.discord.context import Interaction, caller_of

if TYPE_CHECKING:
    from bot.discord.client import PulidBot

log = logging.getLogger(__name__)

#: The absolute most; the core refuses more than this deployment's ``limits.max_steps``.
Steps = app_commands.Range[int, 1, 50]
Seed = app_commands.Range[int, 0, 2**32 - 1]
RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "9:16", "16:9")
PROMPT_HELP = "What to make; parameters may follow, e.g. --ar 3:4 --seed 7 (see /help params)"
#: An unsubmitted form is forgotten after this long.
FORM_SECONDS = 15 * 60


def with_flags(text: str, **flags: object) -> str:
    """``text`` with ``--name value`` appended for every option that was given."""
    extra = [f"--{name} {value}" for name, value in flags.items() if value is not None]
    return " ".join([text.strip(), *extra])


class GenerateCog(commands.Cog):
    """Generation commands: each answers with a receipt; the image comes as its own message."""

    def __init__(self, bot: PulidBot) -> None:
        self.bot = bot
        self.core = bot.core

    @app_commands.command(name="imagine", description="One image of your face")
    @app_commands.describe(
        prompt=PROMPT_HELP,
        face="Which saved face (default: your default face)",
        ar="Aspect ratio",
        seed="Seed, for a repeatable image",
        steps="Sampling steps (up to this bot's limit)",
    )
    @app_commands.choices(ar=[app_commands.Choice(name=r, value=r) for r in RATIOS])
    @app_commands.autocomplete(face=own_faces)
    async def imagine(
        self,
        interaction: Interaction,
        prompt: app_commands.Range[str, 1, 2000],
        face: str | None = None,
        ar: str | None = None,
        seed: Seed | None = None,
        steps: Steps | None = None,
    ) -> None:
        text = with_flags(prompt, ar=ar, seed=seed, steps=steps)
        work = self.core.imagine(caller_of(interaction), text, face=face)
        await self.bot.answer(interaction, work, private=False)

    @app_commands.command(name="batch", description="One image per prompt (a form opens)")
    @app_commands.describe(face="Which saved face (default: your default face)")
    @app_commands.autocomplete(face=own_faces)
    async def batch(self, interaction: Interaction, face: str | None = None) -> None:
        most = self.core.limits.max_batch_prompts
        await interaction.response.send_modal(BatchForm(self.bot, face, most))

    @app_commands.command(name="compare", description="Your face across many prompts, scored")
    @app_commands.describe(
        face="Which saved face (default: your default face)",
        prompts="Your own prompts separated by | (default: a built-in diverse set)",
    )
    @app_commands.autocomplete(face=own_faces)
    async def compare(
        self, interaction: Interaction, face: str | None = None, prompts: str | None = None
    ) -> None:
        work = self.core.compare(caller_of(interaction), prompts or "", face=face)
        await self.bot.answer(interaction, work, private=False)


class BatchForm(ui.Modal, title="Batch"):
    """The /batch form: one prompt per line; parameters (--ar …) apply to every prompt."""

    def __init__(self, bot: PulidBot, face: str | None, most: int) -> None:
        super().__init__(timeout=FORM_SECONDS)
        self.bot = bot
        self.face = face
        self.prompts: ui.TextInput[BatchForm] = ui.TextInput(
            style=discord.TextStyle.paragraph,
            placeholder="a chef in Paris\nan astronaut on the moon --ar 3:4",
            max_length=4000,
        )
        self.add_item(
            ui.Label(text=f"Prompts, one per line (at most {most})", component=self.prompts)
        )

    async def on_submit(self, interaction: Interaction) -> None:
        work = self.bot.core.batch(caller_of(interaction), self.prompts.value, face=self.face)
        await self.bot.answer(interaction, work, private=False)

    async def on_error(self, interaction: Interaction, error: Exception) -> None:  # type: ignore[override]
        log.error("/batch form failed", exc_info=error)
        await self.bot.tell_error(interaction, INTERNAL)
