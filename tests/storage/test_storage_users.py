"""Users: get-or-create, settings, consent, bans, rate counter, erasure."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from storage_helpers import embedding_bytes, make_user, row_counts

from storage import identities, jobs, users
from storage.db import Database
from storage.errors import Banned, NotFound
from storage.records import ResultData
from storage.schemas import ImagineParams


async def test_get_or_create_is_stable_per_platform(db: Database) -> None:
    a = await users.get_or_create_user(db, "discord", "42", display_name="Ann")
    again = await users.get_or_create_user(db, "discord", "42")
    other = await users.get_or_create_user(db, "telegram", "42")
    assert a.id == again.id != other.id
    assert a.display_name == "Ann" and a.settings == {} and not a.banned
    assert a.created_at.tzinfo is UTC
    assert await users.find_user(db, "discord", "42") == again
    assert await users.find_user(db, "discord", "43") is None


async def test_concurrent_get_or_create_makes_one_row(db: Database) -> None:
    made = await asyncio.gather(*(users.get_or_create_user(db, "tg", "7") for _ in range(8)))
    assert len({u.id for u in made}) == 1
    assert (await row_counts(db))["users"] == 1


async def test_settings_merge_and_remove(db: Database) -> None:
    u = await make_user(db)
    assert await users.update_settings(db, u.id, {"steps": 20, "ar": "3:4"}) == {
        "steps": 20,
        "ar": "3:4",
    }
    assert await users.update_settings(db, u.id, {"steps": None, "seed": 7}) == {
        "ar": "3:4",
        "seed": 7,
    }
    assert await users.get_settings(db, u.id) == {"ar": "3:4", "seed": 7}
    assert await users.update_settings(db, u.id, {"id": 1.2}, replace=True) == {"id": 1.2}


async def test_consent_kept_from_first_time(db: Database) -> None:
    u = await make_user(db)
    assert not await users.has_consented(db, u.id)
    first = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert await users.record_consent(db, u.id, now=first) == first
    assert await users.record_consent(db, u.id) == first
    assert await users.has_consented(db, u.id)
    assert (await users.get_user(db, u.id)).consent_at == first


async def test_ban_blocks_enqueue(db: Database) -> None:
    u = await make_user(db)
    ident = await identities.save_identity(db, u.id, "me", embedding_bytes())
    await users.ban_user(db, u.id)
    assert await users.is_banned(db, u.id)
    before = await row_counts(db)
    with pytest.raises(Banned) as err:
        await jobs.enqueue(db, u.id, ImagineParams(identity_id=ident.id, prompt="x"))
    assert err.value.user_message == "You are not allowed to use this bot."
    assert await row_counts(db) == before
    await users.unban_user(db, u.id)
    await jobs.enqueue(db, u.id, ImagineParams(identity_id=ident.id, prompt="x"))


async def test_recent_job_count(db: Database) -> None:
    u = await make_user(db)
    ident = await identities.save_identity(db, u.id, "me", embedding_bytes())
    for _ in range(3):
        await jobs.enqueue(db, u.id, ImagineParams(identity_id=ident.id, prompt="x"))
    assert await users.recent_job_count(db, u.id) == 3
    later = datetime.now(UTC) + timedelta(hours=2)
    assert await users.recent_job_count(db, u.id, now=later) == 0
    assert await users.recent_job_count(db, u.id, window=timedelta(hours=3), now=later) == 3


@pytest.mark.parametrize(
    "call",
    [
        lambda db: users.get_user(db, 999),
        lambda db: users.update_settings(db, 999, {"a": 1}),
        lambda db: users.record_consent(db, 999),
        lambda db: users.set_banned(db, 999, True),
        lambda db: users.erase_user(db, 999),
        lambda db: users.recent_job_count(db, 999),
    ],
)
async def test_unknown_user(db: Database, call: object) -> None:
    await make_user(db)
    before = await row_counts(db)
    with pytest.raises(NotFound, match="Unknown user"):
        await call(db)  # type: ignore[operator]
    assert await row_counts(db) == before


async def test_erase_user_removes_everything_of_that_user_only(db: Database) -> None:
    me, other = await make_user(db, "1"), await make_user(db, "2")
    for owner in (me, other):
        ident = await identities.save_identity(db, owner.id, "face", embedding_bytes())
        await users.update_settings(db, owner.id, {"steps": 9})
        for _ in range(2):
            await jobs.enqueue(db, owner.id, ImagineParams(identity_id=ident.id, prompt="p"))
    job = await jobs.claim(db, "w")
    assert job is not None and job.owner_id == me.id
    await jobs.finish(db, job.id, "w", [ResultData(0, b"a"), ResultData(1, b"b")])
    running = await jobs.claim(db, "w2")
    assert running is not None

    counts = await users.erase_user(db, me.id)
    assert (counts.identities, counts.jobs, counts.results, counts.users) == (1, 2, 2, 1)
    assert await row_counts(db) == {
        "users": 1,
        "identities": 1,
        "jobs": 2,
        "results": 0,
        "workers": 0,
    }
    assert await users.find_user(db, "discord", "1") is None
    assert (await identities.list_identities(db, other.id))[0].name == "face"
