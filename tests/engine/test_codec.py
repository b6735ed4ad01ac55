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


def test_round_trip_is_exact_in_float32() -> None:
    emb = _embedding()
    data = embedding_to_bytes(emb, name="alice")
    back = embedding_from_bytes(data, fingerprint="flux-dev:abc123")
    assert torch.equal(back.id_tokens, emb.id_tokens)
    assert torch.equal(back.uncond_tokens, emb.uncond_tokens)
    assert np.array_equal(back.arcface, emb.arcface)
    meta = stored.read_metadata(data)
    assert meta["name"] == "alice" and meta["n_refs"] == "2" and meta["tokens"] == "32"


def test_half_precision_storage_is_close_and_smaller() -> None:
    emb = _embedding(1)
    full, half = embedding_to_bytes(emb), embedding_to_bytes(emb, half=True)
    assert len(half) < 0.6 * len(full)
    back = embedding_from_bytes(half)
    assert back.id_tokens.dtype == torch.float32
    assert torch.allclose(back.id_tokens, emb.id_tokens, atol=1e-2, rtol=1e-3)


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
