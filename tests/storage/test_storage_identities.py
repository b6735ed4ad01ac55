"""Identities: save, references, defaults, privacy, export/import and their refusals."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import event
from storage_helpers import (
    FINGERPRINT,
    embedding_bytes,
    make_embedding,
    make_user,
    raw_file,
    snapshot,
)

from storage import embeddings, identities
from storage.db import Database, Limits
from storage.errors import BadName, ImportRejected, LimitReached, NameTaken, NotFound


async def test_save_get_list(db: Database) -> None:
    u = await make_user(db)
    saved = await identities.save_identity(db, u.id, "Alice", embedding_bytes(), thumbnail=b"png")
    assert saved.is_default and saved.n_refs == 1 and saved.fingerprint == FINGERPRINT
    assert saved.thumbnail == b"png"
    got = await identities.get_identity(db, u.id, "alice")  # names ignore case
    assert got == saved
    assert embeddings.unpack(got.embedding).name == "Alice"
    arc = np.frombuffer(got.arcface, dtype=np.float32)
    assert arc.shape == (8,) and abs(float(np.linalg.norm(arc)) - 1) < 1e-5
    await identities.save_identity(db, u.id, "bob_2", embedding_bytes())
    names = [(i.name, i.is_default) for i in await identities.list_identities(db, u.id)]
    assert names == [("Alice", True), ("bob_2", False)]
    assert (await identities.get_identity_by_id(db, u.id, saved.id)).name == "Alice"


async def test_lists_read_no_blobs(db: Database) -> None:
    u, other = await make_user(db), await make_user(db, "2")
    for name in ("zed", "Anna", "bob_2"):
        await identities.save_identity(db, u.id, name, embedding_bytes(), thumbnail=b"png")
    await identities.save_identity(db, other.id, "another", embedding_bytes())
    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement.lower())

    event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
    try:
        assert await identities.list_identity_names(db, u.id) == ["Anna", "bob_2", "zed"]
        faces = await identities.list_identities(db, u.id)
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", seen)
    assert [(f.name, f.n_refs, f.is_default) for f in faces] == [
        ("Anna", 1, False),
        ("bob_2", 1, False),
        ("zed", 1, True),
    ]
    reads = [s for s in statements if "from identities" in s]
    assert len(reads) == 2
    assert not [s for s in reads if "embedding" in s or "arcface" in s or "thumbnail" in s]
    assert await identities.list_identity_names(db, (await make_user(db, "3")).id) == []


async def test_add_reference_appends(db: Database) -> None:
    u = await make_user(db)
    await identities.save_identity(db, u.id, "me", embedding_bytes(2, seed=1))
    extra = make_embedding(1, seed=9)
    updated = await identities.add_reference(db, u.id, "ME", embeddings.pack(extra))
    assert updated.n_refs == 3
    stored = embeddings.unpack(updated.embedding)
    np.testing.assert_array_equal(stored.id_tokens[2], extra.id_tokens[0])
    with pytest.raises(ImportRejected, match="other model weights"):
        await identities.add_reference(db, u.id, "me", embedding_bytes(fingerprint="other"))
    assert (await identities.get_identity(db, u.id, "me")).n_refs == 3


async def test_default_moves(db: Database) -> None:
    u = await make_user(db)
    for name in ("a", "b", "c"):
        await identities.save_identity(db, u.id, name, embedding_bytes())
    assert (await identities.get_default_identity(db, u.id)).name == "a"  # type: ignore[union-attr]
    await identities.set_default(db, u.id, "c")
    defaults = [i.name for i in await identities.list_identities(db, u.id) if i.is_default]
    assert defaults == ["c"]
    await identities.save_identity(db, u.id, "d", embedding_bytes(), make_default=True)
    assert (await identities.get_default_identity(db, u.id)).name == "d"  # type: ignore[union-attr]
    await identities.delete_identity(db, u.id, "d")
    remaining = await identities.list_identities(db, u.id)
    assert [i.name for i in remaining] == ["a", "b", "c"]
    assert sum(i.is_default for i in remaining) == 1


async def test_delete_last_leaves_no_default(db: Database) -> None:
    u = await make_user(db)
    await identities.save_identity(db, u.id, "solo", embedding_bytes())
    await identities.delete_identity(db, u.id, "solo")
    assert await identities.get_default_identity(db, u.id) is None
    assert await identities.list_identities(db, u.id) == []


async def test_foreign_identity_is_like_unknown(db: Database) -> None:
    me, other = await make_user(db, "1"), await make_user(db, "2")
    theirs = await identities.save_identity(db, other.id, "secret", embedding_bytes())
    before = await snapshot(db)
    calls = [
        identities.get_identity(db, me.id, "secret"),
        identities.set_default(db, me.id, "secret"),
        identities.delete_identity(db, me.id, "secret"),
        identities.export_identity(db, me.id, "secret"),
        identities.add_reference(db, me.id, "secret", embedding_bytes()),
    ]
    messages = []
    for call in calls:
        with pytest.raises(NotFound) as err:
            await call
        messages.append(err.value.user_message)
    assert set(messages) == {"You have no face named 'secret'."}
    unknown = await _message(identities.get_identity(db, me.id, "nobody"))
    assert unknown == "You have no face named 'nobody'."
    foreign_id = await _message(identities.get_identity_by_id(db, me.id, theirs.id))
    assert foreign_id == await _message(identities.get_identity_by_id(db, me.id, 10_000))
    assert await identities.list_identities(db, me.id) == []
    assert await snapshot(db) == before


async def _message(call: object) -> str:
    with pytest.raises(NotFound) as err:
        await call  # type: ignore[misc]
    return err.value.user_message


@pytest.mark.parametrize("name", ["", "a b", "x" * 33, "émile", "semi;colon", "../x"])
async def test_bad_names(db: Database, name: str) -> None:
    u = await make_user(db)
    before = await snapshot(db)
    with pytest.raises(BadName, match="1–32 letters"):
        await identities.save_identity(db, u.id, name, embedding_bytes())
    assert await snapshot(db) == before


async def test_duplicate_name_any_case(db: Database) -> None:
    u = await make_user(db)
    await identities.save_identity(db, u.id, "Bob", embedding_bytes())
    before = await snapshot(db)
    with pytest.raises(NameTaken, match="already have a face named 'Bob'"):
        await identities.save_identity(db, u.id, "bob", embedding_bytes())
    assert await snapshot(db) == before
    other = await make_user(db, "2")
    await identities.save_identity(db, other.id, "bob", embedding_bytes())  # per owner


async def test_limit_per_user(db: Database) -> None:
    u = await make_user(db)
    for i in range(3):
        await identities.save_identity(db, u.id, f"f{i}", embedding_bytes(), max_per_user=3)
    before = await snapshot(db)
    with pytest.raises(LimitReached, match="at most 3 faces"):
        await identities.save_identity(db, u.id, "f3", embedding_bytes(), max_per_user=3)
    assert await snapshot(db) == before


async def test_the_identity_cap_comes_from_the_database_limits(db: Database) -> None:
    limited = Database(db.engine, Limits(max_identities=1))
    u = await make_user(db)
    await identities.save_identity(limited, u.id, "one", embedding_bytes())
    with pytest.raises(LimitReached, match="at most 1 faces"):
        await identities.save_identity(limited, u.id, "two", embedding_bytes())


async def test_unknown_user_cannot_save(db: Database) -> None:
    before = await snapshot(db)
    with pytest.raises(NotFound, match="Unknown user"):
        await identities.save_identity(db, 12345, "x", embedding_bytes())
    assert await snapshot(db) == before


async def test_export_import_round_trip(db: Database) -> None:
    me, friend = await make_user(db, "1"), await make_user(db, "2")
    original = await identities.save_identity(db, me.id, "me", embedding_bytes(3))
    data = await identities.export_identity(db, me.id, "me")
    meta = embeddings.read_metadata(data)
    assert meta["name"] == "me" and meta["fingerprint"] == FINGERPRINT
    imported = await identities.import_identity(
        db, friend.id, data, accept_fingerprints={FINGERPRINT}
    )
    assert imported.name == "me" and imported.n_refs == 3 and imported.owner_id == friend.id
    assert imported.arcface == original.arcface
    renamed = await identities.import_identity(db, friend.id, data, name="copy")
    assert renamed.name == "copy"
    assert embeddings.unpack(await identities.export_identity(db, friend.id, "copy")).name == "copy"


def _bad_files() -> list[tuple[bytes, str]]:
    good = embeddings.pack(make_embedding(1, name="x"))
    big = embeddings.pack(make_embedding(16, tokens=32, width=2048, arc_dim=512, dtype=np.float32))
    return [
        (big, "too large"),
        (b"not a safetensors file at all", "not a safetensors"),
        (good[:-4], "corrupt"),
        (raw_file(make_embedding(1, name="x", width=8), width="16"), "declares width"),
        (raw_file(make_embedding(1, name="x"), fingerprint=""), "fingerprint"),
        (raw_file(make_embedding(1, name="x"), format="other"), "not a pulid-bot face file"),
        (embeddings.pack(make_embedding(1, name="x", fingerprint="other-weights")), "other model"),
    ]


@pytest.mark.parametrize(("index", "message"), [(i, m) for i, (_, m) in enumerate(_bad_files())])
async def test_import_rejections_change_nothing(db: Database, index: int, message: str) -> None:
    data = _bad_files()[index][0]
    small = Database(db.engine, Limits(import_max_bytes=1024 * 1024))
    u = await make_user(db)
    await identities.save_identity(db, u.id, "keep", embedding_bytes())
    before = await snapshot(db)
    with pytest.raises(ImportRejected, match=message) as err:
        await identities.import_identity(small, u.id, data, accept_fingerprints={FINGERPRINT})
    assert "\n" not in err.value.user_message
    assert await snapshot(db) == before


async def test_import_name_clash(db: Database) -> None:
    u = await make_user(db)
    await identities.save_identity(db, u.id, "x", embedding_bytes())
    data = embeddings.pack(make_embedding(1, name="x"))
    before = await snapshot(db)
    with pytest.raises(NameTaken):
        await identities.import_identity(db, u.id, data)
    assert await snapshot(db) == before
    nameless = embeddings.pack(make_embedding(1))
    with pytest.raises(BadName, match="no name"):
        await identities.import_identity(db, u.id, nameless)
