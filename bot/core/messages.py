"""The neutral message vocabulary every adapter speaks: who asks, what comes back.

See the package docstring (:mod:`bot.core`) for how adapters map these onto their platform.
"""

from __future__ import annotations

import enum
import mimetypes
from dataclasses import dataclass, field

from storage.schemas import Delivery

#: Discord's limit for one message; Telegram's caption limit is lower and its adapter trims.
MAX_TEXT = 2000


@dataclass(frozen=True)
class Caller:
    """Who sent a command and where answers for it go.

    ``user_id`` is the platform's own id (a Discord snowflake, a Telegram user id, ``"local"``);
    users are keyed by ``(platform, user_id)``. ``channel_id`` and ``message_ref`` are opaque to the
    core: they are stored with a job and handed back to the adapter when its result is delivered.
    """

    platform: str
    user_id: str
    channel_id: str | None = None
    message_ref: str | None = None
    display_name: str | None = None

    @property
    def key(self) -> str:
        """``platform:user_id``, the form admin ids are written in."""
        return f"{self.platform}:{self.user_id}"

    def delivery(self) -> Delivery:
        """Where the results of a job this caller starts must be delivered."""
        return Delivery(
            platform=self.platform, channel_id=self.channel_id, message_ref=self.message_ref
        )


@dataclass(frozen=True)
class Attachment:
    """A file in either direction: an upload from a user or an image/file in a reply.

    ``generated``: a model-made image (a result or a compare grid). Its PNG carries the
    "AI-generated" metadata tag; an adapter whose platform re-encodes images (Telegram photos)
    shows the mark in the caption instead.
    """

    name: str
    data: bytes = field(repr=False)
    description: str = ""
    generated: bool = False

    @property
    def mime(self) -> str:
        guessed, _ = mimetypes.guess_type(self.name)
        return guessed or "application/octet-stream"


class ButtonStyle(enum.StrEnum):
    """How prominent a button is (Discord: primary/secondary/danger; Telegram ignores it)."""

    PRIMARY = "primary"
    SECONDARY = "secondary"
    DANGER = "danger"


@dataclass(frozen=True)
class Button:
    """A button whose press the adapter hands back as ``core.press(caller, action_id)``."""

    label: str
    action_id: str
    style: ButtonStyle = ButtonStyle.SECONDARY


class ReplyKind(enum.StrEnum):
    """What the adapter should do with a reply."""

    MESSAGE = "message"  # send it as the answer to the command or button press
    RECEIPT = "receipt"  # a job was queued: send it, and keep it to edit with PROGRESS replies
    PROGRESS = "progress"  # edit the receipt of ``job_id`` (or drop it if the platform can't)
    RESULT = "result"  # a finished job: send as a new message (reply to the receipt if known)
    ERROR = "error"  # a one-line failure


@dataclass(frozen=True)
class Reply:
    """One answer from the core."""

    text: str
    files: tuple[Attachment, ...] = ()
    buttons: tuple[Button, ...] = ()
    ephemeral: bool = False
    kind: ReplyKind = ReplyKind.MESSAGE
    job_id: int | None = None
    remove_source: bool = False  # delete the message whose button produced this reply

    @property
    def is_error(self) -> bool:
        return self.kind is ReplyKind.ERROR


def error_reply(message: str) -> Reply:
    """A one-line, private failure (its first letter capitalised)."""
    return Reply(text=message[:1].upper() + message[1:], ephemeral=True, kind=ReplyKind.ERROR)
