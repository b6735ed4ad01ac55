"""What a button press shows: the callback answer first, then what happens to the messages.

Telegram has no private replies in groups; a short private answer (a toast, or an alert for an
error) is the callback answer itself. Everything else is posted in the chat.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.core.actions import Verb
from bot.core.messages import Reply, ReplyKind
from bot.telegram.keyboards import verb_of

ANSWER_LIMIT = 200


@dataclass(frozen=True)
class PressPlan:
    """The callback answer and the message effects of one press."""

    answer: str | None = None
    alert: bool = False
    remove_source: bool = False  # delete the pressed message (and the album it lists)
    replace_source: bool = False  # edit the pressed message into the reply
    drop_keyboard: bool = False  # take the buttons off the pressed message
    post: bool = False  # send the reply as a new message


def fits_answer(reply: Reply) -> bool:
    """A private text-only reply short enough to be the callback answer."""
    plain = not reply.files and not reply.buttons and reply.kind is not ReplyKind.RECEIPT
    return reply.ephemeral and plain and len(reply.text) <= ANSWER_LIMIT


def plan(action_id: str, reply: Reply, *, editable: bool) -> PressPlan:
    """Decide how to show ``reply`` to the press of ``action_id`` (``editable``: a text message)."""
    if reply.is_error:
        return PressPlan(answer=reply.text[:ANSWER_LIMIT], alert=True)
    short = fits_answer(reply)
    answer = reply.text if short else None
    if reply.remove_source:
        return PressPlan(answer=answer, remove_source=True, post=not short)
    verb = verb_of(action_id)
    if verb in (Verb.CONSENT, Verb.FORGET) and editable and not reply.files:
        return PressPlan(replace_source=True)
    chosen = verb is Verb.FACE_CHOICE and reply.kind is ReplyKind.RECEIPT
    return PressPlan(answer=answer, drop_keyboard=chosen, post=not short)
