"""What every command shares: settings, database, user lookup, bans, rate limits, receipts."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

from bot.core import render
from bot.core.errors import Banned, LimitReached, NotFound, UserError
from bot.core.messages import Button, ButtonStyle, Caller, Reply, error_reply
from bot.core.moderation import Moderation
from storage import jobs, users
from storage.config import Settings
from storage.db import Database
from storage.errors import StorageError
from storage.records import Params, UserRecord

log = logging.getLogger(__name__)

P = ParamSpec("P")
C = TypeVar("C", bound="CoreBase")
Pending = Callable[[], Awaitable[Reply]]

BANNED = "You are banned from this bot. Ask its admins if you think this is a mistake."
INTERNAL = "Something went wrong on our side; the error was logged. Please try again later."


def command(
    method: Callable[Concatenate[C, P], Coroutine[Any, Any, Reply]],
) -> Callable[Concatenate[C, P], Coroutine[Any, Any, Reply]]:
    """Make a core method answer every failure with a one-line error reply."""

    @functools.wraps(method)
    async def wrapper(self: C, *args: P.args, **kwargs: P.kwargs) -> Reply:
        return await self.guard(method(self, *args, **kwargs))

    return wrapper


class CoreBase:
    """State shared by the command mixins of :class:`bot.core.app.Core`."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.config = settings
        self.limits = settings.limits
        self.db = db
        self.moderation = Moderation(settings.moderation)
        self._pending: dict[int, Pending] = {}  # user → a face import waiting for consent

    async def guard(self, work: Awaitable[Reply]) -> Reply:
        """Await a command; user-caused failures become error replies, others are logged."""
        try:
            return await work
        except UserError as exc:
            return error_reply(exc.message)
        except StorageError as exc:
            return error_reply(exc.user_message)
        except Exception:
            log.exception("command failed")
            return error_reply(INTERNAL)

    async def _user(self, caller: Caller) -> UserRecord:
        """The caller's user row (created on first sight); banned users are refused."""
        user = await users.get_or_create_user(
            self.db, caller.platform, caller.user_id, display_name=caller.display_name
        )
        if user.banned:
            raise Banned(BANNED)
        return user

    async def _known_user(self, caller: Caller) -> UserRecord:
        """The caller's user row without creating one (``NotFound`` if none)."""
        user = await users.find_user(self.db, caller.platform, caller.user_id)
        if user is None:
            raise NotFound("Nothing is stored for you on this bot.")
        if user.banned:
            raise Banned(BANNED)
        return user

    async def _check_rate(self, user: UserRecord) -> None:
        """At most ``limits.jobs_per_hour`` jobs per user in any hour."""
        limit = self.limits.jobs_per_hour
        if await users.recent_job_count(self.db, user.id) >= limit:
            raise LimitReached(
                f"You have started {limit} jobs in the last hour, the limit here; try again later."
            )

    async def _enqueue(
        self,
        caller: Caller,
        user: UserRecord,
        params: Params,
        *,
        input_blob: bytes | None = None,
        input_from: int | None = None,
    ) -> Reply:
        """Rate-limit, queue the job with the caller as its delivery target, answer a receipt.

        ``input_from``: a finished face job of the user's whose kept upload the job takes.
        """
        await self._check_rate(user)
        queued = await jobs.enqueue(
            self.db,
            user.id,
            params,
            delivery=caller.delivery(),
            input_blob=input_blob,
            input_from=input_from,
        )
        return render.receipt(queued.job_id, params.kind, queued.position)

    def _forget_user_state(self, user_id: int) -> None:
        """Drop what memory holds for a user: a face import waiting for consent."""
        self._pending.pop(user_id, None)


def yes_no(
    yes: tuple[str, str], no: tuple[str, str], *, danger: bool = False
) -> tuple[Button, ...]:
    """A confirmation pair of ``(label, action_id)``: a primary (or danger) yes, a plain no."""
    style = ButtonStyle.DANGER if danger else ButtonStyle.PRIMARY
    return (Button(yes[0], yes[1], style), Button(no[0], no[1]))
