"""Identity embeddings ⇄ safetensors bytes (through storage.embeddings) and result metadata."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from engine.codec import (
    AI_TAG_KEY,
    embedding_from_bytes,
    embedding_to_bytes,
    png_with_metadata,
    result_metadata,
)
from engine.identity import FingerprintMismatch, IdentityEmbedding
from engine.pipeline import SamplingParams
from storage import embeddings as stored
from storage.errors import ImportRejected


def _embedding(n: int = 2, fingerprint: str = "flux-dev:abc123") -> IdentityEmbedding:
    gen = torch.Generator().manual_seed(n)
    return IdentityEmbedding(
        id_tokens=torch.randn(n, 32, 2048, generator=gen),
        uncond_tokens=torch.randn(1, 32, 2048, generator=gen),
        arcface=torch.randn(n, 512, generator=gen).numpy() * 15,
        fingerprint=fingerprint,
    )


def test_float32_files_still_read_back_exactly() -> None:
    emb = _embedding()
    data = embedding_to_bytes(emb, name="alice", half=False)  # as older saves were written
    assert stored.unpack(data).id_tokens.dtype == np.float32
    back = embedding_from_bytes(data, fingerprint="flux-dev:abc123")
    assert torch.equal(back.id_tokens, emb.id_tokens)
    assert torch.equal(back.uncond_tokens, emb.uncond_tokens)
    assert np.array_equal(back.arcface, emb.arcface)
    meta = stored.read_metadata(data)
    assert meta["name"] == "alice" and meta["n_refs"] == "2" and meta["tokens"] == "32"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_saves_are_float16_by_default_128_kib_per_identity_and_close() -> None:
    emb = _embedding(1)
    data = embedding_to_bytes(emb, name="alice")
    record = stored.unpack(data)
    assert record.id_tokens.dtype == record.uncond_tokens.dtype == np.float16
    assert record.id_tokens.nbytes == record.uncond_tokens.nbytes == 128 * 1024  # DESIGN §3
    assert record.arcface.dtype == np.float32
    assert len(data) < 2 * 128 * 1024 + 512 * 4 + 1024  # tokens + ArcFace + header
    back = embedding_from_bytes(data, fingerprint="flux-dev:abc123")
    assert back.id_tokens.dtype == back.uncond_tokens.dtype == torch.float32
    assert _rel(back.id_tokens, emb.id_tokens) <= 1e-3
    assert _rel(back.uncond_tokens, emb.uncond_tokens) <= 1e-3
    assert np.array_equal(back.arcface, emb.arcface)


def test_tokens_outside_the_float16_range_are_saved_as_float32() -> None:
    emb = _embedding(1)
    big = IdentityEmbedding(emb.id_tokens * 1e5, emb.uncond_tokens, emb.arcface, emb.fingerprint)
    data = embedding_to_bytes(big)
    assert stored.unpack(data).id_tokens.dtype == np.float32
    assert torch.equal(embedding_from_bytes(data).id_tokens, big.id_tokens)


def test_embedding_of_other_weights_is_refused() -> None:
    data = embedding_to_bytes(_embedding(fingerprint="tiny:0000"))
    with pytest.raises(FingerprintMismatch, match="other model weights"):
        embedding_from_bytes(data, fingerprint="flux-dev:abc123")


def test_corrupt_bytes_are_rejected_by_storage() -> None:
    data = embedding_to_bytes(_embedding(1))
    with pytest.raises(ImportRejected):
        embedding_from_bytes(data[: len(data) // 2])


def test_result_png_carries_prompt_seed_parameters_weights_and_ai_tag() -> None:
    params = SamplingParams(width=64, height=64, steps=4, seed=42)
    meta = result_metadata("a cat", params, "tiny:1234", {"identity": "alice"})
    png = png_with_metadata(Image.new("RGB", (16, 16), "red"), meta)
    text = Image.open(io.BytesIO(png)).text
    assert text["prompt"] == "a cat" and text["seed"] == "42" and text["weights"] == "tiny:1234"
    assert text[AI_TAG_KEY] == "true" and text["identity"] == "alice"
    assert '"steps": 4' in text["parameters"]
    bare = Image.open(io.BytesIO(png_with_metadata(Image.new("RGB", (8, 8)), {}))).text
    assert bare == {AI_TAG_KEY: "true"}
