"""Test oracle: BFL FLUX sampling with the official PuLID rules, as pure functions.

Written from PULID_SPEC.md §5.1-5.2 only: the shifted schedule (t = linspace(1, 0, N+1), mu
linear through (256, 0.5) and (4096, 1.15), t' = e^mu / (e^mu + (1/t - 1))), seeded noise packed
as ``b c (h 2) (w 2) -> b (h w) (c 2 2)`` with img ids [0, row, col], and the Euler loop
x <- x + (t_prev - t_curr)·v with the three rules: no ID before ``start_step``, no true CFG before
``cfg_start_step`` (on when |true_cfg - 1| > 0.01), the uncond ID in the negative pass. Runs the
BFL-layout forward of :mod:`.flux_bfl`. Used only by tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import flux_bfl

BASE_SEQ, BASE_SHIFT = 256, 0.5
MAX_SEQ, MAX_SHIFT = 4096, 1.15
#: (pass kind "pos"/"neg", the ID tokens the pass gets or None), one entry per forward.
Trace = list[tuple[str, torch.Tensor | None]]


def schedule_mu(image_seq_len: int) -> float:
    """The shift, linear in the number of image tokens through (256, 0.5) and (4096, 1.15)."""
    slope = (MAX_SHIFT - BASE_SHIFT) / (MAX_SEQ - BASE_SEQ)
    return BASE_SHIFT + slope * (image_seq_len - BASE_SEQ)


def get_schedule(num_steps: int, image_seq_len: int) -> list[float]:
    """N+1 times from 1 to 0, shifted by mu(seq_len) (float64, ends exactly at 0)."""
    mu = schedule_mu(image_seq_len)
    times = [1.0 - i / num_steps for i in range(num_steps + 1)]
    return [0.0 if t == 0 else math.exp(mu) / (math.exp(mu) + (1 / t - 1)) for t in times]


def get_noise(height: int, width: int, seed: int, channels: int = 16) -> torch.Tensor:
    """randn(1, C, 2⌈H/16⌉, 2⌈W/16⌉) in float32 from a seeded CPU generator."""
    h, w = 2 * math.ceil(height / 16), 2 * math.ceil(width / 16)
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(1, channels, h, w, generator=generator, dtype=torch.float32)


def prepare_img(noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed tokens (B, h·w, C·4) and ids (B, h·w, 3) = [0, row, col] on the h×w grid."""
    b, c, hh, ww = noise.shape
    h, w = hh // 2, ww // 2
    img = noise.reshape(b, c, h, 2, w, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w, c * 4)
    ids = torch.zeros(h, w, 3)
    ids[..., 1] += torch.arange(h)[:, None]
    ids[..., 2] += torch.arange(w)[None, :]
    return img, ids.reshape(1, h * w, 3).expand(b, -1, -1)


@dataclass(frozen=True)
class Text:
    """One encoded prompt in BFL form: T5 tokens (B, L, D), txt ids (B, L, 3), CLIP pooled y."""

    txt: torch.Tensor
    txt_ids: torch.Tensor
    y: torch.Tensor


@dataclass(frozen=True)
class Rules:
    """The official sampling controls (§5.2)."""

    start_step: int = 0
    true_cfg: float = 1.0
    cfg_start_step: int = 1
    id_weight: float = 1.0
    guidance: float = 4.0


def denoise(
    w: flux_bfl.Weights,
    p: flux_bfl.BflParams,
    *,
    img: torch.Tensor,
    img_ids: torch.Tensor,
    text: Text,
    negative: Text | None,
    timesteps: list[float],
    rules: Rules,
    injector: Callable[[torch.Tensor, float], flux_bfl.Injector],
    id_tokens: torch.Tensor | None,
    uncond_id: torch.Tensor | None,
    trace: Trace | None = None,
) -> torch.Tensor:
    """The official Euler loop; ``injector(tokens, weight)`` builds the CA injection."""
    guidance = torch.full((img.shape[0],), rules.guidance)
    use_cfg = abs(rules.true_cfg - 1.0) > 0.01

    def model(x, t, prompt: Text, tokens, kind: str) -> torch.Tensor:
        if trace is not None:
            trace.append((kind, tokens))
        inject = None if tokens is None else injector(tokens, rules.id_weight)
        return flux_bfl.forward(
            w, p, img=x, img_ids=img_ids, txt=prompt.txt, txt_ids=prompt.txt_ids, timesteps=t,
            y=prompt.y, guidance=guidance, inject=inject,
        )  # fmt: skip

    for i, (t_curr, t_prev) in enumerate(zip(timesteps[:-1], timesteps[1:], strict=True)):
        t_vec = torch.full((img.shape[0],), t_curr, dtype=img.dtype)
        with_id = i >= rules.start_step
        pred = model(img, t_vec, text, id_tokens if with_id else None, "pos")
        if use_cfg and i >= rules.cfg_start_step:
            neg_pred = model(img, t_vec, negative, uncond_id if with_id else None, "neg")
            pred = neg_pred + rules.true_cfg * (pred - neg_pred)
        img = img + (t_prev - t_curr) * pred
    return img
