"""``/face add|more|list|show|default|delete|export|import``: saved faces, one core call each."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.messages import Attachment, Reply
from bot.discord.autocomplete import own_faces
from bot.discord.context import Interaction, caller_of
from bot.discord.files import download

if TYPE_CHECKING:
    from bot.discord.client import PulidBot

Name = app_commands.Range[str, 1, 32]
FaceNumber = app_commands.Range[int, 1, 99]
CROP_HELP = "Box around the face: x,y,w,h in pixels, percent (10%,…) or fractions 0–1"


class FaceCog(commands.GroupCog, group_name="face", group_description="Your saved faces"):
    """Saving and managing the caller's faces; /face add and /face import ask consent once."""

    def __init__(self, bot: PulidBot) -> None:
        self.bot = bot
        self.core = bot.core
        super().__init__()

    @app_commands.command(name="add", description="Save the face in a photo under a name")
    @app_commands.describe(
        name="Name for this face (letters, digits, - and _)",
        image="A photo with the face",
        crop=CROP_HELP,
        face="Which face, counting left to right (when the photo has several)",
        default="Make it your default face",
    )
    async def add(
        self,
        interaction: Interaction,
        name: Name,
        image: discord.Attachment,
        crop: str | None = None,
        face: FaceNumber | None = None,
        default: bool = False,
    ) -> None:
        caller = caller_of(interaction)
        save = partial(self.core.face_add, caller, name, crop=crop, face=face, make_default=default)
        await self._with_upload(interaction, image, "photo", save, private=False)

    @app_commands.command(name="more", description="Add another photo of a saved face")
    @app_commands.describe(name="The saved face", image="Another photo of the same person")
    @app_commands.autocomplete(name=own_faces)
    async def more(
        self,
        interaction: Interaction,
        name: Name,
        image: discord.Attachment,
        crop: str | None = None,
        face: FaceNumber | None = None,
    ) -> None:
        add = partial(self.core.face_more, caller_of(interaction), name, crop=crop, face=face)
        await self._with_upload(interaction, image, "photo", add, private=False)

    @app_commands.command(name="list", description="Your saved faces")
    async def list_(self, interaction: Interaction) -> None:
        await self.bot.answer(interaction, self.core.face_list(caller_of(interaction)))

    @app_commands.command(name="show", description="One saved face and its thumbnail")
    @app_commands.autocomplete(name=own_faces)
    async def show(self, interaction: Interaction, name: Name) -> None:
        await self.bot.answer(interaction, self.core.face_show(caller_of(interaction), name))

    @app_commands.command(name="default", description="Use this face when none is named")
    @app_commands.autocomplete(name=own_faces)
    async def default(self, interaction: Interaction, name: Name) -> None:
        await self.bot.answer(interaction, self.core.face_default(caller_of(interaction), name))

    @app_commands.command(name="delete", description="Delete a saved face")
    @app_commands.autocomplete(name=own_faces)
    async def delete(self, interaction: Interaction, name: Name) -> None:
        await self.bot.answer(interaction, self.core.face_delete(caller_of(interaction), name))

    @app_commands.command(name="export", description="Download a face as a .safetensors file")
    @app_commands.autocomplete(name=own_faces)
    async def export(self, interaction: Interaction, name: Name) -> None:
        await self.bot.answer(interaction, self.core.face_export(caller_of(interaction), name))

    @app_commands.command(name="import", description="Load a face exported from this bot")
    @app_commands.describe(file="A .safetensors file from /face export", name="Save it as")
    async def import_(
        self, interaction: Interaction, file: discord.Attachment, name: Name | None = None
    ) -> None:
        load = partial(self.core.face_import, caller_of(interaction), name=name)
        await self._with_upload(interaction, file, "face file", load)

    async def _with_upload(
        self,
        interaction: Interaction,
        upload: discord.Attachment,
        what: str,
        act: Callable[[Attachment], Awaitable[Reply]],
        *,
        private: bool = True,
    ) -> None:
        """Answer with ``act`` on the uploaded file (refused unread when it is too large)."""
        limit = self.core.limits.max_upload_bytes

        async def work() -> Reply:
            return await act(await download(upload, limit, what))

        await self.bot.answer(interaction, work(), private=private)
