"""Saved faces (identities), private to their owner.

A foreign identity behaves exactly like an unknown one (NotFound, same message). Names are
1–32 letters, digits, ``-`` or ``_``, unique per owner ignoring case.

Public API (all async, ``db`` first):
    save_identity(db, owner_id, name, embedding, *, thumbnail=None, make_default=False,
                  max_per_user=None) -> IdentityRecord
    add_reference(db, owner_id, name, embedding) -> IdentityRecord   (appends refs, bumps n_refs)
    list_identities(db, owner_id) -> list[IdentitySummary]            (blobs not read)
    list_identity_names(db, owner_id) -> list[str]                     (names only)
    get_identity(db, owner_id, name) -> IdentityRecord                 (NotFound)
    get_identity_by_id(db, owner_id, identity_id) -> IdentityRecord    (NotFound)
    get_default_identity(db, owner_id) -> IdentityRecord | None
    set_default(db, owner_id, name) -> IdentitySummary
    delete_identity(db, owner_id, name) -> None
    export_identity(db, owner_id, name) -> bytes                       (safetensors)
    import_identity(db, owner_id, data, *, name=None, accept_fingerprints=None,
                    thumbnail=None, max_per_user=None) -> IdentityRecord   (ImportRejected)
    check_name(name) -> str                                            (BadName)
    erase_user(db, user_id) -> ErasedCounts                            (from storage.users)
  inside the caller's transaction (a face job's finish, storage.job_finish):
    insert_identity(s, db, owner_id, name, emb, *, thumbnail=None, make_default=False,
                    max_per_user=None) -> IdentityRecord
    extend_identity(s, db, owner_id, name, extra, *, make_default=False) -> IdentityRecord
``embedding`` arguments are safetensors bytes made by :func:`storage.embeddings.pack`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from storage import embeddings, models
from storage.db import Database
from storage.errors import BadName, ImportRejected, LimitReached, NameTaken, NotFound
from storage.models import utcnow
from storage.records import IdentityRecord, IdentitySummary, identity_summary
from storage.schemas import IDENTITY_NAME_PATTERN
from storage.users import erase_user, require_user

log = logging.getLogger(__name__)

_NAME = re.compile(IDENTITY_NAME_PATTERN)
#: Lists never read the large columns (raiseload: touching one is a bug, not a lazy load).
_NO_BLOBS = tuple(
    defer(column, raiseload=True)
    for column in (models.Identity.embedding, models.Identity.arcface, models.Identity.thumbnail)
)


def check_name(name: str) -> str:
    """The name if valid, else BadName."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise BadName("Face names are 1–32 letters, digits, '-' or '_' (no spaces).")
    return name


def _not_found(name: str) -> NotFound:
    return NotFound(f"You have no face named '{name}'.")


async def _lock_owner(s: AsyncSession, owner_id: int) -> None:
    """Serialise one user's identity writes on PostgreSQL (count limit, single default)."""
    await s.execute(select(models.User.id).where(models.User.id == owner_id).with_for_update())


async def _row(s: AsyncSession, owner_id: int, name: str) -> models.Identity:
    row = await s.scalar(
        select(models.Identity).where(
            models.Identity.owner_id == owner_id,
            func.lower(models.Identity.name) == name.lower(),
        )
    )
    if row is None:
        raise _not_found(name)
    return row


async def _count(s: AsyncSession, owner_id: int) -> int:
    q = (
        select(func.count())
        .select_from(models.Identity)
        .where(models.Identity.owner_id == owner_id)
    )
    return int(await s.scalar(q) or 0)


async def _has_default(s: AsyncSession, owner_id: int) -> bool:
    q = select(models.Identity.id).where(
        models.Identity.owner_id == owner_id, models.Identity.is_default.is_(True)
    )
    return (await s.scalar(q)) is not None


async def _clear_default(s: AsyncSession, owner_id: int) -> None:
    await s.execute(
        update(models.Identity)
        .where(models.Identity.owner_id == owner_id, models.Identity.is_default.is_(True))
        .values(is_default=False)
    )


async def _insert(
    db: Database,
    owner_id: int,
    name: str,
    emb: embeddings.IdentityEmbedding,
    *,
    thumbnail: bytes | None,
    make_default: bool,
    max_per_user: int | None,
) -> IdentityRecord:
    try:
        async with db.transaction() as s:
            record = await insert_identity(
                s, db, owner_id, name, emb,
                thumbnail=thumbnail, make_default=make_default, max_per_user=max_per_user,
            )  # fmt: skip
    except IntegrityError as exc:  # a concurrent save of the same name won the race
        raise name_taken(name) from exc
    log.info("identity %s saved for user %s (%s refs)", record.id, owner_id, record.n_refs)
    return record


def name_taken(name: str) -> NameTaken:
    return NameTaken(f"You already have a face named '{name}'.")


async def insert_identity(
    s: AsyncSession,
    db: Database,
    owner_id: int,
    name: str,
    emb: embeddings.IdentityEmbedding,
    *,
    thumbnail: bytes | None = None,
    make_default: bool = False,
    max_per_user: int | None = None,
) -> IdentityRecord:
    """Save a new face in the caller's transaction (the owner's first becomes the default).

    Locks the owner; BadName, NotFound, LimitReached, NameTaken (an IntegrityError at commit
    means a racing save of the same name won: callers report it as NameTaken).
    """
    check_name(name)
    limit = db.limits.max_identities if max_per_user is None else max_per_user
    await require_user(s, owner_id, lock=True)
    if await _count(s, owner_id) >= limit:
        raise LimitReached(f"You can save at most {limit} faces; delete one first.")
    await _ensure_free(s, owner_id, name)
    default = make_default or not await _has_default(s, owner_id)
    if default:
        await _clear_default(s, owner_id)
    row = _new_row(owner_id, name, emb, thumbnail, default)
    s.add(row)
    await s.flush()
    return IdentityRecord.of(row)


async def extend_identity(
    s: AsyncSession,
    db: Database,
    owner_id: int,
    name: str,
    extra: embeddings.IdentityEmbedding,
    *,
    make_default: bool = False,
) -> IdentityRecord:
    """Append ``extra``'s references to face ``name`` in the caller's transaction (NotFound)."""
    await _lock_owner(s, owner_id)
    row = await _row(s, owner_id, name)
    base = embeddings.unpack(row.embedding, max_bytes=2**40, max_refs=2**31)
    merged = embeddings.append_references(base, extra, max_refs=db.limits.max_refs)
    row.embedding = embeddings.pack(embeddings.with_name(merged, row.name))
    row.arcface = embeddings.mean_arcface(merged).tobytes()
    row.n_refs = merged.n_refs
    row.updated_at = utcnow()
    if make_default and not row.is_default:
        await _make_default(s, owner_id, row)
    await s.flush()
    return IdentityRecord.of(row)


async def _make_default(s: AsyncSession, owner_id: int, row: models.Identity) -> None:
    await _clear_default(s, owner_id)
    await s.flush()
    row.is_default = True
    row.updated_at = utcnow()
    await s.flush()


async def _ensure_free(s: AsyncSession, owner_id: int, name: str) -> None:
    try:
        existing = await _row(s, owner_id, name)
    except NotFound:
        return
    raise name_taken(existing.name)


def _new_row(
    owner_id: int,
    name: str,
    emb: embeddings.IdentityEmbedding,
    thumbnail: bytes | None,
    default: bool,
) -> models.Identity:
    now = utcnow()
    return models.Identity(
        owner_id=owner_id,
        name=name,
        is_default=default,
        embedding=embeddings.pack(embeddings.with_name(emb, name)),
        arcface=embeddings.mean_arcface(emb).tobytes(),
        fingerprint=emb.fingerprint,
        n_refs=emb.n_refs,
        thumbnail=thumbnail,
        created_at=now,
        updated_at=now,
    )


async def save_identity(
    db: Database,
    owner_id: int,
    name: str,
    embedding: bytes,
    *,
    thumbnail: bytes | None = None,
    make_default: bool = False,
    max_per_user: int | None = None,
) -> IdentityRecord:
    """Save a new face; the user's first face becomes their default."""
    emb = embeddings.unpack(embedding, max_refs=db.limits.max_refs)
    return await _insert(
        db,
        owner_id,
        name,
        emb,
        thumbnail=thumbnail,
        make_default=make_default,
        max_per_user=max_per_user,
    )


async def add_reference(db: Database, owner_id: int, name: str, embedding: bytes) -> IdentityRecord:
    """Append the references in ``embedding`` to face ``name``; n_refs grows accordingly."""
    extra = embeddings.unpack(embedding, max_refs=db.limits.max_refs)
    async with db.transaction() as s:
        record = await extend_identity(s, db, owner_id, name, extra)
    log.info("identity %s now has %s refs", record.id, record.n_refs)
    return record


async def list_identities(db: Database, owner_id: int) -> list[IdentitySummary]:
    """The user's faces, by name (ignoring case), without their blobs."""
    async with db.session() as s:
        rows = await s.scalars(
            select(models.Identity)
            .options(*_NO_BLOBS)
            .where(models.Identity.owner_id == owner_id)
            .order_by(func.lower(models.Identity.name))
        )
        return [identity_summary(r) for r in rows]


async def list_identity_names(db: Database, owner_id: int) -> list[str]:
    """The names of the user's faces, sorted ignoring case (for autocompletion and checks)."""
    async with db.session() as s:
        names = await s.scalars(
            select(models.Identity.name)
            .where(models.Identity.owner_id == owner_id)
            .order_by(func.lower(models.Identity.name))
        )
        return list(names)


async def get_identity(db: Database, owner_id: int, name: str) -> IdentityRecord:
    """The user's face ``name`` (case-insensitive), or NotFound."""
    async with db.session() as s:
        return IdentityRecord.of(await _row(s, owner_id, name))


async def get_identity_by_id(db: Database, owner_id: int, identity_id: int) -> IdentityRecord:
    """The user's face with this id, or NotFound (also for another user's id)."""
    async with db.session() as s:
        row = await s.get(models.Identity, identity_id)
        if row is None or row.owner_id != owner_id:
            raise NotFound("That face no longer exists.")
        return IdentityRecord.of(row)


async def get_default_identity(db: Database, owner_id: int) -> IdentityRecord | None:
    """The user's default face, if any."""
    async with db.session() as s:
        row = await s.scalar(
            select(models.Identity).where(
                models.Identity.owner_id == owner_id, models.Identity.is_default.is_(True)
            )
        )
        return IdentityRecord.of(row) if row else None


async def set_default(db: Database, owner_id: int, name: str) -> IdentitySummary:
    """Make face ``name`` the user's default."""
    async with db.transaction() as s:
        await _lock_owner(s, owner_id)
        row = await _row(s, owner_id, name)
        await _make_default(s, owner_id, row)
        return identity_summary(row)


async def delete_identity(db: Database, owner_id: int, name: str) -> None:
    """Delete face ``name``; if it was the default, the most recently updated face becomes it."""
    async with db.transaction() as s:
        await _lock_owner(s, owner_id)
        row = await _row(s, owner_id, name)
        was_default = row.is_default
        await s.delete(row)
        await s.flush()
        if was_default:
            await _promote_default(s, owner_id)
    log.info("identity %s of user %s deleted", name, owner_id)


async def _promote_default(s: AsyncSession, owner_id: int) -> None:
    nxt = await s.scalar(
        select(models.Identity)
        .where(models.Identity.owner_id == owner_id)
        .order_by(models.Identity.updated_at.desc(), models.Identity.id.desc())
        .limit(1)
    )
    if nxt is not None:
        nxt.is_default = True


async def export_identity(db: Database, owner_id: int, name: str) -> bytes:
    """Face ``name`` as a safetensors file (metadata: format, version, fingerprint, name)."""
    record = await get_identity(db, owner_id, name)
    emb = embeddings.unpack(record.embedding, max_bytes=2**40, max_refs=2**31)
    return embeddings.pack(embeddings.with_name(emb, record.name))


async def import_identity(
    db: Database,
    owner_id: int,
    data: bytes,
    *,
    name: str | None = None,
    accept_fingerprints: Collection[str] | None = None,
    thumbnail: bytes | None = None,
    max_per_user: int | None = None,
) -> IdentityRecord:
    """Save a face from an exported file, under ``name`` or the file's own name.

    ``accept_fingerprints``: encoder fingerprints the running engine can use; a file made by
    other weights is rejected (None = accept any well-formed fingerprint).
    """
    emb = embeddings.unpack(data, max_bytes=db.limits.import_max_bytes, max_refs=db.limits.max_refs)
    if accept_fingerprints is not None and emb.fingerprint not in accept_fingerprints:
        raise ImportRejected(
            "That face file was made by other model weights than this bot uses; "
            "add the face again from a photo."
        )
    target = name or emb.name
    if not target:
        raise BadName("The face file has no name; give one.")
    return await _insert(
        db,
        owner_id,
        target,
        emb,
        thumbnail=thumbnail,
        make_default=False,
        max_per_user=max_per_user,
    )


__all__ = [
    "add_reference",
    "check_name",
    "delete_identity",
    "erase_user",
    "export_identity",
    "extend_identity",
    "get_default_identity",
    "get_identity",
    "get_identity_by_id",
    "import_identity",
    "insert_identity",
    "list_identities",
    "save_identity",
    "set_default",
]
