"""BFL-layout FLUX state dict → diffusers `FluxTransformer2DModel` keys (PULID_SPEC.md §9.3).

A parameterised version of diffusers' checkpoint converter: widths, the single-block MLP width and
the block counts are read from the tensors, so tiny models convert as well as FLUX.1-dev.
"""

from __future__ import annotations

import logging
import re

import torch

log = logging.getLogger(__name__)

BFL_PREFIX = "model.diffusion_model."
_DOUBLE = re.compile(r"^double_blocks\.(\d+)\.")
_SINGLE = re.compile(r"^single_blocks\.(\d+)\.")
_EMBEDDERS = {
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "txt_in": "context_embedder",
    "img_in": "x_embedder",
    "final_layer.linear": "proj_out",
}
_DOUBLE_RENAMES = {
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
}
_DOUBLE_NORMS = {
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
}
_DOUBLE_QKV = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
_SINGLE_NORMS = {
    "norm.query_norm.scale": "attn.norm_q.weight",
    "norm.key_norm.scale": "attn.norm_k.weight",
}


class FluxConvertError(ValueError):
    """A BFL-layout FLUX state dict cannot be converted."""


class _Source:
    """The BFL state dict being consumed: every key must be used exactly once."""

    def __init__(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.tensors = {k.removeprefix(BFL_PREFIX): v for k, v in state_dict.items()}

    def take(self, key: str) -> torch.Tensor:
        if key not in self.tensors:
            raise FluxConvertError(f"BFL FLUX state dict: missing key {key}")
        return self.tensors.pop(key)

    def shape(self, key: str) -> tuple[int, ...]:
        if key not in self.tensors:
            raise FluxConvertError(f"BFL FLUX state dict: missing key {key}")
        return tuple(self.tensors[key].shape)

    def has(self, key: str) -> bool:
        return key in self.tensors

    def finish(self) -> None:
        if self.tensors:
            names = ", ".join(sorted(self.tensors)[:5])
            raise FluxConvertError(
                f"BFL FLUX state dict: {len(self.tensors)} unexpected key(s): {names}"
            )


def _count(src: _Source, pattern: re.Pattern[str]) -> int:
    return 1 + max((int(m[1]) for k in src.tensors if (m := pattern.match(k))), default=-1)


def _move(src: _Source, out: dict[str, torch.Tensor], bfl: str, diffusers: str) -> None:
    """Rename a Linear (weight and bias)."""
    out[f"{diffusers}.weight"] = src.take(f"{bfl}.weight")
    out[f"{diffusers}.bias"] = src.take(f"{bfl}.bias")


def _split(
    src: _Source, out: dict[str, torch.Tensor], bfl: str, names: tuple[str, ...], sizes: list[int]
) -> None:
    """Split a fused Linear's rows into several Linears (weight and bias)."""
    for part in ("weight", "bias"):
        chunks = torch.split(src.take(f"{bfl}.{part}"), sizes, dim=0)
        out.update(
            {
                f"{name}.{part}": chunk.contiguous()
                for name, chunk in zip(names, chunks, strict=True)
            }
        )


def _convert_double(src: _Source, out: dict[str, torch.Tensor], i: int, hidden: int) -> None:
    bfl, dif = f"double_blocks.{i}.", f"transformer_blocks.{i}."
    for old, new in _DOUBLE_RENAMES.items():
        _move(src, out, bfl + old, dif + new)
    for old, new in _DOUBLE_NORMS.items():
        out[dif + new] = src.take(bfl + old)
    for old, names in _DOUBLE_QKV.items():
        _split(src, out, bfl + old, tuple(dif + n for n in names), [hidden] * 3)


def _convert_single(src: _Source, out: dict[str, torch.Tensor], i: int, hidden: int) -> None:
    bfl, dif = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
    mlp = src.shape(bfl + "linear1.weight")[0] - 3 * hidden
    names = tuple(dif + n for n in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"))
    _split(src, out, bfl + "linear1", names, [hidden, hidden, hidden, mlp])
    _move(src, out, bfl + "linear2", dif + "proj_out")
    _move(src, out, bfl + "modulation.lin", dif + "norm.linear")
    for old, new in _SINGLE_NORMS.items():
        out[dif + new] = src.take(bfl + old)


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    """BFL final modulation is (shift, scale); diffusers `norm_out` expects (scale, shift)."""
    shift, scale = t.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


def convert_bfl_flux_to_diffusers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a BFL-layout FLUX transformer state dict onto diffusers `FluxTransformer2DModel` keys."""
    src = _Source(state_dict)
    hidden = src.shape("img_in.weight")[0]
    n_double, n_single = _count(src, _DOUBLE), _count(src, _SINGLE)
    out: dict[str, torch.Tensor] = {}
    for old, new in _EMBEDDERS.items():
        if not old.startswith("guidance_in") or src.has(f"{old}.weight"):
            _move(src, out, old, new)
    for i in range(n_double):
        _convert_double(src, out, i, hidden)
    for i in range(n_single):
        _convert_single(src, out, i, hidden)
    for part in ("weight", "bias"):
        out[f"norm_out.linear.{part}"] = _swap_halves(
            src.take(f"final_layer.adaLN_modulation.1.{part}")
        )
    src.finish()
    log.info("converted BFL FLUX state dict: %d double, %d single blocks", n_double, n_single)
    return out


def flux_config_from_bfl(
    state_dict: dict[str, torch.Tensor],
    *,
    num_heads: int,
    axes_dims_rope: tuple[int, ...] = (16, 56, 56),
) -> dict[str, object]:
    """`FluxTransformer2DModel` constructor arguments for a BFL-layout state dict."""
    src = _Source(state_dict)
    hidden, in_channels = src.shape("img_in.weight")
    mlp = src.shape("double_blocks.0.img_mlp.0.weight")[0]
    if mlp != 4 * hidden or hidden % num_heads:
        raise FluxConvertError(
            f"diffusers FLUX needs mlp_ratio 4 and a width divisible by the heads: "
            f"hidden {hidden}, mlp {mlp}, heads {num_heads}"
        )
    out_channels = src.shape("final_layer.linear.weight")[0]
    return {
        "patch_size": 1,
        "in_channels": in_channels,
        "out_channels": None if out_channels == in_channels else out_channels,
        "num_layers": _count(src, _DOUBLE),
        "num_single_layers": _count(src, _SINGLE),
        "attention_head_dim": hidden // num_heads,
        "num_attention_heads": num_heads,
        "joint_attention_dim": src.shape("txt_in.weight")[1],
        "pooled_projection_dim": src.shape("vector_in.in_layer.weight")[1],
        "guidance_embeds": src.has("guidance_in.in_layer.weight"),
        "axes_dims_rope": tuple(axes_dims_rope),
    }
