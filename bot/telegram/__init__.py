"""The Telegram adapter (python-telegram-bot): commands, uploads, buttons, result delivery.

``await start_telegram(settings, core)`` starts it in the running loop; ``await adapter.stop()``
ends it.
"""

from __future__ import annotations

from bot.telegram.app import TelegramAdapter, start_telegram

__all__ = ["TelegramAdapter", "start_telegram"]
