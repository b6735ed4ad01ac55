"""PuLID-FLUX weights: official key layout, strict validation, config inference, random weights.

The layout is the one of `pulid_flux_v0.9.x.safetensors` (PULID_SPEC.md §4.1): `pulid_encoder.*`
(the IDFormer) and `pulid_ca.N.*` (the cross-attention modules), loaded with no remapping.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from engine.idformer import CAConfig, IDFormer, IDFormerConfig, PerceiverAttentionCA

log = logging.getLogger(__name__)

ENCODER_PREFIX = "pulid_encoder."
CA_PREFIX = "pulid_ca."
OFFICIAL_ENCODER_CONFIG = IDFormerConfig()
OFFICIAL_CA_CONFIG = CAConfig()
OFFICIAL_NUM_CA = 20
ENCODER_KEY_COUNT = 172
CA_KEY_COUNT = 140
TOTAL_KEY_COUNT = ENCODER_KEY_COUNT + CA_KEY_COUNT
ENCODER_PARAM_COUNT = 151_398_400
CA_PARAM_COUNT = 419_635_200
TOTAL_PARAM_COUNT = ENCODER_PARAM_COUNT + CA_PARAM_COUNT
_MAX_NAMED = 5
_LAYER_INDEX = re.compile(r"^pulid_encoder\.layers\.(\d+)\.")

Shapes = dict[str, tuple[int, ...]]


class PulidWeightsError(ValueError):
    """A PuLID state dict or weight file does not have the expected layout."""


def expected_shapes(encoder: IDFormerConfig, ca: CAConfig, num_ca: int) -> Shapes:
    """Every key of the official layout with its shape, for the given configuration."""
    with torch.device("meta"):
        enc = IDFormer(encoder).state_dict()
        one_ca = PerceiverAttentionCA(ca).state_dict()
    shapes = {ENCODER_PREFIX + k: tuple(v.shape) for k, v in enc.items()}
    for i in range(num_ca):
        shapes.update({f"{CA_PREFIX}{i}.{k}": tuple(v.shape) for k, v in one_ca.items()})
    return shapes


def official_shapes() -> Shapes:
    """The 312 keys and shapes of the official PuLID-FLUX weight file."""
    return expected_shapes(OFFICIAL_ENCODER_CONFIG, OFFICIAL_CA_CONFIG, OFFICIAL_NUM_CA)


def check_state_dict(state_dict: dict[str, torch.Tensor], shapes: Shapes) -> None:
    """Raise PulidWeightsError naming missing, unexpected or mis-shaped keys."""
    missing = sorted(k for k in shapes if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in shapes)
    misshaped = sorted(
        f"{k} {tuple(state_dict[k].shape)} (expected {shapes[k]})"
        for k in shapes
        if k in state_dict and tuple(state_dict[k].shape) != shapes[k]
    )
    problems = [
        _describe("missing", missing),
        _describe("unexpected", unexpected),
        _describe("mis-shaped", misshaped),
    ]
    problems = [p for p in problems if p]
    if problems:
        raise PulidWeightsError("PuLID state dict: " + "; ".join(problems))


def _describe(kind: str, keys: list[str]) -> str:
    if not keys:
        return ""
    more = f" and {len(keys) - _MAX_NAMED} more" if len(keys) > _MAX_NAMED else ""
    return f"{len(keys)} {kind} key(s): {', '.join(keys[:_MAX_NAMED])}{more}"


def _shape(state_dict: dict[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise PulidWeightsError(f"PuLID state dict: missing key {key}")
    return tuple(state_dict[key].shape)


def _divide(total: int, heads: int, key: str) -> int:
    if heads <= 0 or total % heads:
        raise PulidWeightsError(
            f"PuLID state dict: {key} width {total} is not divisible by {heads} heads"
        )
    return total // heads


def infer_encoder_config(state_dict: dict[str, torch.Tensor], heads: int = 16) -> IDFormerConfig:
    """Read the IDFormer configuration from the shapes of an official-layout state dict."""
    _, num_queries, dim = _shape(state_dict, ENCODER_PREFIX + "latents")
    hidden, id_in_dim = _shape(state_dict, ENCODER_PREFIX + "id_embedding_mapping.0.weight")
    id_rows = _shape(state_dict, ENCODER_PREFIX + "id_embedding_mapping.6.weight")[0]
    q_key = ENCODER_PREFIX + "layers.0.0.to_q.weight"
    ff_key = ENCODER_PREFIX + "layers.0.1.1.weight"
    depth = 1 + max((int(m[1]) for k in state_dict if (m := _LAYER_INDEX.match(k))), default=-1)
    if depth <= 0 or depth % 5:
        raise PulidWeightsError(
            f"PuLID state dict: IDFormer depth {depth} (from {ENCODER_PREFIX}layers.N) "
            "must be a positive multiple of 5"
        )
    return IDFormerConfig(
        dim=dim,
        depth=depth,
        dim_head=_divide(_shape(state_dict, q_key)[0], heads, q_key),
        heads=heads,
        num_id_token=_divide(id_rows, dim, ENCODER_PREFIX + "id_embedding_mapping.6.weight"),
        num_queries=num_queries,
        output_dim=_shape(state_dict, ENCODER_PREFIX + "proj_out")[1],
        ff_mult=_divide(_shape(state_dict, ff_key)[0], dim, ff_key),
        id_in_dim=id_in_dim,
        vit_dim=_shape(state_dict, ENCODER_PREFIX + "mapping_0.0.weight")[1],
        mapping_hidden=hidden,
    )


def infer_ca_config(state_dict: dict[str, torch.Tensor], dim: int, heads: int = 16) -> CAConfig:
    """Read the CA configuration from `pulid_ca.0.*`; `dim` is the transformer's hidden width."""
    q_key = CA_PREFIX + "0.to_q.weight"
    inner = _shape(state_dict, q_key)[0]
    return CAConfig(
        dim=dim,
        kv_dim=_shape(state_dict, CA_PREFIX + "0.norm1.weight")[0],
        dim_head=_divide(inner, heads, q_key),
        heads=heads,
    )


def load_pulid_state_dict(
    path: str | Path, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Load `pulid_flux_v0.9.x.safetensors` and check that it has the official 312-key layout."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise PulidWeightsError(f"PuLID weights must be a .safetensors file, got {path.name}")
    if not path.is_file():
        raise PulidWeightsError(f"PuLID weights not found: {path}")
    state_dict = load_file(str(path), device=str(device))
    check_state_dict(state_dict, official_shapes())
    log.info("loaded PuLID weights %s (%d tensors)", path.name, len(state_dict))
    return state_dict


def random_pulid_state_dict(
    *,
    num_ca: int = OFFICIAL_NUM_CA,
    ca_dim: int = 3072,
    ca_kv_dim: int = 2048,
    ca_dim_head: int = 128,
    ca_heads: int = 16,
    enc_dim: int = 1024,
    enc_depth: int = 10,
    enc_dim_head: int = 64,
    enc_heads: int = 16,
    num_id_token: int = 5,
    num_queries: int = 32,
    output_dim: int = 2048,
    ff_mult: int = 4,
    id_in_dim: int = 1280,
    vit_dim: int = 1024,
    mapping_hidden: int = 1024,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Seeded random weights in the official layout; defaults give the official shapes.

    On the meta device only shapes are made (no memory, no randomness).
    """
    encoder = IDFormerConfig(
        enc_dim, enc_depth, enc_dim_head, enc_heads, num_id_token, num_queries,
        output_dim, ff_mult, id_in_dim, vit_dim, mapping_hidden,
    )  # fmt: skip
    ca = CAConfig(ca_dim, ca_kv_dim, ca_dim_head, ca_heads)
    shapes = expected_shapes(encoder, ca, num_ca)
    if torch.device(device).type == "meta":
        return {k: torch.empty(s, device="meta", dtype=dtype) for k, s in shapes.items()}
    gen = torch.Generator().manual_seed(seed)
    return {k: _random_tensor(k, s, gen).to(device=device, dtype=dtype) for k, s in shapes.items()}


def _random_tensor(key: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Scale-preserving init: unit-gain linears, LayerNorms near identity, small biases."""
    noise = torch.randn(shape, generator=gen)
    if key.endswith("latents"):
        return noise * shape[-1] ** -0.5
    if key.endswith("proj_out"):
        return noise * shape[0] ** -0.5
    if len(shape) == 2:
        return noise * shape[1] ** -0.5
    if key.endswith("weight"):
        return 1.0 + 0.1 * noise
    return 0.1 * noise
