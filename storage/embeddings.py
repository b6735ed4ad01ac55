"""Identity embeddings ⇄ safetensors bytes (numpy only; engine and bot both use this).

File layout (format "pulid-bot.identity", version "1"):
    tensors   id_tokens (n_refs, tokens, width)  float16|float32  — per-reference PuLID id tokens
              uncond_tokens (tokens, width)      same dtype       — the unconditional id tokens
              arcface (n_refs, arcface_dim)      float16|float32  — raw ArcFace vectors
    metadata  format, version, fingerprint, name, n_refs, tokens, width, arcface_dim (strings)

Public API:
    IdentityEmbedding(id_tokens, uncond_tokens, arcface, fingerprint, name="")
    pack(embedding) -> bytes
    unpack(data, *, max_bytes=MAX_IMPORT_BYTES, max_refs=MAX_REFS) -> IdentityEmbedding
    read_metadata(data) -> dict[str, str]
    validate(embedding, *, max_refs=MAX_REFS) -> None
    append_references(base, extra, *, max_refs=MAX_REFS) -> IdentityEmbedding
    mean_arcface(embedding) -> np.ndarray   (L2-normalised float32 mean of the references)
    with_name(embedding, name) -> IdentityEmbedding
Every validation failure raises storage.errors.ImportRejected with a one-line message.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from storage.errors import ImportRejected

FORMAT = "pulid-bot.identity"
VERSION = "1"
KEYS = ("id_tokens", "uncond_tokens", "arcface")
MAX_IMPORT_BYTES = 16 * 1024 * 1024
MAX_REFS = 16
MAX_HEADER_BYTES = 64 * 1024
_DTYPES = {"F16": np.float16, "F32": np.float32}
_FINGERPRINT = re.compile(r"^[A-Za-z0-9._:+/=-]{1,128}$")
_DIM_LIMITS = {"tokens": 1024, "width": 16384, "arcface_dim": 4096}


@dataclass(frozen=True)
class IdentityEmbedding:
    """A face identity: per-reference id tokens, uncond tokens, ArcFace vectors, fingerprint."""

    id_tokens: np.ndarray
    uncond_tokens: np.ndarray
    arcface: np.ndarray
    fingerprint: str
    name: str = ""

    @property
    def n_refs(self) -> int:
        return int(self.id_tokens.shape[0])

    @property
    def tokens(self) -> int:
        return int(self.id_tokens.shape[1])

    @property
    def width(self) -> int:
        return int(self.id_tokens.shape[2])

    @property
    def arcface_dim(self) -> int:
        return int(self.arcface.shape[1])

    def metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": self.fingerprint,
            "name": self.name,
            "n_refs": str(self.n_refs),
            "tokens": str(self.tokens),
            "width": str(self.width),
            "arcface_dim": str(self.arcface_dim),
        }


def _reject(message: str) -> ImportRejected:
    return ImportRejected(message)


def _check_dtype(name: str, array: np.ndarray, want: np.dtype[Any] | None = None) -> None:
    if array.dtype not in (np.float16, np.float32):
        raise _reject(f"Face file tensor {name} must be float16 or float32, not {array.dtype}.")
    if want is not None and array.dtype != want:
        raise _reject(f"Face file tensor {name} has dtype {array.dtype}, expected {want}.")
    if not np.isfinite(array).all():
        raise _reject(f"Face file tensor {name} contains NaN or infinite values.")


def _check_shapes(e: IdentityEmbedding, max_refs: int) -> None:
    ids, unc, arc = e.id_tokens, e.uncond_tokens, e.arcface
    if ids.ndim != 3 or unc.ndim != 2 or arc.ndim != 2:
        raise _reject(
            "Face file shapes are wrong: id_tokens must be 3-D, uncond_tokens and arcface 2-D."
        )
    n, tokens, width = ids.shape
    if not 1 <= n <= max_refs:
        raise _reject(f"Face file has {n} reference photos; 1 to {max_refs} are allowed.")
    if unc.shape != (tokens, width):
        raise _reject(f"Face file uncond_tokens is {tuple(unc.shape)}, expected {(tokens, width)}.")
    if arc.shape[0] != n:
        raise _reject(f"Face file arcface has {arc.shape[0]} rows, expected {n}.")
    dims = {"tokens": tokens, "width": width, "arcface_dim": arc.shape[1]}
    for key, value in dims.items():
        if not 1 <= value <= _DIM_LIMITS[key]:
            raise _reject(f"Face file {key} {value} is out of range.")


def validate(embedding: IdentityEmbedding, *, max_refs: int = MAX_REFS) -> None:
    """Raise ImportRejected unless shapes, dtypes, values and fingerprint are well formed."""
    _check_shapes(embedding, max_refs)
    _check_dtype("id_tokens", embedding.id_tokens)
    _check_dtype("uncond_tokens", embedding.uncond_tokens, embedding.id_tokens.dtype)
    _check_dtype("arcface", embedding.arcface)
    if not _FINGERPRINT.match(embedding.fingerprint or ""):
        raise _reject("Face file has no valid encoder fingerprint.")


def pack(embedding: IdentityEmbedding) -> bytes:
    """Serialise an identity as safetensors bytes (validated first)."""
    validate(embedding)
    tensors = {
        "id_tokens": np.ascontiguousarray(embedding.id_tokens),
        "uncond_tokens": np.ascontiguousarray(embedding.uncond_tokens),
        "arcface": np.ascontiguousarray(embedding.arcface),
    }
    return bytes(_st_save(tensors, metadata=embedding.metadata()))


def _header(data: bytes) -> dict[str, Any]:
    if len(data) < 8:
        raise _reject("That file is not a safetensors face file (too short).")
    (size,) = struct.unpack("<Q", data[:8])
    if size > MAX_HEADER_BYTES or 8 + size > len(data):
        raise _reject("That file is not a safetensors face file (bad header).")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, ValueError) as exc:
        raise _reject("That file is not a safetensors face file (bad header).") from exc
    if not isinstance(header, dict):
        raise _reject("That file is not a safetensors face file (bad header).")
    return header


def read_metadata(data: bytes) -> dict[str, str]:
    """The metadata strings of a safetensors file, without loading its tensors."""
    meta = _header(data).get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _reject("Face file metadata must be a map of strings.")
    return dict(meta)


def _check_header(header: dict[str, Any]) -> None:
    keys = set(header) - {"__metadata__"}
    if keys != set(KEYS):
        raise _reject(f"Face file tensors must be exactly {', '.join(KEYS)}; got {sorted(keys)}.")
    for key in KEYS:
        dtype = header[key].get("dtype") if isinstance(header[key], dict) else None
        if dtype not in _DTYPES:
            raise _reject(f"Face file tensor {key} must be float16 or float32, not {dtype}.")


def _check_metadata(meta: dict[str, str]) -> None:
    if meta.get("format") != FORMAT:
        raise _reject("That file is not a pulid-bot face file (wrong format tag).")
    if meta.get("version") != VERSION:
        raise _reject(f"Face file version {meta.get('version')!r} is not supported (want 1).")
    if not _FINGERPRINT.match(meta.get("fingerprint", "")):
        raise _reject("Face file has no valid encoder fingerprint.")


def _check_declared(meta: dict[str, str], e: IdentityEmbedding) -> None:
    actual = {"n_refs": e.n_refs, "tokens": e.tokens, "width": e.width}
    actual["arcface_dim"] = e.arcface_dim
    for key, value in actual.items():
        if meta.get(key) != str(value):
            raise _reject(
                f"Face file declares {key}={meta.get(key)!r} but its tensors have {value}."
            )


def unpack(
    data: bytes, *, max_bytes: int = MAX_IMPORT_BYTES, max_refs: int = MAX_REFS
) -> IdentityEmbedding:
    """Parse and fully validate safetensors bytes; raises ImportRejected on anything odd."""
    if len(data) > max_bytes:
        raise _reject(f"Face file is too large ({len(data) // 1024} KiB; max {max_bytes // 1024}).")
    header = _header(data)
    meta = read_metadata(data)
    _check_metadata(meta)
    _check_header(header)
    try:
        tensors = _st_load(bytes(data))
    except Exception as exc:  # safetensors raises its own error types for corrupt data
        raise _reject("That face file is corrupt (tensor data does not match).") from exc
    embedding = IdentityEmbedding(
        id_tokens=tensors["id_tokens"],
        uncond_tokens=tensors["uncond_tokens"],
        arcface=tensors["arcface"],
        fingerprint=meta["fingerprint"],
        name=meta.get("name", ""),
    )
    validate(embedding, max_refs=max_refs)
    _check_declared(meta, embedding)
    return embedding


def append_references(
    base: IdentityEmbedding, extra: IdentityEmbedding, *, max_refs: int = MAX_REFS
) -> IdentityEmbedding:
    """``base`` with the references of ``extra`` appended (same fingerprint and shapes)."""
    if base.fingerprint != extra.fingerprint:
        raise _reject("The new photo was encoded by other model weights than this face.")
    if base.id_tokens.shape[1:] != extra.id_tokens.shape[1:] or (
        base.arcface_dim != extra.arcface_dim
    ):
        raise _reject("The new reference has other dimensions than this face.")
    if base.n_refs + extra.n_refs > max_refs:
        raise _reject(f"A face can have at most {max_refs} reference photos.")
    dtype = base.id_tokens.dtype
    merged = replace(
        base,
        id_tokens=np.concatenate([base.id_tokens, extra.id_tokens.astype(dtype)]),
        arcface=np.concatenate([base.arcface, extra.arcface.astype(base.arcface.dtype)]),
    )
    validate(merged, max_refs=max_refs)
    return merged


def mean_arcface(embedding: IdentityEmbedding) -> np.ndarray:
    """The L2-normalised mean ArcFace vector of all references, float32."""
    vectors = embedding.arcface.astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    mean = (vectors / np.maximum(norms, 1e-12)).mean(axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)


def with_name(embedding: IdentityEmbedding, name: str) -> IdentityEmbedding:
    return replace(embedding, name=name)
