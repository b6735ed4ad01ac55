"""Moderation rules: blocked words and patterns for prompts, and who is an admin."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from bot.core.errors import Blocked
from bot.core.messages import Caller
from storage.config import ConfigError, ModerationSettings


class Moderation:
    """Compiled moderation rules; build once at start-up (bad patterns fail there)."""

    def __init__(self, settings: ModerationSettings) -> None:
        self._words = [(w, _word_regex(w)) for w in settings.blocked_words if w.strip()]
        self._patterns = [_compile(p) for p in settings.blocked_patterns]
        self._admins = frozenset(a.strip() for a in settings.admin_ids)

    def check_prompts(self, prompts: Iterable[str]) -> None:
        """Raise :class:`Blocked` for the first prompt that breaks a rule."""
        for prompt in prompts:
            self.check_prompt(prompt)

    def check_prompt(self, prompt: str) -> None:
        """Raise :class:`Blocked` if the prompt has a blocked word or matches a blocked pattern."""
        folded = _fold(prompt)
        for word, regex in self._words:
            if regex.search(folded):
                raise Blocked(f"your prompt contains the blocked word {word!r}")
        for regex in self._patterns:
            if regex.search(prompt) or regex.search(folded):
                raise Blocked("your prompt is not allowed here (it matches a blocked pattern)")

    def is_admin(self, caller: Caller) -> bool:
        """Whether ``platform:user_id`` of the caller is in ``moderation.admin_ids``."""
        return caller.key in self._admins


def _fold(text: str) -> str:
    """Compatibility-normalised, case-folded text (full-width and styled letters become plain)."""
    return unicodedata.normalize("NFKC", text).casefold()


def _word_regex(word: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w){re.escape(_fold(word.strip()))}(?!\w)")


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ConfigError(f"setting moderation.blocked_patterns {pattern!r}: {exc}") from None
