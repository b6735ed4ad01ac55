"""PuLID injection state and the forward hook that applies it (PULID_SPEC.md §3.2, §7)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IdEntry:
    """One identity to inject: tokens (1 or B, T, kv_dim), a scalar weight, an optional mask.

    The weight is also kept as a 0-d fp32 tensor so a compiled hook does not specialise on its
    value (no recompilation per weight); `w · CA` is computed in fp32 and rounded once, as a
    Python-float multiply does.
    """

    tokens: torch.Tensor
    weight: float = 1.0
    mask: torch.Tensor | None = None
    weight_tensor: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        scale = torch.tensor(float(self.weight), dtype=torch.float32, device=self.tokens.device)
        object.__setattr__(self, "weight_tensor", scale)


EntryLike = IdEntry | tuple[torch.Tensor, float] | tuple[torch.Tensor, float, torch.Tensor | None]


class IdentityInjection:
    """Mutable injection state read by the hooks at every block call.

    Switch it per step without re-entering the context: `active = False` gives plain FLUX for the
    next forward (e.g. before `start_step`); `set(tokens, weight)` swaps the identity (e.g. the
    uncond ID of a true-CFG negative pass); `set_entries([...])` injects several masked identities.
    A loop that switches often builds its entries once with `prepare` and swaps them with `use`.
    """

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self._dtype = dtype
        self._device = device
        self.active = False
        self.entries: tuple[IdEntry, ...] = ()

    def set(
        self, id_tokens: torch.Tensor, weight: float = 1.0, mask: torch.Tensor | None = None
    ) -> None:
        """Inject one identity from now on (and mark the injection active)."""
        self.set_entries([IdEntry(id_tokens, weight, mask)])

    def set_entries(self, entries: Iterable[EntryLike]) -> None:
        """Inject several identities; every delta starts from the same pre-PuLID image tokens."""
        self.use(self.prepare(entries))

    def prepare(self, entries: Iterable[EntryLike]) -> tuple[IdEntry, ...]:
        """Entries placed and checked for this injection, to :meth:`use` as often as needed."""
        return tuple(self._prepare(e if isinstance(e, IdEntry) else IdEntry(*e)) for e in entries)

    def use(self, entries: tuple[IdEntry, ...]) -> None:
        """Inject entries made by :meth:`prepare` (no copy, no check: cheap at every pass)."""
        self.entries = entries
        self.active = bool(entries)

    def clear(self) -> None:
        """No identity: the hooked blocks behave as plain FLUX."""
        self.entries = ()
        self.active = False

    def _prepare(self, entry: IdEntry) -> IdEntry:
        tokens = entry.tokens
        if tokens.ndim != 3:
            raise ValueError(f"id tokens must be (B, T, D), got {tuple(tokens.shape)}")
        mask = None if entry.mask is None else self._token_mask(entry.mask)
        tokens = tokens.to(device=self._device, dtype=self._dtype)
        return IdEntry(tokens, float(entry.weight), mask)

    def _token_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """(N_img,), (B or 1, N_img) or (B or 1, N_img, 1) → (B or 1, N_img, 1)."""
        if mask.ndim == 1:
            mask = mask[None, :, None]
        elif mask.ndim == 2:
            mask = mask[..., None]
        if mask.ndim != 3 or mask.shape[-1] != 1:
            raise ValueError(f"token mask must be (B, N_img[, 1]), got {tuple(mask.shape)}")
        return mask.to(device=self._device, dtype=self._dtype)


class InjectionOwner(Protocol):
    """Whatever holds the current injection (the adapter): None outside `identity()`."""

    _injection: IdentityInjection | None


def inject_hook(
    adapter: InjectionOwner,
    ca: nn.Module,
    module: nn.Module,
    args: Any,
    kwargs: Any,
    output: Any,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Forward hook of a hooked block: output (txt, img) → (txt, img + Σ w·mask·CA(id, img))."""
    injection = adapter._injection
    if injection is None or not injection.active or not injection.entries:
        return None
    txt, img = output
    out = img
    for entry in injection.entries:
        _check_batch(entry, img)
        attn = ca(entry.tokens, img)
        delta = (attn.float() * entry.weight_tensor).to(attn.dtype)
        if entry.mask is not None:
            delta = delta * entry.mask
        out = out + delta
    return txt, out


def _check_batch(entry: IdEntry, img: torch.Tensor) -> None:
    if entry.tokens.shape[0] not in (1, img.shape[0]):
        raise ValueError(
            f"id tokens batch {entry.tokens.shape[0]} must be 1 or the image batch {img.shape[0]}"
        )
    mask = entry.mask
    if mask is not None and (
        mask.shape[1] != img.shape[1] or mask.shape[0] not in (1, img.shape[0])
    ):
        raise ValueError(
            f"token mask {tuple(mask.shape)} does not fit the image tokens {tuple(img.shape[:2])}"
        )
