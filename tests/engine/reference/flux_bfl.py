"""Test oracle: a BFL-layout FLUX transformer with the official PuLID injection, as pure functions.

Written from the FLUX/PuLID math of PULID_SPEC.md §3.2 and §9 (double/single blocks with adaLN
modulation, QK RMSNorm, 3-axis RoPE built in float64, timestep sinusoids, final adaLN layer) over
a raw BFL-layout state dict. Used only by tests, as the tiny-twin oracle.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Weights = dict[str, torch.Tensor]
# (ca_index, image tokens) -> delta to add, already weighted; None means no injection
Injector = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class BflParams:
    """BFL `FluxParams` of the tiny twin (§9.2)."""

    in_channels: int = 64
    vec_in_dim: int = 32
    context_in_dim: int = 48
    hidden_size: int = 128
    mlp_ratio: float = 4.0
    num_heads: int = 4
    depth: int = 3
    depth_single_blocks: int = 6
    axes_dim: tuple[int, ...] = (8, 12, 12)
    theta: int = 10_000
    guidance_embed: bool = True

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)


def _linear_shapes(p: BflParams) -> dict[str, tuple[int, int]]:
    h, m = p.hidden_size, p.mlp_hidden
    shapes = {
        "img_in": (h, p.in_channels),
        "txt_in": (h, p.context_in_dim),
        "time_in.in_layer": (h, 256),
        "time_in.out_layer": (h, h),
        "vector_in.in_layer": (h, p.vec_in_dim),
        "vector_in.out_layer": (h, h),
        "final_layer.linear": (p.in_channels, h),
        "final_layer.adaLN_modulation.1": (2 * h, h),
    }
    if p.guidance_embed:
        shapes |= {"guidance_in.in_layer": (h, 256), "guidance_in.out_layer": (h, h)}
    for i in range(p.depth):
        for s in ("img", "txt"):
            b = f"double_blocks.{i}.{s}_"
            shapes |= {f"{b}mod.lin": (6 * h, h), f"{b}attn.qkv": (3 * h, h)}
            shapes |= {f"{b}attn.proj": (h, h), f"{b}mlp.0": (m, h), f"{b}mlp.2": (h, m)}
    for i in range(p.depth_single_blocks):
        b = f"single_blocks.{i}."
        shapes |= {f"{b}linear1": (3 * h + m, h), f"{b}linear2": (h, h + m)}
        shapes |= {f"{b}modulation.lin": (3 * h, h)}
    return shapes


def _norm_scale_keys(p: BflParams) -> list[str]:
    keys = []
    for i in range(p.depth):
        for s in ("img", "txt"):
            keys += [f"double_blocks.{i}.{s}_attn.norm.{n}_norm.scale" for n in ("query", "key")]
    for i in range(p.depth_single_blocks):
        keys += [f"single_blocks.{i}.norm.{n}_norm.scale" for n in ("query", "key")]
    return keys


def random_state_dict(p: BflParams, seed: int = 0) -> Weights:
    """Seeded random BFL-layout weights: unit-gain Linears with biases, RMSNorm scales near 1."""
    gen = torch.Generator().manual_seed(seed)
    sd: Weights = {}
    for name, (rows, cols) in _linear_shapes(p).items():
        sd[f"{name}.weight"] = torch.randn(rows, cols, generator=gen) / math.sqrt(cols)
        sd[f"{name}.bias"] = 0.05 * torch.randn(rows, generator=gen)
    head_dim = p.hidden_size // p.num_heads
    for key in _norm_scale_keys(p):
        sd[key] = 1.0 + 0.1 * torch.randn(head_dim, generator=gen)
    return sd


# ----------------------------------------------------------------------------- math helpers
def _lin(w: Weights, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, w[f"{name}.weight"], w[f"{name}.bias"])


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10_000.0):
    """BFL sinusoid: t·1000, frequencies exp(-ln(max_period)·k/half), [cos, sin]."""
    t = 1000.0 * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(t.dtype)


def _mlp_embed(w: Weights, name: str, x: torch.Tensor) -> torch.Tensor:
    return _lin(w, f"{name}.out_layer", F.silu(_lin(w, f"{name}.in_layer", x)))


def rope(pos: torch.Tensor, dim: int, theta: int) -> torch.Tensor:
    """Rotation matrices (B, L, dim/2, 2, 2) built in float64, returned as float32."""
    omega = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = pos.to(torch.float64)[..., None] * omega
    cos, sin = torch.cos(angles), torch.sin(angles)
    rot = torch.stack([cos, -sin, sin, cos], dim=-1)
    return rot.unflatten(-1, (2, 2)).float()


def position_embedding(ids: torch.Tensor, p: BflParams) -> torch.Tensor:
    parts = [rope(ids[..., i], d, p.theta) for i, d in enumerate(p.axes_dim)]
    return torch.cat(parts, dim=-3).unsqueeze(1)


def apply_rope(x: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    pairs = x.float().reshape(*x.shape[:-1], -1, 1, 2)
    out = pe[..., 0] * pairs[..., 0] + pe[..., 1] * pairs[..., 1]
    return out.reshape(*x.shape).type_as(x)


def rms_norm(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    normed = xf * torch.rsqrt(torch.mean(xf**2, dim=-1, keepdim=True) + 1e-6)
    return normed.to(x.dtype) * scale


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pe: torch.Tensor):
    q, k = apply_rope(q, pe), apply_rope(k, pe)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).flatten(2)


def _modulation(w: Weights, name: str, vec: torch.Tensor, parts: int) -> list[torch.Tensor]:
    return list(_lin(w, name, F.silu(vec))[:, None, :].chunk(parts, dim=-1))


def _layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), eps=1e-6)


def _qkv(w: Weights, prefix: str, x: torch.Tensor, heads: int):
    """(B, L, 3H) → q, k, v (B, heads, L, head_dim); q, k through the QK RMSNorm."""
    q, k, v = x.unflatten(-1, (3, heads, -1)).permute(2, 0, 3, 1, 4)
    q = rms_norm(q, w[f"{prefix}.query_norm.scale"])
    k = rms_norm(k, w[f"{prefix}.key_norm.scale"])
    return q.to(v), k.to(v), v


# ----------------------------------------------------------------------------- blocks
def double_block(w: Weights, i: int, img, txt, vec, pe, p: BflParams):
    b = f"double_blocks.{i}."
    streams = {}
    for s, x in (("img", img), ("txt", txt)):
        shift1, scale1, gate1, shift2, scale2, gate2 = _modulation(w, f"{b}{s}_mod.lin", vec, 6)
        modulated = (1 + scale1) * _layer_norm(x) + shift1
        qkv = _lin(w, f"{b}{s}_attn.qkv", modulated)
        streams[s] = (_qkv(w, f"{b}{s}_attn.norm", qkv, p.num_heads), gate1, shift2, scale2, gate2)
    (tq, tk, tv), (iq, ik, iv) = streams["txt"][0], streams["img"][0]
    joint = attention(torch.cat([tq, iq], 2), torch.cat([tk, ik], 2), torch.cat([tv, iv], 2), pe)
    outs = {"txt": joint[:, : txt.shape[1]], "img": joint[:, txt.shape[1] :]}
    results = {}
    for s, x in (("img", img), ("txt", txt)):
        _, gate1, shift2, scale2, gate2 = streams[s]
        x = x + gate1 * _lin(w, f"{b}{s}_attn.proj", outs[s])
        hidden = (1 + scale2) * _layer_norm(x) + shift2
        mlp = _lin(w, f"{b}{s}_mlp.2", F.gelu(_lin(w, f"{b}{s}_mlp.0", hidden), approximate="tanh"))
        results[s] = x + gate2 * mlp
    return results["img"], results["txt"]


def single_block(w: Weights, i: int, x, vec, pe, p: BflParams):
    b = f"single_blocks.{i}."
    shift, scale, gate = _modulation(w, f"{b}modulation.lin", vec, 3)
    modulated = (1 + scale) * _layer_norm(x) + shift
    qkv, mlp = torch.split(_lin(w, f"{b}linear1", modulated), [3 * p.hidden_size, p.mlp_hidden], -1)
    q, k, v = _qkv(w, f"{b}norm", qkv, p.num_heads)
    attn = attention(q, k, v, pe)
    out = _lin(w, f"{b}linear2", torch.cat([attn, F.gelu(mlp, approximate="tanh")], dim=2))
    return x + gate * out


def final_layer(w: Weights, x, vec):
    shift, scale = _lin(w, "final_layer.adaLN_modulation.1", F.silu(vec)).chunk(2, dim=1)
    x = (1 + scale[:, None, :]) * _layer_norm(x) + shift[:, None, :]
    return _lin(w, "final_layer.linear", x)


def forward(
    w: Weights,
    p: BflParams,
    *,
    img: torch.Tensor,
    img_ids: torch.Tensor,
    txt: torch.Tensor,
    txt_ids: torch.Tensor,
    timesteps: torch.Tensor,
    y: torch.Tensor,
    guidance: torch.Tensor | None,
    inject: Injector | None = None,
) -> torch.Tensor:
    """Official PuLID-FLUX forward: CA after double blocks i % 2 == 0 and single j % 4 == 0."""
    img, txt = _lin(w, "img_in", img), _lin(w, "txt_in", txt)
    vec = _mlp_embed(w, "time_in", timestep_embedding(timesteps))
    if p.guidance_embed:
        vec = vec + _mlp_embed(w, "guidance_in", timestep_embedding(guidance))
    vec = vec + _mlp_embed(w, "vector_in", y)
    pe = position_embedding(torch.cat([txt_ids, img_ids], dim=1), p)
    ca_index = 0
    for i in range(p.depth):
        img, txt = double_block(w, i, img, txt, vec, pe, p)
        if i % 2 == 0 and inject is not None:
            img = img + inject(ca_index, img)
            ca_index += 1
    x = torch.cat([txt, img], dim=1)
    n_txt = txt.shape[1]
    for j in range(p.depth_single_blocks):
        x = single_block(w, j, x, vec, pe, p)
        real_img, txt = x[:, n_txt:], x[:, :n_txt]
        if j % 4 == 0 and inject is not None:
            real_img = real_img + inject(ca_index, real_img)
            ca_index += 1
        x = torch.cat([txt, real_img], dim=1)
    return final_layer(w, x[:, n_txt:], vec)
