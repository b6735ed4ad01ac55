"""Typed failures a user sees as one short line.

Command code raises these; :func:`bot.core.messages.error_reply` turns them into an error
:class:`~bot.core.messages.Reply`. Anything else that escapes a command is logged with its
traceback and shown as a generic one-liner.
"""

from __future__ import annotations


class UserError(Exception):
    """A failure caused by the request; ``message`` is the one line the user reads."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInput(UserError):
    """A malformed command, option, parameter or upload."""

    code = "bad_input"


class NotFound(UserError):
    """Something the user named does not exist (or is not theirs: the two look the same)."""

    code = "not_found"


class Conflict(UserError):
    """The request clashes with what exists (a taken name, a finished job)."""

    code = "conflict"


class Forbidden(UserError):
    """The user may not do this (admin-only commands, someone else's button)."""

    code = "forbidden"


class Banned(UserError):
    """The user is banned from the bot."""

    code = "banned"


class Blocked(UserError):
    """A prompt that the host's moderation rules refuse."""

    code = "blocked"


class LimitReached(UserError):
    """A quota or rate limit: too many jobs, identities or requests."""

    code = "limit"


class ConsentRequired(UserError):
    """The user must accept the face-data terms first."""

    code = "consent"
