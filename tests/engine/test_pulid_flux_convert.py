"""BFL → diffusers FLUX key conversion (spec §9.3), parameterised for tiny models."""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxTransformer2DModel

from engine.flux_convert import (
    FluxConvertError,
    convert_bfl_flux_to_diffusers,
    flux_config_from_bfl,
)

try:
    from .reference import flux_bfl
except ImportError:
    from reference import flux_bfl


@pytest.fixture(scope="module")
def bfl() -> dict[str, torch.Tensor]:
    return flux_bfl.random_state_dict(flux_bfl.BflParams(), seed=0)


def test_conversion_fills_every_diffusers_key(bfl) -> None:
    config = flux_config_from_bfl(bfl, num_heads=4, axes_dims_rope=(8, 12, 12))
    assert config["num_layers"] == 3 and config["num_single_layers"] == 6
    assert config["attention_head_dim"] == 32 and config["guidance_embeds"] is True
    model = FluxTransformer2DModel(**config)
    converted = convert_bfl_flux_to_diffusers(bfl)
    assert converted.keys() == model.state_dict().keys()
    model.load_state_dict(converted, strict=True)


def test_single_block_split_and_final_swap(bfl) -> None:
    converted = convert_bfl_flux_to_diffusers(bfl)
    linear1 = bfl["single_blocks.5.linear1.weight"]
    parts = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
    rebuilt = torch.cat([converted[f"single_transformer_blocks.5.{p}.weight"] for p in parts])
    assert torch.equal(rebuilt, linear1)
    assert converted["single_transformer_blocks.5.proj_mlp.weight"].shape == (512, 128)
    shift, scale = bfl["final_layer.adaLN_modulation.1.bias"].chunk(2)
    assert torch.equal(converted["norm_out.linear.bias"], torch.cat([scale, shift]))
    qkv = bfl["double_blocks.1.txt_attn.qkv.bias"]
    assert torch.equal(converted["transformer_blocks.1.attn.add_v_proj.bias"], qkv[256:])


def test_prefixed_checkpoint_converts_the_same(bfl) -> None:
    prefixed = {f"model.diffusion_model.{k}": v for k, v in bfl.items()}
    plain, converted = convert_bfl_flux_to_diffusers(bfl), convert_bfl_flux_to_diffusers(prefixed)
    assert plain.keys() == converted.keys()


def test_missing_and_unexpected_keys_are_named(bfl) -> None:
    broken = dict(bfl)
    del broken["double_blocks.2.txt_attn.norm.key_norm.scale"]
    with pytest.raises(
        FluxConvertError, match="missing key double_blocks.2.txt_attn.norm.key_norm"
    ):
        convert_bfl_flux_to_diffusers(broken)
    extra = {**bfl, "pulid_ca.0.norm1.weight": torch.ones(2)}
    with pytest.raises(FluxConvertError, match=r"unexpected key\(s\): pulid_ca.0.norm1.weight"):
        convert_bfl_flux_to_diffusers(extra)


def test_config_refuses_widths_diffusers_cannot_host(bfl) -> None:
    with pytest.raises(FluxConvertError, match="heads 3"):
        flux_config_from_bfl(bfl, num_heads=3)
