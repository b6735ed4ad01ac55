"""Typed storage errors; each carries a short one-line ``user_message`` safe to show in chat.

StorageError (base) · NotFound · NameTaken · BadName · LimitReached · ImportRejected ·
QueueFull · Banned · InvalidState · LeaseLost · SchemaError
"""

from __future__ import annotations


class StorageError(Exception):
    """Base of every error the storage API raises on purpose.

    ``user_message`` is one line for the person in the chat; ``detail`` is for the log.
    """

    default_message = "The request could not be completed."

    def __init__(self, user_message: str | None = None, *, detail: str | None = None) -> None:
        self.user_message = user_message or self.default_message
        self.detail = detail
        super().__init__(self.user_message)


class NotFound(StorageError):
    """An unknown id or name — or one owned by somebody else (the two look the same)."""

    default_message = "Not found."


class NameTaken(StorageError):
    """A face name the user already uses."""

    default_message = "That name is already taken."


class BadName(StorageError):
    """A face name outside 1–32 letters, digits, ``-`` or ``_``."""

    default_message = "Face names are 1–32 letters, digits, '-' or '_'."


class LimitReached(StorageError):
    """A per-user limit (saved faces, reference photos) is reached."""

    default_message = "You have reached a limit."


class ImportRejected(StorageError):
    """An identity file that is not a valid pulid-bot identity for this engine."""

    default_message = "That file is not a valid pulid-bot face file."


class QueueFull(StorageError):
    """The user already has the maximum number of queued and running jobs."""

    default_message = "You have too many jobs waiting; wait for one to finish or cancel one."


class Banned(StorageError):
    """The user is banned from this bot."""

    default_message = "You are not allowed to use this bot."


class InvalidState(StorageError):
    """A state change that the job's current state does not allow (e.g. cancel a finished job)."""

    default_message = "That job cannot be changed any more."


class LeaseLost(StorageError):
    """A worker acted on a job it no longer holds (lease expired, job re-queued or erased)."""

    default_message = "This job is no longer held by this worker."


class SchemaError(StorageError):
    """The database schema is missing, older or newer than this version of pulid-bot."""

    default_message = "The database schema is not current; run `pulid-bot db upgrade`."


class DatabaseUnavailable(StorageError):
    """The database cannot be reached or opened (server down, bad URL, unwritable file)."""

    default_message = "The database cannot be reached."
