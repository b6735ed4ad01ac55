"""EVA tower (hidden-state indices, checkpoint layouts), fusion, identity encoding, fingerprints."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pulid_support import tiny_flux_adapter
from safetensors.torch import save_file

from engine import tiny
from engine.eva import EVA_TINY, EvaTower, EvaWeightsError, build_eva, load_eva_weights
from engine.identity import (
    FUSION_METHODS,
    FingerprintMismatch,
    IdentityEmbedding,
    IdentityEncoder,
    IdentityInputError,
    check_fingerprint,
    fuse,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def eva():
    return tiny.eva_model(seed=11)


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))


# --- EVA ----------------------------------------------------------------------------------


def test_hidden_states_are_the_inputs_of_blocks_4_8_12_16_20(eva, pixels) -> None:
    pooled, hidden = EvaTower(eva)(pixels)
    x = eva.patch_embed(pixels)
    x, rope = eva._pos_embed(x)
    x = eva.norm_pre(x)
    outputs = []
    for block in eva.blocks:
        x = block(x, rope=rope)
        outputs.append(x)  # outputs[i] = the sequence entering 0-based block i + 1
    expected = [outputs[i] for i in (3, 7, 11, 15, 19)]
    assert [h.shape for h in hidden] == [(2, 17, 32)] * 5  # CLS + 16 patches, no final norm
    for got, want in zip(hidden, expected, strict=True):
        assert torch.equal(got, want)
    head = eva.head(eva.norm(x)[:, 0])
    assert torch.allclose(pooled, F.normalize(head, dim=-1), atol=1e-6)
    assert torch.allclose(pooled.norm(dim=-1), torch.ones(2))


def _eva_clip_layout(state: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """timm Eva keys → the official EVA-CLIP checkpoint layout (a full CLIP, ``visual.`` tower)."""
    renames = {
        "attn.q_proj.bias": "attn.q_bias", "attn.v_proj.bias": "attn.v_bias",
        "attn.norm.": "attn.inner_attn_ln.", "mlp.fc1_g.": "mlp.w1.", "mlp.fc1_x.": "mlp.w2.",
        "mlp.norm.": "mlp.ffn_ln.", "mlp.fc2.": "mlp.w3.",
    }  # fmt: skip
    out = {}
    for key, value in state.items():
        for old, new in renames.items():
            key = key.replace(old, new)
        out["visual." + key] = value.clone()
    out["visual.rope.freqs_cos"] = torch.randn(16, 8)  # buffers the official file carries
    out["visual.rope.freqs_sin"] = torch.randn(16, 8)
    out["text.token_embedding.weight"] = torch.randn(10, 8)
    out["logit_scale"] = torch.tensor(4.6)
    assert sum(k.endswith("attn.q_bias") for k in out) == depth
    return out


def test_official_eva_clip_layout_loads_into_timm_tower(eva, pixels, tmp_path) -> None:
    path = tmp_path / "EVA02_CLIP_L_336_psz14_s6B.pt"
    torch.save(_eva_clip_layout(eva.state_dict(), EVA_TINY.depth), path)
    fresh = load_eva_weights(tiny.eva_model(seed=99), path)
    for key, value in eva.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    pooled, hidden = EvaTower(fresh)(pixels)
    ref_pooled, ref_hidden = EvaTower(eva)(pixels)
    assert torch.equal(pooled, ref_pooled) and torch.equal(hidden[-1], ref_hidden[-1])


def test_open_clip_timm_layout_loads_too(eva, tmp_path) -> None:
    path = tmp_path / "open_clip_model.safetensors"
    save_file({"visual.trunk." + k: v.contiguous() for k, v in eva.state_dict().items()}, path)
    fresh = load_eva_weights(tiny.eva_model(seed=98), path)
    assert torch.equal(fresh.head.weight, eva.head.weight)


def test_eva_weight_errors_are_clear(eva, tmp_path) -> None:
    with pytest.raises(EvaWeightsError, match="not found"):
        load_eva_weights(build_eva(EVA_TINY), tmp_path / "absent.pt")
    state = _eva_clip_layout(eva.state_dict(), EVA_TINY.depth)
    del state["visual.blocks.3.mlp.w3.weight"]
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(EvaWeightsError, match="do not fit"):
        load_eva_weights(build_eva(EVA_TINY), tmp_path / "broken.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EvaWeightsError, match="unreadable"):
        load_eva_weights(build_eva(EVA_TINY), tmp_path / "junk.pt")


# --- fusion -------------------------------------------------------------------------------


def _refs() -> torch.Tensor:
    a = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    b = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    return torch.stack([a, b])  # (n=2, Q=2, D=2)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("mean", [[2.0, 2.0], [0.0, 2.0]]),
        ("max", [[3.0, 4.0], [0.0, 3.0]]),
        ("max_token", [[3.0, 4.0], [0.0, 3.0]]),
        ("concat", [[1.0, 0.0], [0.0, 3.0], [3.0, 4.0], [0.0, 1.0]]),
    ],
)
def test_fusion_methods(method: str, expected) -> None:
    out = fuse(_refs(), method)
    assert out.shape[0] == 1 and torch.allclose(out[0], torch.tensor(expected))


def test_norm_id_weights_by_frobenius_norm() -> None:
    refs = _refs()
    na, nb = refs[0].norm(), refs[1].norm()  # sqrt(10), sqrt(26)
    expected = (na * refs[0] + nb * refs[1]) / (na + nb)
    assert torch.allclose(fuse(refs, "norm_id")[0], expected)
    assert set(FUSION_METHODS) == {"mean", "concat", "max", "norm_id", "max_token"}
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse(refs, "median")


def test_single_reference_fuses_to_itself() -> None:
    one = _refs()[:1]
    for method in FUSION_METHODS:
        assert torch.allclose(fuse(one, method), one)


# --- encoding -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder(eva):
    adapter = tiny_flux_adapter(tiny.flux_pipeline(seed=0).transformer, seed=5)
    return IdentityEncoder(EvaTower(eva), adapter, "tiny:test")


def _face(seed: int, size: int = 56):
    gen = torch.Generator().manual_seed(seed)
    arc = torch.randn(512, generator=gen).numpy() * 20  # raw ArcFace vectors are not unit length
    return SimpleNamespace(arcface=arc, eva_input=torch.randn(1, 3, size, size, generator=gen))


def test_encoder_feeds_raw_arcface_then_unit_clip_vector(encoder, monkeypatch) -> None:
    seen = {}
    original = encoder.adapter.pulid_encoder.forward

    def spy(id_cond, hidden):
        seen.setdefault("id_cond", id_cond)  # the first call; the uncond pass may follow
        seen.setdefault("hidden", hidden)
        return original(id_cond, hidden)

    monkeypatch.setattr(encoder.adapter.pulid_encoder, "forward", spy)
    faces = [_face(1), _face(2)]
    emb = encoder.encode(faces)
    id_cond = seen["id_cond"]
    assert id_cond.shape == (2, 1280)
    assert np.allclose(id_cond[:, :512].numpy(), np.stack([f.arcface for f in faces]))
    assert torch.allclose(id_cond[:, 512:].norm(dim=-1), torch.ones(2), atol=1e-5)
    assert [tuple(h.shape) for h in seen["hidden"]] == [(2, 17, 32)] * 5
    assert emb.id_tokens.shape == (2, 8, 64) and emb.uncond_tokens.shape == (1, 8, 64)
    assert emb.fingerprint == "tiny:test" and emb.arcface.shape == (2, 512)


def test_per_reference_tokens_match_single_encodes(encoder) -> None:
    both = encoder.encode([_face(1), _face(2)])
    alone = encoder.encode([_face(2)])
    assert torch.allclose(both.id_tokens[1:], alone.id_tokens, atol=1e-5)


def test_uncond_tokens_are_idformer_on_zeros_and_not_zero(encoder) -> None:
    uncond = encoder.uncond_tokens()
    cfg = encoder.adapter.encoder.config
    zeros = [torch.zeros(1, 17, cfg.vit_dim)] * 5
    with torch.no_grad():
        direct = encoder.adapter.encoder(torch.zeros(1, cfg.id_in_dim), zeros)
    assert torch.allclose(uncond, direct) and uncond.abs().sum() > 0


def test_bad_reference_inputs_are_refused(encoder) -> None:
    with pytest.raises(IdentityInputError, match="no reference"):
        encoder.encode([])
    with pytest.raises(IdentityInputError, match="eva_size=56"):
        encoder.encode([_face(1, size=64)])
    bad = _face(1)
    bad.arcface = np.full(512, np.nan, np.float32)
    with pytest.raises(IdentityInputError, match="512 finite"):
        encoder.encode([bad])


def test_fingerprint_mismatch_is_refused(encoder) -> None:
    emb = encoder.encode([_face(1)])
    check_fingerprint(emb.fingerprint, "tiny:test")
    with pytest.raises(FingerprintMismatch, match="other model weights"):
        check_fingerprint(emb.fingerprint, "flux-dev:0123")
    other = IdentityEmbedding(emb.id_tokens, emb.uncond_tokens, emb.arcface, "flux-dev:0123")
    with pytest.raises(FingerprintMismatch):
        emb.extend(other)
    both = emb.extend(encoder.encode([_face(2)]))
    assert both.n_refs == 2 and both.fused("mean").shape == (1, 8, 64)
