"""Memory modes (PULID_SPEC §6): ``gpu``, ``offload`` and ``fp8``.

* ``gpu``: every model resident on the device.
* ``offload``: phase-wise model CPU offload, the same mechanism as diffusers'
  ``enable_model_cpu_offload`` (accelerate's ``cpu_offload_with_hook`` chained in call order),
  extended to this engine's component set: EVA tower → CLIP → T5 → transformer → VAE. The PuLID
  modules (IDFormer and the cross-attention modules, ~1.1 GB bf16) stay resident, as in the
  official aggressive offload, because the transformer's hooks call them inside its forward.
* ``fp8``: the transformer blocks' linear weights quantised to float8 (weight-only, torchao),
  the PuLID modules kept bf16, plus the offload chain for the other models (the official
  ``--offload --fp8`` combination).

Dtypes in every mode: bf16 on CUDA, fp16 below compute capability 8.0, fp32 on the CPU; under
bf16 the VAE keeps fp32 weights and decodes under bf16 autocast (PULID_SPEC §5.1).
"""

from __future__ import annotations

import contextlib
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


#: The first CUDA compute capability with native bf16 (Ampere); older cards get fp16.
BF16_MIN_CAPABILITY = (8, 0)


def dtype_for_capability(capability: tuple[int, int]) -> torch.dtype:
    """bf16 from compute capability 8.0 on, fp16 below (PULID_SPEC §8: V100, T4, P40, …)."""
    return torch.bfloat16 if tuple(capability) >= BF16_MIN_CAPABILITY else torch.float16


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA (fp16 below compute capability 8.0, PULID_SPEC §8); fp32 on the CPU.

    The capability of ``device`` itself decides, not ``torch.cuda.is_bf16_supported()``: that
    counts emulated bf16 (slow, True on V100/T4) and asks about the current device only.
    """
    if device.type != "cuda":
        return torch.float32
    return dtype_for_capability(torch.cuda.get_device_capability(device))


#: The VAE's dtype when the engine runs bf16: fp32 weights, decoded under bf16 autocast
#: (PULID_SPEC §5.1, as the official app does; about 160 MB more than a bf16 VAE).
VAE_DTYPE_UNDER_BF16 = torch.float32


def vae_dtype(dtype: torch.dtype) -> torch.dtype:
    """The VAE's dtype for an engine in ``dtype``: fp32 under bf16, else ``dtype`` itself."""
    return VAE_DTYPE_UNDER_BF16 if dtype == torch.bfloat16 else dtype


def flux_dtypes(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``torch_dtype`` for ``FluxPipeline.from_pretrained``: the VAE per :func:`vae_dtype`."""
    return {"default": dtype, "vae": vae_dtype(dtype)}


def cast_flux(flux, dtype: torch.dtype) -> None:
    """Cast the FLUX components to ``dtype``, the VAE to :func:`vae_dtype` (never via bf16)."""
    for name, module in flux.components.items():
        cast_module(module, vae_dtype(dtype) if name == "vae" else dtype)


def decode_autocast(device: torch.device, latent_dtype: torch.dtype, vae_dtype: torch.dtype):
    """bf16 autocast on ``device`` for bf16 latents and an fp32 VAE; no autocast otherwise."""
    if latent_dtype == torch.bfloat16 and vae_dtype == torch.float32:
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cast_module(module: object, dtype: torch.dtype) -> None:
    """Cast a torch module whose floating weights are not ``dtype`` yet (a no-op otherwise)."""
    if not isinstance(module, nn.Module):
        return
    param = next(module.parameters(), None)
    if param is not None and param.is_floating_point() and param.dtype != dtype:
        module.to(dtype)


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
