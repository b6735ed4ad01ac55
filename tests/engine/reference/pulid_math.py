"""Test oracle: the official PuLID-FLUX formulas (PULID_SPEC.md §2, §3.1) as pure functions.

Written from the specification only, over raw official-layout state dicts (no modules), so it
shares no code with `engine/idformer.py`. Used only by tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

Weights = dict[str, torch.Tensor]
VIT_SCALES = 5
LN_EPS = 1e-5


def _ln(w: Weights, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), w[f"{name}.weight"], w[f"{name}.bias"], LN_EPS)


def _lin(w: Weights, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, w[f"{name}.weight"], w.get(f"{name}.bias"))


def official_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int
) -> torch.Tensor:
    """softmax_fp32((q·s)(k·s)ᵀ) v with s = dim_head^-1/4, per head; k/v batch 1 broadcasts."""
    batch, n, inner = q.shape
    dh = inner // heads
    k, v = k.expand(batch, -1, -1), v.expand(batch, -1, -1)
    qh, kh, vh = (t.unflatten(-1, (heads, dh)) for t in (q, k, v))
    s = dh**-0.25
    logits = torch.einsum("bnhd,bmhd->bhnm", qh * s, kh * s)
    probs = torch.softmax(logits.float(), dim=-1).to(logits.dtype)
    return torch.einsum("bhnm,bmhd->bnhd", probs, vh).reshape(batch, n, inner)


def _mapping(w: Weights, name: str, x: torch.Tensor) -> torch.Tensor:
    """Linear, LN, LeakyReLU(0.01), Linear, LN, LeakyReLU(0.01), Linear (indices 0, 1, 3, 4, 6)."""
    x = F.leaky_relu(_ln(w, f"{name}.1", _lin(w, f"{name}.0", x)), 0.01)
    x = F.leaky_relu(_ln(w, f"{name}.4", _lin(w, f"{name}.3", x)), 0.01)
    return _lin(w, f"{name}.6", x)


def _encoder_attention(
    w: Weights, name: str, ctx: torch.Tensor, lat: torch.Tensor, heads: int
) -> torch.Tensor:
    c, lat_n = _ln(w, f"{name}.norm1", ctx), _ln(w, f"{name}.norm2", lat)
    q = _lin(w, f"{name}.to_q", lat_n)
    k, v = _lin(w, f"{name}.to_kv", torch.cat([c, lat_n], dim=1)).chunk(2, dim=-1)
    return _lin(w, f"{name}.to_out", official_attention(q, k, v, heads))


def _encoder_ff(w: Weights, name: str, x: torch.Tensor) -> torch.Tensor:
    hidden = F.gelu(_lin(w, f"{name}.1", _ln(w, f"{name}.0", x)))
    return _lin(w, f"{name}.3", hidden)


def idformer(
    w: Weights, id_cond: torch.Tensor, vit: Sequence[torch.Tensor], heads: int
) -> torch.Tensor:
    """IDFormer forward (§2 steps 1-6) on `pulid_encoder.*` weights."""
    p = "pulid_encoder"
    latents = w[f"{p}.latents"]
    dim, n_query = latents.shape[2], latents.shape[1]
    depth = len({k.split(".")[2] for k in w if k.startswith(f"{p}.layers.")})
    n_images = id_cond.shape[1] if id_cond.dim() == 3 else 1
    id_tok = _mapping(w, f"{p}.id_embedding_mapping", id_cond)
    id_tok = id_tok.reshape(id_cond.shape[0], -1, dim)
    assert id_tok.shape[1] % n_images == 0
    lat = torch.cat([latents.expand(id_cond.shape[0], -1, -1), id_tok], dim=1)
    per_scale = depth // VIT_SCALES
    for i in range(VIT_SCALES):
        ctx = torch.cat([id_tok, _mapping(w, f"{p}.mapping_{i}", vit[i])], dim=1)
        for layer in range(i * per_scale, (i + 1) * per_scale):
            lat = lat + _encoder_attention(w, f"{p}.layers.{layer}.0", ctx, lat, heads)
            lat = lat + _encoder_ff(w, f"{p}.layers.{layer}.1", lat)
    return torch.matmul(lat[:, :n_query], w[f"{p}.proj_out"])


def cross_attention(
    w: Weights, index: int, id_tokens: torch.Tensor, img: torch.Tensor, heads: int
) -> torch.Tensor:
    """PerceiverAttentionCA number `index` (§3.1): image tokens attend to the ID tokens."""
    name = f"pulid_ca.{index}"
    id_n, img_n = _ln(w, f"{name}.norm1", id_tokens), _ln(w, f"{name}.norm2", img)
    kv_weight = w[f"{name}.to_kv.weight"]
    inner = kv_weight.shape[0] // 2
    k = F.linear(id_n, kv_weight[:inner])
    v = F.linear(id_n, kv_weight[inner:])
    q = _lin(w, f"{name}.to_q", img_n)
    return _lin(w, f"{name}.to_out", official_attention(q, k, v, heads))
