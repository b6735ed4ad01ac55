"""Identity safetensors: round trips and every rejection rule, with numpy only."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save
from storage_helpers import FINGERPRINT, make_embedding

from storage import embeddings
from storage.errors import ImportRejected


def _raw(tensors: dict[str, np.ndarray], **meta: str) -> bytes:
    base = make_embedding(int(tensors["id_tokens"].shape[0]))
    metadata = base.metadata() | {
        "tokens": str(tensors["id_tokens"].shape[1]),
        "width": str(tensors["id_tokens"].shape[-1]),
    }
    return bytes(save(tensors, metadata=metadata | meta))


def _tensors(**override: np.ndarray) -> dict[str, np.ndarray]:
    e = make_embedding(2)
    out = {"id_tokens": e.id_tokens, "uncond_tokens": e.uncond_tokens, "arcface": e.arcface}
    return out | override


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_round_trip(dtype: type) -> None:
    original = make_embedding(3, dtype=dtype, name="alice")
    data = embeddings.pack(original)
    back = embeddings.unpack(data)
    assert back.n_refs == 3 and back.tokens == 4 and back.width == 16 and back.arcface_dim == 8
    assert back.id_tokens.dtype == dtype
    np.testing.assert_array_equal(back.id_tokens, original.id_tokens)
    np.testing.assert_array_equal(back.uncond_tokens, original.uncond_tokens)
    np.testing.assert_array_equal(back.arcface, original.arcface)
    assert (back.fingerprint, back.name) == (FINGERPRINT, "alice")
    meta = embeddings.read_metadata(data)
    assert meta["format"] == "pulid-bot.identity" and meta["version"] == "1"
    assert meta["fingerprint"] == FINGERPRINT and meta["width"] == "16"


def test_full_size_shapes_fit_the_cap() -> None:
    e = make_embedding(4, tokens=32, width=2048, arc_dim=512)
    data = embeddings.pack(e)
    assert len(data) < embeddings.MAX_IMPORT_BYTES
    assert embeddings.unpack(data).id_tokens.shape == (4, 32, 2048)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (b"hello world, not a face", "bad header"),
        (struct.pack("<Q", 10**9) + b"{}", "bad header"),
        (struct.pack("<Q", 4) + b"[1,]", "bad header"),
    ],
)
def test_rejects_non_safetensors(data: bytes, message: str) -> None:
    with pytest.raises(ImportRejected, match=message):
        embeddings.unpack(data)


def test_rejects_oversized() -> None:
    data = embeddings.pack(make_embedding(1))
    with pytest.raises(ImportRejected, match="too large"):
        embeddings.unpack(data, max_bytes=len(data) - 1)


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        (_tensors(extra=np.zeros(3, np.float32)), "exactly"),
        ({k: v for k, v in _tensors().items() if k != "arcface"}, "exactly"),
        (_tensors(id_tokens=np.zeros((4, 16), np.float16)), "3-D"),
        (_tensors(uncond_tokens=np.zeros((4, 15), np.float16)), "uncond_tokens"),
        (_tensors(arcface=np.zeros((3, 8), np.float32)), "arcface has 3 rows"),
        (_tensors(id_tokens=np.zeros((2, 4, 16), np.int32)), "float16 or float32"),
        (_tensors(arcface=np.zeros((2, 8), np.float64)), "float16 or float32"),
        (_tensors(uncond_tokens=np.zeros((4, 16), np.float32)), "dtype"),
        (_tensors(id_tokens=np.full((2, 4, 16), np.nan, np.float16)), "NaN"),
        (_tensors(id_tokens=np.zeros((0, 4, 16), np.float16)), "reference"),
    ],
)
def test_rejects_wrong_tensors(tensors: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(ImportRejected, match=message):
        embeddings.unpack(_raw(tensors))


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"format": "something.else"}, "format"),
        ({"version": "2"}, "version"),
        ({"fingerprint": ""}, "fingerprint"),
        ({"fingerprint": "bad fingerprint with spaces"}, "fingerprint"),
        ({"width": "2048"}, "declares width"),
        ({"n_refs": "5"}, "declares n_refs"),
    ],
)
def test_rejects_wrong_metadata(meta: dict[str, str], message: str) -> None:
    with pytest.raises(ImportRejected, match=message):
        embeddings.unpack(_raw(_tensors(), **meta))


def test_rejects_truncated_tensor_data() -> None:
    data = embeddings.pack(make_embedding(1))
    with pytest.raises(ImportRejected, match="corrupt"):
        embeddings.unpack(data[:-10])


def test_rejects_too_many_refs() -> None:
    data = embeddings.pack(make_embedding(3))
    with pytest.raises(ImportRejected, match="1 to 2"):
        embeddings.unpack(data, max_refs=2)


def test_metadata_must_be_strings() -> None:
    header = json.dumps({"__metadata__": {"format": 1}}).encode()
    with pytest.raises(ImportRejected, match="map of strings"):
        embeddings.read_metadata(struct.pack("<Q", len(header)) + header)


def test_append_references() -> None:
    base, extra = make_embedding(2, seed=1), make_embedding(1, seed=2)
    merged = embeddings.append_references(base, extra)
    assert merged.n_refs == 3
    np.testing.assert_array_equal(merged.id_tokens[2], extra.id_tokens[0])
    np.testing.assert_array_equal(merged.uncond_tokens, base.uncond_tokens)
    with pytest.raises(ImportRejected, match="other model weights"):
        embeddings.append_references(base, make_embedding(1, fingerprint="other"))
    with pytest.raises(ImportRejected, match="other dimensions"):
        embeddings.append_references(base, make_embedding(1, width=32))
    with pytest.raises(ImportRejected, match="at most 2"):
        embeddings.append_references(base, extra, max_refs=2)


def test_mean_arcface_is_unit_length() -> None:
    e = make_embedding(3)
    mean = embeddings.mean_arcface(e)
    assert mean.dtype == np.float32 and mean.shape == (8,)
    assert abs(float(np.linalg.norm(mean)) - 1.0) < 1e-5
