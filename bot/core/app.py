"""The command core: one object every adapter calls (see :mod:`bot.core` for the vocabulary)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from bot.core.buttons import ButtonCommands
from storage import jobs
from storage.config import Settings
from storage.db import Database, Limits

log = logging.getLogger(__name__)


class Core(ButtonCommands):
    """Every command as a plain async method returning a :class:`~bot.core.messages.Reply`.

    Methods never raise for user-caused failures (they answer an error reply) and never wait
    for a generation: jobs are queued and answered with a receipt.
    """

    @classmethod
    async def open(cls, settings: Settings) -> Core:
        """Connect to the configured database (its schema must be current)."""
        db = await Database.open(
            settings.database.url,
            limits=Limits.from_settings(settings),
            pool_size=settings.database.pool_size,
        )
        return cls(settings, db)

    async def close(self) -> None:
        await self.db.close()

    async def remember_receipt(
        self,
        job_id: int,
        message_ref: str | None = None,
        *,
        extra: Mapping[str, str] | None = None,
    ) -> bool:
        """Store where a job's receipt was sent, so a restarted bot can still edit it.

        Adapters call this after sending a ``RECEIPT`` reply, with what they learnt (e.g.
        ``extra={"receipt": "<chat>:<message>"}``); it comes back in the job's ``Delivery``.
        ``message_ref`` replaces the reference the job was queued with. Never raises: False
        when the job is gone or the write failed (logged).
        """
        try:
            return await jobs.set_delivery_ref(
                self.db, job_id, message_ref=message_ref, extra=extra
            )
        except Exception:
            log.warning("job %s: receipt reference not stored", job_id, exc_info=True)
            return False
