"""PuLID-FLUX identity injection into a diffusers `FluxTransformer2DModel` (PULID_SPEC.md §3).

Usage::

    adapter = PulidAdapter.attach(transformer, load_pulid_state_dict(path))
    id_tokens = adapter.encoder(id_cond, vit_hidden_states)          # (B, 32, 2048)
    with adapter.identity(id_tokens, weight=1.0) as injection:
        for step in ...:
            injection.active = step >= start_step                    # per-step switch
            transformer(...)

Forward hooks exist only inside `identity()`: outside it the transformer is plain FLUX. Each hooked
block (double blocks 0, 2, 4, …; single blocks 0, 4, 8, …) replaces its image-token output with
`img + Σ weight · mask · CA_k(tokens, img)`, every term computed from the same pre-PuLID `img`.
Text tokens are passed through untouched.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from engine.idformer import (
    CAConfig,
    IDFormer,
    IDFormerConfig,
    PerceiverAttention,
    PerceiverAttentionCA,
    perceiver_attention,
)
from engine.pulid_hooks import EntryLike, IdentityInjection, IdEntry, inject_hook
from engine.pulid_weights import (
    CA_KEY_COUNT,
    CA_PARAM_COUNT,
    ENCODER_KEY_COUNT,
    ENCODER_PARAM_COUNT,
    OFFICIAL_CA_CONFIG,
    OFFICIAL_ENCODER_CONFIG,
    OFFICIAL_NUM_CA,
    TOTAL_KEY_COUNT,
    TOTAL_PARAM_COUNT,
    PulidWeightsError,
    check_state_dict,
    expected_shapes,
    infer_ca_config,
    infer_encoder_config,
    load_pulid_state_dict,
    official_shapes,
    random_pulid_state_dict,
)

__all__ = [
    "CA_KEY_COUNT",
    "CA_PARAM_COUNT",
    "DOUBLE_INTERVAL",
    "ENCODER_KEY_COUNT",
    "ENCODER_PARAM_COUNT",
    "OFFICIAL_CA_CONFIG",
    "OFFICIAL_ENCODER_CONFIG",
    "OFFICIAL_NUM_CA",
    "SINGLE_INTERVAL",
    "TOTAL_KEY_COUNT",
    "TOTAL_PARAM_COUNT",
    "CAConfig",
    "IDFormer",
    "IDFormerConfig",
    "IdEntry",
    "IdentityInjection",
    "PerceiverAttention",
    "PerceiverAttentionCA",
    "PulidAdapter",
    "PulidWeightsError",
    "check_state_dict",
    "expected_shapes",
    "load_pulid_state_dict",
    "official_shapes",
    "perceiver_attention",
    "random_pulid_state_dict",
]

log = logging.getLogger(__name__)

DOUBLE_INTERVAL = 2
SINGLE_INTERVAL = 4
OFFICIAL_VIT_TOKENS = 577
#: The tiny PuLID configuration of PULID_SPEC.md §9.2 (heads: encoder 4, CA 2).
TINY_DIMS = dict(
    ca_kv_dim=64, ca_dim_head=32, ca_heads=2, enc_dim=64, enc_depth=5, enc_dim_head=16,
    enc_heads=4, num_id_token=5, num_queries=8, output_dim=64, ff_mult=2, mapping_hidden=1024,
)  # fmt: skip


class PulidAdapter(nn.Module):
    """The PuLID-FLUX IDFormer plus cross-attention modules, hooked into one transformer.

    `state_dict()` of the adapter is the official layout (`pulid_encoder.*`, `pulid_ca.N.*`).
    """

    def __init__(self, encoder: IDFormer, ca: nn.ModuleList, transformer: nn.Module) -> None:
        super().__init__()
        self.pulid_encoder = encoder
        self.pulid_ca = ca
        self.__dict__["_transformer"] = transformer  # not a submodule: keeps state_dict official
        self._injection: IdentityInjection | None = None
        self._handles: list[RemovableHandle] = []
        self._attached = True
        self.uncond_vit_tokens = OFFICIAL_VIT_TOKENS

    # ----------------------------------------------------------------- construction
    @classmethod
    def attach(
        cls,
        transformer: nn.Module,
        state_dict: dict[str, torch.Tensor],
        *,
        encoder_heads: int = 16,
        ca_heads: int = 16,
    ) -> PulidAdapter:
        """Build the PuLID modules from an official-layout state dict (strict) for `transformer`."""
        enc_cfg, ca_cfg, num_ca = _configs(transformer, state_dict, encoder_heads, ca_heads)
        device, dtype = _placement(transformer)
        with torch.device("meta"):
            encoder = IDFormer(enc_cfg)
            ca = nn.ModuleList(PerceiverAttentionCA(ca_cfg) for _ in range(num_ca))
        adapter = cls(encoder, ca, transformer).to(dtype).to_empty(device=device)
        adapter.load_state_dict(state_dict, strict=True)
        adapter.requires_grad_(False).eval()
        log.info("PuLID attached: %d CA modules, %s, %s, %s", num_ca, enc_cfg, device, dtype)
        return adapter

    @staticmethod
    def build_state_dict_tiny(
        transformer: nn.Module, *, vit_dim: int = 1024, id_in_dim: int = 1280, seed: int = 0
    ) -> dict[str, torch.Tensor]:
        """Seeded random weights of the tiny PuLID configuration (§9.2) sized for `transformer`.

        Attach them with `encoder_heads=4, ca_heads=2`.
        """
        return random_pulid_state_dict(
            num_ca=_num_ca(transformer),
            ca_dim=_hidden_width(transformer),
            id_in_dim=id_in_dim,
            vit_dim=vit_dim,
            seed=seed,
            **TINY_DIMS,
        )

    # ----------------------------------------------------------------- encoding
    @property
    def encoder(self) -> IDFormer:
        """The IDFormer: `encoder(id_cond, vit_hidden_states)` → (B, num_queries, output_dim)."""
        return self.pulid_encoder

    @torch.no_grad()
    def uncond_tokens(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None, *,
        vit_tokens: int | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """IDFormer on all-zero inputs (the true-CFG negative ID, §2); not a zero tensor.

        The result depends on the ViT token count: `vit_tokens` (default `uncond_vit_tokens`,
        577 as for EVA02-CLIP-L-336) must match the vision tower that encodes the identities.
        """
        cfg = self.pulid_encoder.config
        param = self.pulid_encoder.latents
        count = vit_tokens or self.uncond_vit_tokens
        id_cond = param.new_zeros(1, cfg.id_in_dim)
        hidden = [param.new_zeros(1, count, cfg.vit_dim) for _ in range(5)]
        tokens = self.pulid_encoder(id_cond, hidden)
        return tokens.to(device=device or param.device, dtype=dtype or param.dtype)

    # ----------------------------------------------------------------- injection
    @property
    def hooked_blocks(self) -> list[tuple[str, int, int]]:
        """(kind, block index, CA index) for every hooked block, kind 'double' or 'single'."""
        double, single = _block_lists(self._transformer)
        first = math.ceil(len(double) / DOUBLE_INTERVAL)
        out = [("double", i, i // DOUBLE_INTERVAL) for i in range(0, len(double), DOUBLE_INTERVAL)]
        singles = range(0, len(single), SINGLE_INTERVAL)
        return out + [("single", j, first + j // SINGLE_INTERVAL) for j in singles]

    @contextmanager
    def identity(
        self, id_tokens: torch.Tensor | Sequence[EntryLike] | None = None, weight: float = 1.0, *,
        mask: torch.Tensor | None = None,
    ) -> Iterator[IdentityInjection]:  # fmt: skip
        """Hook the transformer for the duration of the block; yields the mutable injection.

        `id_tokens` is a tensor (with `weight` and optional `mask` (B or 1, N_img[, 1])), a list of
        (tokens, weight, mask) entries, or None (hooks on, injection off until `set`).
        """
        if not self._attached:
            raise RuntimeError("PuLID adapter was detached; attach it again")
        if self._injection is not None:
            raise RuntimeError("PuLID identity() is already active on this adapter")
        injection = self._new_injection(id_tokens, weight, mask)
        self._injection = injection
        self._register_hooks()
        try:
            yield injection
        finally:
            self._remove_hooks()
            self._injection = None

    def detach(self) -> None:
        """Remove every hook for good: the transformer is plain FLUX, `identity()` is refused."""
        self._remove_hooks()
        self._injection = None
        self._attached = False
        log.info("PuLID detached")

    def _new_injection(
        self, id_tokens: torch.Tensor | Sequence[EntryLike] | None, weight: float,
        mask: torch.Tensor | None,
    ) -> IdentityInjection:  # fmt: skip
        param = self.pulid_ca[0].to_q.weight
        injection = IdentityInjection(param.dtype, param.device)
        if isinstance(id_tokens, torch.Tensor):
            injection.set(id_tokens, weight, mask)
        elif id_tokens is not None:
            injection.set_entries(id_tokens)
        return injection

    def _register_hooks(self) -> None:
        double, single = _block_lists(self._transformer)
        blocks = {"double": double, "single": single}
        for kind, index, ca_index in self.hooked_blocks:
            hook = partial(inject_hook, self, self.pulid_ca[ca_index])
            handle = blocks[kind][index].register_forward_hook(hook, with_kwargs=True)
            self._handles.append(handle)

    def _remove_hooks(self) -> None:
        while self._handles:
            self._handles.pop().remove()


def _block_lists(transformer: nn.Module) -> tuple[nn.ModuleList, nn.ModuleList]:
    double = getattr(transformer, "transformer_blocks", None)
    single = getattr(transformer, "single_transformer_blocks", None)
    if not isinstance(double, nn.ModuleList) or not isinstance(single, nn.ModuleList):
        raise TypeError(
            "PuLID needs a diffusers FluxTransformer2DModel "
            "(transformer_blocks and single_transformer_blocks)"
        )
    return double, single


def _num_ca(transformer: nn.Module) -> int:
    """⌈D/2⌉ + ⌈S/4⌉ cross-attention modules for D double and S single blocks."""
    double, single = _block_lists(transformer)
    return math.ceil(len(double) / DOUBLE_INTERVAL) + math.ceil(len(single) / SINGLE_INTERVAL)


def _configs(
    transformer: nn.Module, state_dict: dict[str, torch.Tensor], encoder_heads: int, ca_heads: int
) -> tuple[IDFormerConfig, CAConfig, int]:
    """Infer the configuration from the shapes and check every key strictly against it."""
    num_ca = _num_ca(transformer)
    enc_cfg = infer_encoder_config(state_dict, encoder_heads)
    ca_cfg = infer_ca_config(state_dict, _hidden_width(transformer), ca_heads)
    check_state_dict(state_dict, expected_shapes(enc_cfg, ca_cfg, num_ca))
    if enc_cfg.output_dim != ca_cfg.kv_dim:
        raise PulidWeightsError(
            f"PuLID state dict: IDFormer output width {enc_cfg.output_dim} does not match "
            f"the CA token width {ca_cfg.kv_dim} (pulid_ca.0.norm1.weight)"
        )
    return enc_cfg, ca_cfg, num_ca


def _hidden_width(transformer: nn.Module) -> int:
    inner = getattr(transformer, "inner_dim", None)
    if isinstance(inner, int):
        return inner
    return int(transformer.x_embedder.out_features)


def _placement(transformer: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of the transformer; the PuLID modules stay bf16 under an fp8 DiT (§3.2)."""
    param = next(transformer.parameters())
    dtype = (
        param.dtype
        if param.dtype in (torch.float32, torch.float16, torch.bfloat16)
        else torch.bfloat16
    )
    return param.device, dtype
