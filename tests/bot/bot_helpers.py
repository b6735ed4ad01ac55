"""Helpers for the command-core tests: run text commands, save faces, read results, count rows."""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import cache

from bot_worker_fixture import FixtureWorker
from PIL import Image
from sqlalchemy import func, select

from bot.core.app import Core
from bot.core.delivery import Deliverer
from bot.core.dispatch import Dispatcher
from bot.core.messages import Attachment, Caller, Reply, ReplyKind
from storage import models
from storage.schemas import Delivery


@cache
def astronaut_png() -> bytes:
    """scikit-image's astronaut photo (a real face shipped with an installed package)."""
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, format="PNG")
    return buf.getvalue()


def photo() -> Attachment:
    return Attachment("astronaut.png", astronaut_png())


async def say(core: Core, caller: Caller, text: str, uploads: Sequence[Attachment] = ()) -> Reply:
    return await Dispatcher(core).handle(caller, text, uploads)


def button(reply: Reply, label: str) -> str:
    """The action id of the button with this label."""
    for b in reply.buttons:
        if b.label == label:
            return b.action_id
    raise AssertionError(f"no button {label!r} in {[b.label for b in reply.buttons]}")


async def add_face(core: Core, worker: FixtureWorker, caller: Caller, name: str = "me") -> Reply:
    """/face add with consent accepted, run by the fixture worker; returns the receipt."""
    reply = await say(core, caller, f"/face add {name}", [photo()])
    if reply.buttons and reply.buttons[0].label == "Accept":
        reply = await core.press(caller, button(reply, "Accept"))
    assert reply.kind is ReplyKind.RECEIPT, reply.text
    await worker.drain()
    return reply


class Inbox:
    """An adapter's send callback that records what it was given."""

    def __init__(self, fail_times: int = 0) -> None:
        self.replies: list[tuple[Delivery, Reply]] = []
        self.fail_times = fail_times

    async def __call__(self, delivery: Delivery, reply: Reply) -> None:
        if self.fail_times > 0:
            self.fail_times -= 1
            raise ConnectionError("platform unreachable")
        self.replies.append((delivery, reply))

    def for_job(self, job_id: int) -> list[Reply]:
        return [r for _, r in self.replies if r.job_id == job_id]


async def deliver(core: Core, platform: str = "console") -> Inbox:
    """Run one delivery pass for the platform; returns what was delivered."""
    inbox = Inbox()
    await Deliverer(core.db, platform, inbox).run_once()
    return inbox


async def rows_of(core: Core, user_id: int) -> dict[str, int]:
    """How many rows of each table belong to the user (directly or through a job)."""
    own_jobs = select(models.Job.id).where(models.Job.owner_id == user_id)
    queries = {
        "users": select(func.count()).where(models.User.id == user_id),
        "identities": select(func.count()).where(models.Identity.owner_id == user_id),
        "jobs": select(func.count()).where(models.Job.owner_id == user_id),
        "results": select(func.count()).where(models.Result.job_id.in_(own_jobs)),
    }
    async with core.db.session() as s:
        return {name: int(await s.scalar(q) or 0) for name, q in queries.items()}
