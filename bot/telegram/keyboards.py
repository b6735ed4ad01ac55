"""Inline keyboards: core buttons → Telegram buttons, and their callback data (≤ 64 bytes).

A button's callback data is the core's stateless action id. A Delete button under an album
also carries the album's message ids, so the press can remove the photos with the keyboard
message after a restart: ``<action>|<runs>|<tag>`` where runs are base-36 ``start+count``
message ids and the tag is an HMAC of chat, action and runs. Callback data can be forged by
modified clients; the tag makes sure a press only ever deletes messages this bot listed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from bot.core import actions
from bot.core.actions import Verb
from bot.core.errors import BadInput
from bot.core.messages import Button, ButtonStyle

MAX_DATA = 64
SEP = "|"
TAG_CHARS = 8
WIDE_ROW = 5
NARROW_ROW = 3
SHORT_LABEL = 7


def signing_key(token: str) -> bytes:
    """The key that tags message ids in callback data (derived from the bot token)."""
    return hashlib.sha256(b"pulid-bot callback data\0" + token.encode()).digest()


def markup(
    buttons: Sequence[Button],
    *,
    key: bytes,
    chat_id: int,
    media: Sequence[int] = (),
) -> InlineKeyboardMarkup | None:
    """Rows of inline buttons (danger buttons on a row of their own), or None."""
    if not buttons:
        return None
    plain = [b for b in buttons if b.style is not ButtonStyle.DANGER]
    danger = [b for b in buttons if b.style is ButtonStyle.DANGER]
    width = WIDE_ROW if all(len(b.label) <= SHORT_LABEL for b in plain) else NARROW_ROW
    rows = [plain[i : i + width] for i in range(0, len(plain), width)]
    rows += [danger] if danger else []
    return InlineKeyboardMarkup(
        [[_button(b, key, chat_id, media) for b in row] for row in rows if row]
    )


def _button(b: Button, key: bytes, chat_id: int, media: Sequence[int]) -> InlineKeyboardButton:
    ids = media if verb_of(b.action_id) is Verb.DELETE else ()
    return InlineKeyboardButton(
        b.label, callback_data=callback_data(b.action_id, key, chat_id, ids)
    )


def verb_of(action_id: str) -> Verb | None:
    """The verb of a core action id (None if it is not one)."""
    try:
        return actions.parse_action(action_id).verb
    except BadInput:
        return None


def callback_data(action_id: str, key: bytes, chat_id: int, media: Sequence[int] = ()) -> str:
    """The action id, with as many tagged message-id runs as fit in 64 bytes."""
    if len(action_id.encode()) > MAX_DATA:
        raise ValueError(f"action id {action_id[:20]!r}… is longer than {MAX_DATA} bytes")
    runs = _runs(sorted(set(media)))
    while runs:
        text = ",".join(runs)
        data = SEP.join((action_id, text, _tag(key, chat_id, action_id, text)))
        if len(data.encode()) <= MAX_DATA:
            return data
        runs.pop()
    return action_id


def parse_callback_data(data: str, key: bytes, chat_id: int) -> tuple[str, list[int]]:
    """``(action_id, message ids)``; ids whose tag does not verify are dropped."""
    action_id, sep, rest = data.partition(SEP)
    text, _, tag = rest.partition(SEP)
    if not sep or not hmac.compare_digest(tag, _tag(key, chat_id, action_id, text)):
        return action_id, []
    try:
        return action_id, _ids(text)
    except ValueError:
        return action_id, []


def _tag(key: bytes, chat_id: int, action_id: str, runs: str) -> str:
    mac = hmac.new(key, f"{chat_id}{SEP}{action_id}{SEP}{runs}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()[:6]).decode()[:TAG_CHARS]


def _runs(ids: Sequence[int]) -> list[str]:
    runs: list[list[int]] = []
    for i in ids:
        if runs and i == runs[-1][0] + runs[-1][1]:
            runs[-1][1] += 1
        else:
            runs.append([i, 1])
    return [_b36(s) + (f"+{n}" if n > 1 else "") for s, n in runs]


def _ids(text: str) -> list[int]:
    out: list[int] = []
    for run in filter(None, text.split(",")):
        start, _, count = run.partition("+")
        first, n = int(start, 36), int(count or "1")
        if not 1 <= n <= 100:
            raise ValueError(run)
        out += range(first, first + n)
    return out


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out
