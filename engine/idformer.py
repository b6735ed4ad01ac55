"""PuLID-FLUX modules: the IDFormer identity encoder and the PerceiverAttentionCA injector.

Module and parameter names follow the official layout (PULID_SPEC.md §2, §3.1, §4.1) so the
official weight file loads strictly with no key remapping.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

NUM_VIT_SCALES = 5


@dataclass(frozen=True)
class IDFormerConfig:
    """IDFormer hyperparameters; the defaults are the official PuLID-FLUX ones."""

    dim: int = 1024
    depth: int = 10
    dim_head: int = 64
    heads: int = 16
    num_id_token: int = 5
    num_queries: int = 32
    output_dim: int = 2048
    ff_mult: int = 4
    id_in_dim: int = 1280
    vit_dim: int = 1024
    mapping_hidden: int = 1024


@dataclass(frozen=True)
class CAConfig:
    """PerceiverAttentionCA hyperparameters; the defaults are the official PuLID-FLUX ones."""

    dim: int = 3072
    kv_dim: int = 2048
    dim_head: int = 128
    heads: int = 16


def perceiver_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int
) -> torch.Tensor:
    """Official PuLID attention: q and k each × dim_head^-1/4, softmax in fp32 cast back.

    q is (B, N, inner); k and v are (B or 1, M, inner): a batch of 1 broadcasts.
    """
    batch, length, inner = q.shape
    dim_head = inner // heads
    q, k, v = (
        t.reshape(t.shape[0], t.shape[1], heads, dim_head).transpose(1, 2) for t in (q, k, v)
    )
    scale = 1 / math.sqrt(math.sqrt(dim_head))
    weight = (q * scale) @ (k * scale).transpose(-2, -1)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    out = weight @ v
    return out.permute(0, 2, 1, 3).reshape(batch, length, inner)


class PerceiverAttention(nn.Module):
    """IDFormer attention: latents attend to [context; latents] (official `PerceiverAttention`)."""

    def __init__(self, dim: int, dim_head: int, heads: int) -> None:
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        latents = self.norm2(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
        return self.to_out(perceiver_attention(q, k, v, self.heads))


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    """Official FeedForward: LN → Linear → exact GELU → Linear, no biases."""
    inner = dim * mult
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, inner, bias=False),
        nn.GELU(),
        nn.Linear(inner, dim, bias=False),
    )


def mapping_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Official mapping MLP; parameters sit at Sequential indices 0, 1, 3, 4, 6."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.LayerNorm(hidden),
        nn.LeakyReLU(),
        nn.Linear(hidden, hidden),
        nn.LayerNorm(hidden),
        nn.LeakyReLU(),
        nn.Linear(hidden, out_dim),
    )


class IDFormer(nn.Module):
    """Perceiver-resampler ID encoder: (id_cond, 5 ViT states) → (B, num_queries, output_dim)."""

    def __init__(self, config: IDFormerConfig | None = None) -> None:
        super().__init__()
        cfg = config or IDFormerConfig()
        if cfg.depth % NUM_VIT_SCALES:
            raise ValueError(f"IDFormer depth must be a multiple of 5, got {cfg.depth}")
        self.config = cfg
        self.latents = nn.Parameter(torch.randn(1, cfg.num_queries, cfg.dim) * cfg.dim**-0.5)
        self.proj_out = nn.Parameter(cfg.dim**-0.5 * torch.randn(cfg.dim, cfg.output_dim))
        hidden = cfg.mapping_hidden
        out = cfg.dim * cfg.num_id_token
        self.id_embedding_mapping = mapping_mlp(cfg.id_in_dim, hidden, out)
        for i in range(NUM_VIT_SCALES):
            setattr(self, f"mapping_{i}", mapping_mlp(cfg.vit_dim, hidden, cfg.dim))
        self.layers = nn.ModuleList(self._layer(cfg) for _ in range(cfg.depth))

    @staticmethod
    def _layer(cfg: IDFormerConfig) -> nn.ModuleList:
        attn = PerceiverAttention(cfg.dim, cfg.dim_head, cfg.heads)
        return nn.ModuleList([attn, feed_forward(cfg.dim, cfg.ff_mult)])

    def forward(
        self, id_cond: torch.Tensor, vit_hidden_states: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """id_cond (B, id_in_dim) or (B, N, id_in_dim); 5 hidden states (B, T·N, vit_dim)."""
        self._check_inputs(id_cond, vit_hidden_states)
        dtype = self.latents.dtype
        x = id_cond.to(dtype)
        n_images = x.shape[1] if x.ndim == 3 else 1
        latents = self.latents.repeat(x.shape[0], 1, 1)
        idt = self.id_embedding_mapping(x)
        idt = idt.reshape(-1, self.config.num_id_token * n_images, self.config.dim)
        latents = torch.cat((latents, idt), dim=1)
        per_scale = self.config.depth // NUM_VIT_SCALES
        for i, hidden in enumerate(vit_hidden_states):
            ctx = torch.cat((idt, getattr(self, f"mapping_{i}")(hidden.to(dtype))), dim=1)
            for attn, ff in self.layers[i * per_scale : (i + 1) * per_scale]:
                latents = attn(ctx, latents) + latents
                latents = ff(latents) + latents
        return latents[:, : self.config.num_queries] @ self.proj_out

    def _check_inputs(self, id_cond: torch.Tensor, hidden: Sequence[torch.Tensor]) -> None:
        cfg = self.config
        if id_cond.ndim not in (2, 3) or id_cond.shape[-1] != cfg.id_in_dim:
            raise ValueError(
                f"id_cond must be (B, {cfg.id_in_dim}) or (B, N, {cfg.id_in_dim}), "
                f"got {tuple(id_cond.shape)}"
            )
        if len(hidden) != NUM_VIT_SCALES:
            raise ValueError(f"vit_hidden_states must hold 5 tensors, got {len(hidden)}")
        for i, h in enumerate(hidden):
            if h.ndim != 3 or h.shape[0] != id_cond.shape[0] or h.shape[-1] != cfg.vit_dim:
                raise ValueError(
                    f"vit_hidden_states[{i}] must be (B={id_cond.shape[0]}, T, {cfg.vit_dim}), "
                    f"got {tuple(h.shape)}"
                )


class PerceiverAttentionCA(nn.Module):
    """PuLID cross-attention: image tokens (queries) attend to the ID tokens (§3.1)."""

    def __init__(self, config: CAConfig | None = None) -> None:
        super().__init__()
        cfg = config or CAConfig()
        inner = cfg.dim_head * cfg.heads
        self.config = cfg
        self.heads = cfg.heads
        self.norm1 = nn.LayerNorm(cfg.kv_dim)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.to_q = nn.Linear(cfg.dim, inner, bias=False)
        self.to_kv = nn.Linear(cfg.kv_dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """x: ID tokens (B or 1, T_id, kv_dim); latents: image tokens (B, N_img, dim)."""
        dtype = self.to_q.weight.dtype
        x = self.norm1(x.to(dtype))
        img = self.norm2(latents.to(dtype))
        q = self.to_q(img)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        return self.to_out(perceiver_attention(q, k, v, self.heads)).to(latents.dtype)
