"""The error a command raises when it cannot start; the CLI prints it as one line."""

from __future__ import annotations


class StartupError(RuntimeError):
    """A command could not start; ``user_message`` is one line for the terminal."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message
