"""FLUX.1-dev sampling with PuLID identity injection (PULID_SPEC §5).

Built on diffusers' :class:`FluxPipeline` *pieces* (``encode_prompt``, latent packing, latent ids,
``calculate_shift``, ``retrieve_timesteps``, ``randn_tensor``, the image processor); the denoise
loop is our own because the official method needs three rules diffusers' ``true_cfg_scale`` lacks:

1. no identity before ``start_step`` (the transformer runs plain, the hooks are not armed);
2. no true CFG before ``cfg_start_step``; CFG is on when ``|true_cfg - 1| > 0.01``;
3. the negative pass carries the *uncond* identity (IDFormer on zero inputs), same id weight.

Sampling is a set of pure functions; :class:`FluxPulidPipeline` only holds the models.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from engine.memory import decode_autocast

log = logging.getLogger(__name__)

DEFAULT_NEGATIVE = "bad quality, worst quality, text, signature, watermark, extra limbs"
#: Pixels per latent token side: VAE 8x times the 2x2 packing.
SIZE_STEP = 16


class PipelineInputError(ValueError):
    """An argument of a generation that cannot be used; the message names it and the fix."""


class GenerationCancelled(Exception):
    """The step callback asked to stop."""

    def __init__(self, image: int, step: int) -> None:
        super().__init__(f"generation cancelled at image {image + 1}, step {step}")
        self.image = image
        self.step = step


@dataclass(frozen=True)
class SamplingParams:
    """Everything that shapes one image besides prompt and identity (official defaults)."""

    width: int = 896
    height: int = 1152
    steps: int = 28
    guidance: float = 4.0
    id_weight: float = 1.0
    start_step: int = 0
    true_cfg: float = 1.0
    cfg_start_step: int = 1
    max_sequence_length: int = 128
    seed: int = 0
    negative_prompt: str = DEFAULT_NEGATIVE

    @property
    def true_cfg_on(self) -> bool:
        return abs(self.true_cfg - 1.0) > 0.01

    def validated(self, max_pixels: int | None = None) -> SamplingParams:
        """Return self or raise :class:`PipelineInputError` naming the argument and the fix."""
        for name in ("width", "height"):
            value = getattr(self, name)
            if value < SIZE_STEP or value % SIZE_STEP:
                raise PipelineInputError(f"{name} {value} must be a positive multiple of 16")
        if max_pixels is not None and self.width * self.height > max_pixels:
            raise PipelineInputError(
                f"size {self.width}x{self.height} is over the {max_pixels}-pixel cap; "
                "choose a smaller size"
            )
        _check_range("steps", self.steps, 1, 1000)
        _check_range("start_step", self.start_step, 0, 1000)
        _check_range("cfg_start_step", self.cfg_start_step, 0, 1000)
        _check_range("max_sequence_length", self.max_sequence_length, 1, 512)
        _check_range("seed", self.seed, 0, 2**63 - 1)
        return self


def resolve_seed(seed: int | None) -> int:
    """``seed``, or a fresh random one (drawn on the CPU, as the official app does for -1)."""
    return secrets.randbelow(2**32) if seed is None or seed < 0 else int(seed)


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not (isinstance(value, int) and low <= value <= high):
        raise PipelineInputError(f"{name} {value!r} must be an integer in {low}..{high}")


@dataclass(frozen=True)
class PromptEmbeds:
    """Encoded text: T5 sequence (1, L, D), CLIP pooled (1, P), text ids (L, 3)."""

    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor
    text_ids: torch.Tensor


@dataclass(frozen=True)
class IdentityTokens:
    """What the transformer sees of an identity: fused tokens (1, Q, D), uncond tokens."""

    cond: torch.Tensor
    uncond: torch.Tensor | None = None

    def to(self, device: torch.device, dtype: torch.dtype) -> IdentityTokens:
        """Both tensors moved once (the hooks would otherwise copy them at every pass)."""
        uncond = None if self.uncond is None else self.uncond.to(device, dtype)
        return IdentityTokens(self.cond.to(device, dtype), uncond)


@dataclass(frozen=True)
class StepPlan:
    """What step ``index`` runs: identity armed? negative (CFG) pass?"""

    index: int
    use_id: bool
    use_cfg: bool


@dataclass(frozen=True)
class Progress:
    """Reported to the step callback after every finished step."""

    image: int
    images: int
    step: int
    steps: int

    @property
    def fraction(self) -> float:
        return (self.image * self.steps + self.step) / (self.images * self.steps)


#: Called after each step; returning ``False`` stops the job (:class:`GenerationCancelled`),
#: raising stops it with the callback's own exception.
StepCallback = Callable[[Progress], "bool | None"]


# --- pure sampling functions --------------------------------------------------------------


def plan_steps(params: SamplingParams, has_identity: bool) -> list[StepPlan]:
    """The three official rules as data, one entry per step."""
    return [
        StepPlan(
            index=i,
            use_id=has_identity and i >= params.start_step,
            use_cfg=params.true_cfg_on and i >= params.cfg_start_step,
        )
        for i in range(params.steps)
    ]


def schedule(
    scheduler: FlowMatchEulerDiscreteScheduler, steps: int, image_seq_len: int, device: torch.device
) -> torch.Tensor:
    """FLUX timesteps: sigmas linspace(1, 1/N, N) shifted by mu(seq_len) (dynamic shifting)."""
    sigmas = np.linspace(1.0, 1 / steps, steps)
    cfg = scheduler.config
    mu = calculate_shift(
        image_seq_len,
        cfg.get("base_image_seq_len", 256),
        cfg.get("max_image_seq_len", 4096),
        cfg.get("base_shift", 0.5),
        cfg.get("max_shift", 1.15),
    )
    timesteps, _ = retrieve_timesteps(scheduler, steps, device, sigmas=sigmas, mu=mu)
    scheduler.set_begin_index(0)
    return timesteps


def initial_latents(
    params: SamplingParams, channels: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded noise (1, 16, H/8, W/8) packed to (1, HW/256, 64), plus the latent image ids."""
    h, w = 2 * (params.height // SIZE_STEP), 2 * (params.width // SIZE_STEP)
    generator = torch.Generator(device=device).manual_seed(params.seed)
    noise = randn_tensor((1, channels, h, w), generator=generator, device=device, dtype=dtype)
    packed = FluxPipeline._pack_latents(noise, 1, channels, h, w)
    ids = FluxPipeline._prepare_latent_image_ids(1, h // 2, w // 2, device, dtype)
    return packed, ids


def cfg_combine(pos: torch.Tensor, neg: torch.Tensor, scale: float) -> torch.Tensor:
    return neg + scale * (pos - neg)


# --- the pipeline ---------------------------------------------------------------------------


class FluxPulidPipeline:
    """FLUX.1-dev components plus an optional PuLID adapter; one image per call."""

    def __init__(self, flux: FluxPipeline, adapter: object | None, device: torch.device) -> None:
        self.flux = flux
        self.adapter = adapter
        self.device = torch.device(device)

    @property
    def transformer(self) -> torch.nn.Module:
        return self.flux.transformer

    @torch.no_grad()
    def encode_prompt(self, prompt: str, max_sequence_length: int = 128) -> PromptEmbeds:
        """CLIP pooled + T5 sequence of one prompt (diffusers' ``encode_prompt``)."""
        embeds, pooled, ids = self.flux.encode_prompt(
            prompt=prompt, prompt_2=None, device=self.device,
            max_sequence_length=max_sequence_length,
        )  # fmt: skip
        return PromptEmbeds(embeds, pooled, ids)

    def generate(
        self,
        prompts: Sequence[str | PromptEmbeds],
        params: SamplingParams,
        identity: IdentityTokens | None = None,
        *,
        negative: str | PromptEmbeds | None = None,
        callback: StepCallback | None = None,
        max_pixels: int | None = None,
    ) -> list[Image.Image]:
        """One image per prompt, seeds ``seed, seed+1, …``; text and identity encoded once.

        In phases, so an offloading memory mode moves each model once per call, not per image:
        every text (the negative first) is encoded, then every image denoised, then decoded.
        """
        params = params.validated(max_pixels)
        _check_identity(identity, params, self.adapter)
        neg = self._negative(negative, params) if params.true_cfg_on else None
        texts = [self._embeds(prompt, params) for prompt in prompts]
        identity = self._placed(identity)
        runs = [replace(params, seed=params.seed + i) for i in range(len(texts))]
        latents = [
            self._denoise(embeds, run, identity, neg, _reporter(callback, i, len(texts), run.steps))
            for i, (embeds, run) in enumerate(zip(texts, runs, strict=True))
        ]
        return [self.decode(x, run) for x, run in zip(latents, runs, strict=True)]

    def _embeds(self, prompt: str | PromptEmbeds, params: SamplingParams) -> PromptEmbeds:
        if isinstance(prompt, PromptEmbeds):
            return prompt
        if not isinstance(prompt, str) or not prompt.strip():
            raise PipelineInputError("prompt must be a non-empty string")
        return self.encode_prompt(prompt, params.max_sequence_length)

    def _negative(
        self, negative: str | PromptEmbeds | None, params: SamplingParams
    ) -> PromptEmbeds:
        if isinstance(negative, PromptEmbeds):
            return negative
        text = params.negative_prompt if negative is None else negative
        return self.encode_prompt(text, params.max_sequence_length)

    @torch.no_grad()
    def denoise(
        self,
        embeds: PromptEmbeds,
        params: SamplingParams,
        identity: IdentityTokens | None = None,
        *,
        negative: PromptEmbeds | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """The sampling loop; returns packed latents (1, N_img, 64)."""
        _check_identity(identity, params, self.adapter)
        return self._denoise(embeds, params, self._placed(identity), negative, on_step)

    def _placed(self, identity: IdentityTokens | None) -> IdentityTokens | None:
        """The identity on the device, in the dtype of the PuLID modules (once per call)."""
        if identity is None:
            return None
        return identity.to(self.device, self.adapter.pulid_ca[0].to_q.weight.dtype)

    @torch.no_grad()
    def _denoise(self, embeds: PromptEmbeds, params: SamplingParams,
                 identity: IdentityTokens | None, negative: PromptEmbeds | None,
                 on_step: Callable[[int], None] | None) -> torch.Tensor:  # fmt: skip
        # 1. Noise, ids, schedule (a private scheduler copy: the loop is re-entrant).
        dtype = embeds.prompt_embeds.dtype
        channels = self.transformer.config.in_channels // 4
        latents, img_ids = initial_latents(params, channels, self.device, dtype)
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.flux.scheduler.config)
        timesteps = schedule(scheduler, params.steps, latents.shape[1], self.device)
        guidance = self._guidance(params.guidance, latents.shape[0])
        # 2. The per-step plan (identity from start_step, CFG from cfg_start_step).
        plans = plan_steps(params, identity is not None)
        if any(p.use_cfg for p in plans) and negative is None:
            raise PipelineInputError("true_cfg needs a negative prompt")
        # 3. Euler steps: conditional pass, optional negative pass with the uncond identity.
        with self._hooks(identity) as injection:
            armed = _Armed.build(injection, identity, params.id_weight)
            for plan, t in zip(plans, timesteps, strict=True):
                timestep = t.expand(latents.shape[0]).to(latents.dtype) / 1000
                armed.arm(plan, negative=False)
                pred = self._predict(latents, timestep, guidance, embeds, img_ids)
                if plan.use_cfg:
                    armed.arm(plan, negative=True)
                    neg_pred = self._predict(latents, timestep, guidance, negative, img_ids)
                    pred = cfg_combine(pred, neg_pred, params.true_cfg)
                latents = scheduler.step(pred, t, latents, return_dict=False)[0]
                # 4. Report; the callback may stop the loop here, within one step.
                if on_step is not None:
                    on_step(plan.index + 1)
        return latents

    def _guidance(self, value: float, batch: int) -> torch.Tensor | None:
        if not self.transformer.config.guidance_embeds:
            return None
        return torch.full([1], value, device=self.device, dtype=torch.float32).expand(batch)

    def _hooks(self, identity: IdentityTokens | None):
        """The adapter's hooks for the whole loop (armed per pass), or plain FLUX."""
        if identity is None:
            return contextlib.nullcontext()
        return self.adapter.identity(None)

    def _predict(self, latents, timestep, guidance, embeds: PromptEmbeds, img_ids) -> torch.Tensor:
        return self.transformer(
            hidden_states=latents,
            timestep=timestep,
            guidance=guidance,
            pooled_projections=embeds.pooled_prompt_embeds,
            encoder_hidden_states=embeds.prompt_embeds,
            txt_ids=embeds.text_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, params: SamplingParams) -> Image.Image:
        """Unpack, unscale and VAE-decode packed latents to one PIL image.

        bf16 latents with an fp32 VAE decode in fp32 under bf16 autocast (PULID_SPEC §5.1).
        """
        vae = self.flux.vae
        x = FluxPipeline._unpack_latents(
            latents.to(vae.dtype), params.height, params.width, self.flux.vae_scale_factor
        )
        x = (x / vae.config.scaling_factor) + vae.config.shift_factor
        with decode_autocast(self.device, latents.dtype, vae.dtype):
            image = vae.decode(x, return_dict=False)[0]
        return self.flux.image_processor.postprocess(image, output_type="pil")[0]


@dataclass(frozen=True)
class _Armed:
    """The hooks' cond and uncond entries, built once per denoise call and swapped per pass."""

    injection: object | None
    cond: tuple = ()
    uncond: tuple = ()

    @classmethod
    def build(cls, injection, identity: IdentityTokens | None, weight: float) -> _Armed:
        if injection is None:
            return cls(None)
        uncond = () if identity.uncond is None else injection.prepare([(identity.uncond, weight)])
        return cls(injection, injection.prepare([(identity.cond, weight)]), uncond)

    def arm(self, plan: StepPlan, *, negative: bool) -> None:
        """Point the hooks at this pass's tokens: cond, uncond (negative pass) or none."""
        if self.injection is None:
            return
        if plan.use_id:
            self.injection.use(self.uncond if negative else self.cond)
        else:
            self.injection.clear()


def _check_identity(identity: IdentityTokens | None, params: SamplingParams, adapter) -> None:
    if identity is None:
        return
    if adapter is None:
        raise PipelineInputError("an identity needs the PuLID adapter; this pipeline has none")
    if identity.cond.ndim != 3 or identity.cond.shape[0] != 1:
        raise PipelineInputError("identity tokens must have shape (1, tokens, width)")
    if params.true_cfg_on and params.start_step < params.steps and identity.uncond is None:
        raise PipelineInputError("true_cfg with an identity needs the uncond identity tokens")


def _reporter(callback: StepCallback | None, image: int, images: int, steps: int):
    if callback is None:
        return None

    def report(step: int) -> None:
        if callback(Progress(image=image, images=images, step=step, steps=steps)) is False:
            raise GenerationCancelled(image, step)

    return report
