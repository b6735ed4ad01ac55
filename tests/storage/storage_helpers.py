"""Helpers for the storage tests: embeddings, users, row counts."""

from __future__ import annotations

import numpy as np
from sqlalchemy import func, select

from storage import embeddings, models, users
from storage.db import Database
from storage.records import UserRecord

FINGERPRINT = "pulid-v0.9.1+eva02-l14-336+antelopev2"
TABLES = {
    "users": models.User,
    "identities": models.Identity,
    "jobs": models.Job,
    "results": models.Result,
    "workers": models.Worker,
}


def make_embedding(
    n_refs: int = 1,
    *,
    tokens: int = 4,
    width: int = 16,
    arc_dim: int = 8,
    dtype: type = np.float16,
    fingerprint: str = FINGERPRINT,
    name: str = "",
    seed: int = 0,
) -> embeddings.IdentityEmbedding:
    rng = np.random.default_rng(seed)
    return embeddings.IdentityEmbedding(
        id_tokens=rng.standard_normal((n_refs, tokens, width)).astype(dtype),
        uncond_tokens=rng.standard_normal((tokens, width)).astype(dtype),
        arcface=rng.standard_normal((n_refs, arc_dim)).astype(np.float32),
        fingerprint=fingerprint,
        name=name,
    )


def embedding_bytes(n_refs: int = 1, **kwargs: object) -> bytes:
    return embeddings.pack(make_embedding(n_refs, **kwargs))  # type: ignore[arg-type]


async def make_user(db: Database, uid: str = "1", platform: str = "discord") -> UserRecord:
    return await users.get_or_create_user(db, platform, uid)


async def row_counts(db: Database) -> dict[str, int]:
    """Rows per table, to prove that a refused call changed nothing."""
    async with db.session() as s:
        return {
            name: int(await s.scalar(select(func.count()).select_from(model)) or 0)
            for name, model in TABLES.items()
        }


async def snapshot(db: Database) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table (blobs included), for stronger "nothing changed" checks."""
    out: dict[str, list[tuple[object, ...]]] = {}
    async with db.session() as s:
        for name, model in TABLES.items():
            table = model.__table__
            rows = await s.execute(select(table).order_by(*table.primary_key.columns))
            out[name] = [tuple(r) for r in rows]
    return out


def raw_file(emb: embeddings.IdentityEmbedding, **meta: str) -> bytes:
    """A safetensors file of ``emb`` with metadata overridden (to build malformed files)."""
    from safetensors.numpy import save

    tensors = {
        "id_tokens": emb.id_tokens,
        "uncond_tokens": emb.uncond_tokens,
        "arcface": emb.arcface,
    }
    return bytes(save(tensors, metadata=emb.metadata() | meta))
