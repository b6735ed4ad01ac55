"""Buttons that survive restarts: one dynamic item whose ``custom_id`` is ``pb:<action id>``.

The core's action ids carry everything a press needs (job id, image index, user id), so no
view is kept per message: the bot registers :class:`ActionButton` once with
``add_dynamic_items`` and any instance of the bot handles a button sent by any earlier one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol, cast

import discord

from bot.core.messages import Button, ButtonStyle

PREFIX = "pb:"
#: ``pb:`` and a core action id (``rr:12``, ``va:12:0``, ``cs:3:y``); the core validates the rest.
TEMPLATE = r"pb:(?P<action>[a-z]{2}(?::[0-9a-z]{1,20}){1,2})"
PER_ROW = 5
MAX_BUTTONS = 25
MAX_LABEL = 80

STYLES = {
    ButtonStyle.PRIMARY: discord.ButtonStyle.primary,
    ButtonStyle.SECONDARY: discord.ButtonStyle.secondary,
    ButtonStyle.DANGER: discord.ButtonStyle.danger,
}


class Presser(Protocol):
    """The bot side of a press (implemented by :class:`bot.discord.client.PulidBot`)."""

    async def press_button(self, interaction: discord.Interaction[Any], action_id: str) -> None:
        """Answer a pressed button."""


class ActionButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=TEMPLATE):
    """A button whose ``custom_id`` is its core action id; a press goes to the bot."""

    def __init__(
        self,
        action_id: str,
        label: str = "",
        style: discord.ButtonStyle = discord.ButtonStyle.secondary,
        row: int | None = None,
    ) -> None:
        button: discord.ui.Button[Any] = discord.ui.Button(
            label=label[:MAX_LABEL] or None, style=style, custom_id=PREFIX + action_id, row=row
        )
        super().__init__(button)
        self.action_id = action_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
    ) -> ActionButton:
        label = getattr(item, "label", None) or ""
        style = getattr(item, "style", discord.ButtonStyle.secondary)
        return cls(match["action"], label, style)

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await cast(Presser, interaction.client).press_button(interaction, self.action_id)


class ButtonsView(discord.ui.View):
    """The buttons of one reply, five to a row; never times out.

    discord.py gives ephemeral views a 15-minute timeout and, when a stored view times out,
    forgets the dynamic items it holds — which would unregister :class:`ActionButton` for every
    message. Pinning the timeout to ``None`` keeps the registration for the bot's lifetime.
    """

    def __init__(self, buttons: Sequence[Button]) -> None:
        super().__init__(timeout=None)
        for i, b in enumerate(buttons[:MAX_BUTTONS]):
            self.add_item(ActionButton(b.action_id, b.label, STYLES[b.style], row=i // PER_ROW))

    @property
    def timeout(self) -> float | None:
        return None

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        """Ignored: these buttons never expire (see the class docstring)."""


def view_for(buttons: Sequence[Button]) -> ButtonsView | None:
    """A view for the reply's buttons, or ``None`` when it has none."""
    return ButtonsView(buttons) if buttons else None
