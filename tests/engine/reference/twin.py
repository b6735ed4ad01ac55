"""Tiny-twin fixtures (PULID_SPEC.md §9.2, §9.4): one random BFL FLUX mapped into diffusers,
tiny PuLID weights, matching inputs for both layouts, and a mixed oracle (diffusers blocks,
reference CA at the official injection points)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import FluxTransformer2DModel

from engine.flux_convert import convert_bfl_flux_to_diffusers, flux_config_from_bfl
from engine.pulid_weights import random_pulid_state_dict

from . import flux_bfl, pulid_math

ENC_HEADS = 4
CA_HEADS = 2
VIT_TOKENS = 17
TINY_PULID = dict(
    num_ca=4, ca_dim=128, ca_kv_dim=64, ca_dim_head=32, ca_heads=CA_HEADS, enc_dim=64,
    enc_depth=5, enc_dim_head=16, enc_heads=ENC_HEADS, num_id_token=5, num_queries=8,
    output_dim=64, ff_mult=2, id_in_dim=1280, vit_dim=1024, mapping_hidden=1024,
)  # fmt: skip


@dataclass
class Twin:
    params: flux_bfl.BflParams
    bfl: dict[str, torch.Tensor]
    transformer: FluxTransformer2DModel


def build_twin(seed: int = 0) -> Twin:
    params = flux_bfl.BflParams()
    bfl = flux_bfl.random_state_dict(params, seed)
    config = flux_config_from_bfl(bfl, num_heads=params.num_heads, axes_dims_rope=params.axes_dim)
    transformer = FluxTransformer2DModel(**config)
    transformer.load_state_dict(convert_bfl_flux_to_diffusers(bfl), strict=True)
    return Twin(params, bfl, transformer.eval().requires_grad_(False))


def tiny_pulid_state_dict(seed: int = 1) -> dict[str, torch.Tensor]:
    return random_pulid_state_dict(**TINY_PULID, seed=seed)


def id_inputs(batch: int = 1, images: int | None = None, seed: int = 2):
    """id_cond (B, 1280) or (B, N, 1280) and five (B, 17·N, 1024) ViT hidden states."""
    gen = torch.Generator().manual_seed(seed)
    n = images or 1
    shape = (batch, images, 1280) if images else (batch, 1280)
    id_cond = torch.randn(shape, generator=gen)
    vit = [torch.randn(batch, VIT_TOKENS * n, 1024, generator=gen) for _ in range(5)]
    return id_cond, vit


def flux_inputs(batch: int = 1, txt_len: int = 7, seed: int = 3) -> dict[str, torch.Tensor]:
    """Diffusers-layout inputs: 4×4 token grid, t = 0.7, guidance 4.0 (§9.4)."""
    gen = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    img_ids = torch.stack([torch.zeros(16), rows.flatten(), cols.flatten()], dim=-1).float()
    return {
        "hidden_states": torch.randn(batch, 16, 64, generator=gen),
        "encoder_hidden_states": torch.randn(batch, txt_len, 48, generator=gen),
        "pooled_projections": torch.randn(batch, 32, generator=gen),
        "timestep": torch.full((batch,), 0.7),
        "guidance": torch.full((batch,), 4.0),
        "img_ids": img_ids,
        "txt_ids": torch.zeros(txt_len, 3),
    }


def bfl_inputs(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same inputs in BFL form (3-D ids, raw t and guidance)."""
    batch = inputs["hidden_states"].shape[0]
    return {
        "img": inputs["hidden_states"],
        "img_ids": inputs["img_ids"].expand(batch, -1, -1),
        "txt": inputs["encoder_hidden_states"],
        "txt_ids": inputs["txt_ids"].expand(batch, -1, -1),
        "timesteps": inputs["timestep"],
        "y": inputs["pooled_projections"],
        "guidance": inputs["guidance"],
    }


def reference_injector(pulid: dict[str, torch.Tensor], id_tokens: torch.Tensor, weight: float):
    """The official `img + id_weight · CA_k(id, img)` delta, from the reference CA."""

    def inject(index: int, img: torch.Tensor) -> torch.Tensor:
        return weight * pulid_math.cross_attention(pulid, index, id_tokens, img, CA_HEADS)

    return inject


def run_bfl(twin: Twin, inputs: dict[str, torch.Tensor], inject=None) -> torch.Tensor:
    return flux_bfl.forward(twin.bfl, twin.params, **bfl_inputs(inputs), inject=inject)


def run_mixed(tr: FluxTransformer2DModel, inputs: dict[str, torch.Tensor], inject) -> torch.Tensor:
    """Diffusers' own blocks (called via `.forward`, bypassing hooks) with the official loop."""
    hs = tr.x_embedder(inputs["hidden_states"])
    t, g = inputs["timestep"] * 1000, inputs["guidance"] * 1000
    temb = tr.time_text_embed(t, g, inputs["pooled_projections"])
    ehs = tr.context_embedder(inputs["encoder_hidden_states"])
    rope = tr.pos_embed(torch.cat([inputs["txt_ids"], inputs["img_ids"]], dim=0))
    ca_index = 0
    loops = ((tr.transformer_blocks, 2), (tr.single_transformer_blocks, 4))
    for blocks, every in loops:
        for i, block in enumerate(blocks):
            ehs, hs = block.forward(
                hidden_states=hs, encoder_hidden_states=ehs, temb=temb, image_rotary_emb=rope
            )
            if i % every == 0 and inject is not None:
                hs = hs + inject(ca_index, hs)
                ca_index += 1
    return tr.proj_out(tr.norm_out(hs, temb))
