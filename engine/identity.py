"""Identity encoding: ArcFace + EVA02-CLIP + IDFormer → PuLID id tokens (PULID_SPEC §1.5–2, §7).

A reference photo, once prepared by :mod:`engine.faces` (one detected face: its raw ArcFace vector
and its aligned, parsed, CLIP-normalised crop), becomes::

    id_cond = concat(arcface_raw (512), eva_pooled_l2 (768))          (1280)
    tokens  = IDFormer(id_cond, eva hidden states entering blocks 4, 8, 12, 16, 20)

Every reference keeps its own tokens (n_refs, Q, D); they are fused at use time (mean by default),
so adding a photo never re-encodes the others. The uncond tokens (IDFormer on zero inputs) depend
only on the weights and ride along for true CFG. Each embedding records the fingerprint of the
weights that made it; :func:`check_fingerprint` refuses an embedding from other weights.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from engine.eva import EvaTower

log = logging.getLogger(__name__)

FUSION_METHODS = ("mean", "concat", "max", "norm_id", "max_token")


class FingerprintMismatch(ValueError):
    """An embedding made by other weights than the loaded ones."""


class IdentityInputError(ValueError):
    """Reference faces that cannot be encoded (none, wrong size, bad ArcFace vector)."""


class PreparedFaceLike(Protocol):
    """What :func:`engine.faces.prepare_reference` returns (the fields this module reads)."""

    arcface: np.ndarray
    eva_input: torch.Tensor


def check_fingerprint(stored: str, current: str) -> None:
    """Raise :class:`FingerprintMismatch` unless ``stored`` equals ``current``."""
    if stored != current:
        raise FingerprintMismatch(
            f"this face was encoded with other model weights ({stored[:12]}), the engine runs "
            f"{current[:12]}; add the face again to re-encode it"
        )


@dataclass(frozen=True)
class IdentityEmbedding:
    """Per-reference id tokens (n, Q, D), uncond tokens (1, Q, D), raw ArcFace (n, 512)."""

    id_tokens: torch.Tensor
    uncond_tokens: torch.Tensor
    arcface: np.ndarray
    fingerprint: str

    def __post_init__(self) -> None:
        n = self.id_tokens.shape[0]
        if self.id_tokens.ndim != 3 or self.uncond_tokens.shape != (1, *self.id_tokens.shape[1:]):
            raise IdentityInputError(
                f"id tokens {tuple(self.id_tokens.shape)} and uncond tokens "
                f"{tuple(self.uncond_tokens.shape)} do not match"
            )
        if self.arcface.shape != (n, 512):
            raise IdentityInputError(f"arcface must be ({n}, 512), got {self.arcface.shape}")

    @property
    def n_refs(self) -> int:
        return int(self.id_tokens.shape[0])

    def extend(self, other: IdentityEmbedding) -> IdentityEmbedding:
        """This identity plus the references of ``other`` (same weights required)."""
        check_fingerprint(other.fingerprint, self.fingerprint)
        return IdentityEmbedding(
            torch.cat([self.id_tokens, other.id_tokens.to(self.id_tokens.dtype)]),
            self.uncond_tokens,
            np.concatenate([self.arcface, other.arcface]),
            self.fingerprint,
        )

    def fused(self, method: str = "mean") -> torch.Tensor:
        """The tokens the transformer sees: (1, Q, D), or (1, n·Q, D) for ``concat``."""
        return fuse(self.id_tokens, method)


def fuse(tokens: torch.Tensor, method: str = "mean") -> torch.Tensor:
    """Fuse per-reference tokens (n, Q, D) into one identity (PULID_SPEC §7)."""
    if method not in FUSION_METHODS:
        raise ValueError(f"unknown fusion {method!r}; choose one of {', '.join(FUSION_METHODS)}")
    if tokens.ndim != 3 or tokens.shape[0] < 1:
        raise ValueError(f"tokens must be (n_refs, Q, D), got {tuple(tokens.shape)}")
    x = tokens.float()
    if method == "mean":
        out = x.mean(0)
    elif method == "concat":
        out = x.reshape(-1, x.shape[-1])
    elif method == "max":
        out = x.amax(0)
    elif method == "norm_id":
        norms = x.flatten(1).norm(dim=1)
        out = ((norms / norms.sum())[:, None, None] * x).sum(0)
    else:  # max_token: per slot, the token with the largest L2 norm among the references
        best = x.norm(dim=-1).argmax(0)
        out = x[best, torch.arange(x.shape[1])]
    return out[None].to(tokens.dtype)


class IdentityEncoder:
    """EVA tower + the adapter's IDFormer on one device; encodes prepared faces."""

    def __init__(self, tower: EvaTower, adapter, fingerprint: str) -> None:
        self.tower = tower
        self.adapter = adapter
        self.fingerprint = fingerprint
        self._uncond: torch.Tensor | None = None

    @property
    def param(self) -> torch.Tensor:
        return self.adapter.encoder.latents

    @torch.no_grad()
    def encode(self, faces: Sequence[PreparedFaceLike]) -> IdentityEmbedding:
        """One IDFormer pass over every reference; tokens come back float32 on the CPU."""
        arcface, pixels = self._inputs(faces)
        device, dtype = self.param.device, self.param.dtype
        pooled, hidden = self.tower(pixels.to(device=device, dtype=self._tower_dtype()))
        id_cond = torch.cat([torch.from_numpy(arcface).to(device, pooled.dtype), pooled], dim=-1)
        tokens = self.adapter.encoder(id_cond.to(dtype), [h.to(dtype) for h in hidden])
        log.info("identity encoded from %d reference(s)", len(faces))
        return IdentityEmbedding(
            tokens.float().cpu(), self.uncond_tokens(), arcface, self.fingerprint
        )

    def uncond_tokens(self) -> torch.Tensor:
        """IDFormer on zero inputs (computed once per weight set), float32 on the CPU."""
        if self._uncond is None:
            tokens = self.adapter.uncond_tokens(vit_tokens=self.tower.num_tokens)
            self._uncond = tokens.float().cpu()
        return self._uncond

    def _tower_dtype(self) -> torch.dtype:
        return next(self.tower.parameters()).dtype

    def _inputs(self, faces: Sequence[PreparedFaceLike]) -> tuple[np.ndarray, torch.Tensor]:
        if not faces:
            raise IdentityInputError("no reference face to encode")
        size = self.tower.image_size
        arcs, pixels = [], []
        for face in faces:
            arc = np.asarray(face.arcface, dtype=np.float32).reshape(-1)
            if arc.shape != (512,) or not np.isfinite(arc).all():
                raise IdentityInputError("the face recognition vector is not 512 finite numbers")
            if tuple(face.eva_input.shape) != (1, 3, size, size):
                raise IdentityInputError(
                    f"face crop {tuple(face.eva_input.shape)} does not fit the "
                    f"{size}px vision tower; prepare it with eva_size={size}"
                )
            arcs.append(arc)
            pixels.append(face.eva_input)
        return np.stack(arcs), torch.cat(pixels)
