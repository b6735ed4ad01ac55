"""Memory modes (PULID_SPEC §6): ``gpu``, ``offload`` and ``fp8``.

* ``gpu``: every model resident on the device (bf16 on CUDA).
* ``offload``: phase-wise model CPU offload, the same mechanism as diffusers'
  ``enable_model_cpu_offload`` (accelerate's ``cpu_offload_with_hook`` chained in call order),
  extended to this engine's component set: EVA tower → CLIP → T5 → transformer → VAE. The PuLID
  modules (IDFormer and the cross-attention modules, ~1.1 GB bf16) stay resident, as in the
  official aggressive offload, because the transformer's hooks call them inside its forward.
* ``fp8``: the transformer blocks' linear weights quantised to float8 (weight-only, torchao),
  the PuLID modules kept bf16, plus the offload chain for the other models (the official
  ``--offload --fp8`` combination).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

log = logging.getLogger(__name__)

MEMORY_MODES = ("gpu", "offload", "fp8")


class MemoryModeError(ValueError):
    """A memory mode that does not exist or cannot run here."""


@dataclass
class MemoryPlan:
    """The applied mode; ``free()`` returns offloaded models to the CPU between jobs."""

    mode: str
    device: torch.device
    hooks: list = field(default_factory=list)

    def free(self) -> None:
        for hook in self.hooks:
            hook.offload()

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()


def apply_memory_mode(
    flux,
    *,
    resident: Sequence[nn.Module] = (),
    encoders: Sequence[nn.Module] = (),
    mode: str = "gpu",
    device: torch.device | str = "cpu",
) -> MemoryPlan:
    """Place ``flux`` (a diffusers FluxPipeline), ``resident`` and ``encoders`` for ``mode``."""
    if mode not in MEMORY_MODES:
        raise MemoryModeError(f"memory mode {mode!r}: choose one of {', '.join(MEMORY_MODES)}")
    device = torch.device(device)
    for module in resident:
        module.to(device)
    if mode == "gpu":
        flux.to(device)
        for module in encoders:
            module.to(device)
        return MemoryPlan(mode, device)
    if mode == "fp8":
        quantize_fp8(flux.transformer)
    chain = [*encoders, flux.text_encoder, flux.text_encoder_2, flux.transformer, flux.vae]
    return MemoryPlan(mode, device, offload_chain([m for m in chain if m is not None], device))


def offload_chain(models: Sequence[nn.Module], device: torch.device) -> list:
    """accelerate hooks: each model moves to ``device`` on use and evicts its predecessor."""
    from accelerate import cpu_offload_with_hook

    hooks, previous = [], None
    for model in models:
        model.to("cpu")
        _, previous = cpu_offload_with_hook(model, device, prev_module_hook=previous)
        hooks.append(previous)
    log.info("model CPU offload: %d models, execution device %s", len(hooks), device)
    return hooks


def _block_linear(module: nn.Module, name: str) -> bool:
    return isinstance(module, nn.Linear) and "transformer_blocks." in name


def quantize_fp8(transformer: nn.Module) -> nn.Module:
    """Float8 weight-only quantisation of every linear layer inside the transformer blocks."""
    try:
        from torchao.quantization import Float8WeightOnlyConfig, quantize_
    except ImportError as exc:
        raise MemoryModeError("memory mode fp8 needs torchao (pip install torchao)") from exc
    quantize_(transformer, Float8WeightOnlyConfig(), filter_fn=_block_linear)
    log.info("transformer block weights quantised to float8 (weight-only)")
    return transformer
