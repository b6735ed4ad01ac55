"""Shared by the PuLID and pipeline tests: tiny PuLID adapters attached, and relative error.

(No tests here.) The tiny twin is tests/engine/reference/twin.py; ``engine.tiny`` builds the
tiny FLUX pipeline of the ``tiny`` preset.
"""

from __future__ import annotations

import logging

import torch
from reference import twin

from engine.pulid import PulidAdapter

log = logging.getLogger(__name__)


def rel_err(port: torch.Tensor, ref: torch.Tensor) -> float:
    """‖port − ref‖ / ‖ref‖ in float64 (logged with the max-abs difference)."""
    err = (port.double() - ref.double()).norm() / ref.double().norm()
    log.info("rel %.3e max-abs %.3e", err, (port - ref).abs().max())
    return float(err)


def attach(transformer: torch.nn.Module, state: dict[str, torch.Tensor]) -> PulidAdapter:
    """``state`` (tiny PuLID weights) hooked into ``transformer`` with the twin's head counts."""
    return PulidAdapter.attach(
        transformer, state, encoder_heads=twin.ENC_HEADS, ca_heads=twin.CA_HEADS
    )


def attached_twin() -> tuple[twin.Twin, dict[str, torch.Tensor], PulidAdapter]:
    """A fresh twin with the tiny PuLID weights attached: (twin, state dict, adapter)."""
    tw = twin.build_twin()
    state = twin.tiny_pulid_state_dict()
    return tw, state, attach(tw.transformer, state)


def tiny_flux_adapter(transformer: torch.nn.Module, seed: int) -> PulidAdapter:
    """Seeded tiny PuLID weights built for an ``engine.tiny`` transformer, attached to it."""
    state = PulidAdapter.build_state_dict_tiny(transformer, vit_dim=32, seed=seed)
    return PulidAdapter.attach(transformer, state, encoder_heads=4, ca_heads=2)
