"""Keeping the bot token out of the logs and the admin alerts.

Telegram's request URLs hold the token, so any log line or exception text may carry it, and
python-telegram-bot changes the case of error descriptions (``str.capitalize``). The
:class:`RedactToken` filter sits on the handlers of the root logger, so it sees every record
that is written, whichever logger made it, and masks the token in the message, the formatted
exception and the stack, ignoring case.
"""

from __future__ import annotations

import logging
import re

MASK = "<token>"
_EXCEPTIONS = logging.Formatter()


def redact_token(text: str, token: str) -> str:
    """``text`` with every occurrence of ``token`` (in any case) replaced by ``<token>``."""
    return re.sub(re.escape(token), MASK, text, flags=re.IGNORECASE) if token else text


class RedactToken(logging.Filter):
    """Masks the bot token in a record's message, exception text and stack."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed record: let the handler report it
            return True
        clean = redact_token(message, self.token)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = _EXCEPTIONS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_token(record.exc_text, self.token)
        if record.stack_info:
            record.stack_info = redact_token(record.stack_info, self.token)
        return True

    def install(self) -> None:
        """Filter every handler of the root logger (or the last-resort one when there is none)."""
        for handler in _handlers():
            handler.addFilter(self)

    def uninstall(self) -> None:
        """Take the filter off the handlers again."""
        for handler in _handlers():
            handler.removeFilter(self)


def _handlers() -> list[logging.Handler]:
    handlers = list(logging.getLogger().handlers)
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    return handlers
