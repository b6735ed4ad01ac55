"""Engine ⇄ storage conversions: identity embeddings as safetensors bytes, result PNG metadata.

The file format itself (tensor names, metadata, validation) belongs to
:mod:`storage.embeddings`, which is numpy-only; this module converts torch ⇄ numpy and refuses
embeddings made by other weights (:func:`engine.identity.check_fingerprint`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict

import numpy as np
import torch
from PIL import Image

from engine.identity import IdentityEmbedding, check_fingerprint
from engine.images import png_bytes
from engine.pipeline import SamplingParams
from storage import embeddings as stored

log = logging.getLogger(__name__)

#: The largest finite float16 value; tokens beyond it are stored as float32.
HALF_MAX = float(np.finfo(np.float16).max)
#: PNG text key and value that mark every output as machine-made.
AI_TAG_KEY = "AI-generated"
SOFTWARE = "pulid-bot (FLUX.1-dev + PuLID)"


def to_storage(embedding: IdentityEmbedding, name: str = "", *, half: bool = True):
    """The numpy form :mod:`storage.embeddings` packs.

    Tokens are float16 by default (128 KiB per 32×2048, DESIGN §3; safetensors' numpy API has no
    bfloat16), float32 with ``half=False`` or when a value lies outside float16's range. The raw
    ArcFace vectors stay float32.
    """
    ids, uncond = embedding.id_tokens.float().cpu(), embedding.uncond_tokens[0].float().cpu()
    dtype = np.float16 if half and _fits_half(ids, uncond) else np.float32
    return stored.IdentityEmbedding(
        id_tokens=ids.numpy().astype(dtype),
        uncond_tokens=uncond.numpy().astype(dtype),
        arcface=np.asarray(embedding.arcface, dtype=np.float32),
        fingerprint=embedding.fingerprint,
        name=name,
    )


def _fits_half(*tensors: torch.Tensor) -> bool:
    fits = all(float(t.abs().max()) <= HALF_MAX for t in tensors)
    if not fits:
        log.warning("identity tokens exceed the float16 range: stored as float32")
    return fits


def from_storage(record, fingerprint: str | None = None) -> IdentityEmbedding:
    """Back to torch; with ``fingerprint``, refuse one made by other weights."""
    if fingerprint is not None:
        check_fingerprint(record.fingerprint, fingerprint)
    return IdentityEmbedding(
        id_tokens=torch.from_numpy(record.id_tokens.astype(np.float32)),
        uncond_tokens=torch.from_numpy(record.uncond_tokens.astype(np.float32))[None],
        arcface=record.arcface.astype(np.float32),
        fingerprint=record.fingerprint,
    )


def embedding_to_bytes(embedding: IdentityEmbedding, name: str = "", *, half: bool = True) -> bytes:
    """Safetensors bytes of an identity (the ``/face export`` file and the database column);
    float16 tokens unless ``half=False``. Either dtype reads back (older saves are float32)."""
    return stored.pack(to_storage(embedding, name, half=half))


def embedding_from_bytes(data: bytes, fingerprint: str | None = None) -> IdentityEmbedding:
    """Parse and validate safetensors bytes; with ``fingerprint``, refuse other weights."""
    return from_storage(stored.unpack(data), fingerprint)


def result_metadata(
    prompt: str, params: SamplingParams, fingerprint: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """PNG text entries of one result: prompt, seed, parameters, weights, the AI tag."""
    meta = {
        "prompt": prompt,
        "seed": str(params.seed),
        "parameters": json.dumps(asdict(params), sort_keys=True),
        "weights": fingerprint,
        AI_TAG_KEY: "true",
        "Software": SOFTWARE,
    }
    meta.update(extra or {})
    return meta


def png_with_metadata(image: Image.Image, meta: Mapping[str, str]) -> bytes:
    """PNG bytes with one text chunk per entry; the AI tag is always present."""
    return png_bytes(image, {**meta, AI_TAG_KEY: "true"})
