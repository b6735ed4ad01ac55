"""Engine speed and memory: plain diffusers vs the engine loop vs PuLID, per memory mode.

    .venv/bin/python -m benchmarks.engine [--device auto|cpu|cuda] [--steps 4] [--size 1024]
                                        [--modes gpu,offload,fp8] [--compile] [--threads N]

(Run it as a module from the repository root: as a script, its own name would shadow the
``engine`` package.)

On the CPU it runs the ``tiny`` preset (64 px; the figures measure the machinery, not FLUX). On a
GPU it builds the full-size FLUX.1-dev transformer and VAE from their configurations with random
bf16 weights, the official-shape PuLID modules and the EVA02-CLIP-L-336 tower (random weights
too: speed does not depend on the values), and feeds precomputed random text embeddings (the
``*_embeds`` bypass; T5-XXL is not timed). Seconds per step come from ``--steps`` timed steps
after a warm-up; a 28-step image is 28 × s/step + one VAE decode. Peak memory is CUDA's
``max_memory_allocated`` per mode (on the CPU, the process's peak RSS so far). Prints a table.
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import SimpleNamespace

import torch

from engine.eva import EvaTower, build_eva
from engine.identity import IdentityEncoder
from engine.memory import apply_memory_mode
from engine.pipeline import FluxPulidPipeline, IdentityTokens, PromptEmbeds, SamplingParams
from engine.presets import load_engine

IMAGE_STEPS = 28
FLUX_DEV_TRANSFORMER = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
    guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)  # fmt: skip
FLUX_DEV_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
    layers_per_block=2, latent_channels=16, norm_num_groups=32, scaling_factor=0.3611,
    shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
)  # fmt: skip


@dataclass
class Bench:
    """Everything one measurement needs."""

    pipe: FluxPulidPipeline
    encoder: IdentityEncoder
    face: object
    embeds: PromptEmbeds
    negative: PromptEmbeds
    identity: IdentityTokens
    params: SamplingParams
    release: Callable[[], None]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int = 1) -> float:
    """Median seconds of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# --- set-ups -------------------------------------------------------------------------------


def tiny_bench(mode: str, steps: int, size: int) -> Bench:
    from PIL import Image
    from skimage import data

    from engine.images import png_bytes

    engine = load_engine("tiny", memory_mode=mode)
    face = engine.prepare_face(png_bytes(Image.fromarray(data.astronaut())))
    emb = engine.encode_identity([face])
    params = SamplingParams(width=size, height=size, steps=steps, seed=0, max_sequence_length=128)
    pipe = engine.pipeline
    return Bench(
        pipe, engine.encoder, face, pipe.encode_prompt("a portrait photo"),
        pipe.encode_prompt(params.negative_prompt), engine.identity_tokens(emb), params,
        engine.close,
    )  # fmt: skip


def full_bench(mode: str, steps: int, size: int, device: torch.device) -> Bench:
    """FLUX.1-dev-sized transformer + VAE, official PuLID shapes, EVA-L: random bf16 weights."""
    from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel

    from engine import tiny
    from engine.pulid import PulidAdapter, random_pulid_state_dict

    dtype = torch.bfloat16
    with torch.device(device), _default_dtype(dtype):
        transformer = FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER).eval()
        vae = AutoencoderKL(**FLUX_DEV_VAE).eval()
        tower = EvaTower(build_eva())
    flux = FluxPipeline(tiny.scheduler(), vae, None, None, None, None, transformer)
    flux.set_progress_bar_config(disable=True)
    cfg = transformer.config
    num_ca = -(-cfg.num_layers // 2) + -(-cfg.num_single_layers // 4)  # 20 for FLUX.1-dev
    state = random_pulid_state_dict(
        num_ca=num_ca, ca_dim=transformer.inner_dim, device=device, dtype=dtype
    )
    adapter = PulidAdapter.attach(transformer, state)
    memory = apply_memory_mode(flux, resident=[adapter], encoders=[tower], mode=mode, device=device)
    encoder = IdentityEncoder(tower, adapter, "bench")
    gen = torch.Generator(device).manual_seed(0)

    def embeds() -> PromptEmbeds:
        t5 = torch.randn(1, 128, cfg.joint_attention_dim, generator=gen, device=device, dtype=dtype)
        pooled = torch.randn(
            1, cfg.pooled_projection_dim, generator=gen, device=device, dtype=dtype
        )
        return PromptEmbeds(t5, pooled, torch.zeros(128, 3, device=device, dtype=dtype))

    face = SimpleNamespace(
        arcface=torch.randn(512).numpy() * 20, eva_input=torch.randn(1, 3, 336, 336)
    )
    tokens = encoder.encode([face])
    identity = IdentityTokens(tokens.id_tokens[:1].to(device), tokens.uncond_tokens.to(device))
    params = SamplingParams(width=size, height=size, steps=steps, seed=0)
    pipe = FluxPulidPipeline(flux, adapter, device)

    def release() -> None:
        memory.close()
        adapter.detach()

    return Bench(pipe, encoder, face, embeds(), embeds(), identity, params, release)


class _default_dtype:  # noqa: N801 (a context manager used like a function)
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype, self.saved = dtype, torch.get_default_dtype()

    def __enter__(self) -> None:
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc: object) -> None:
        torch.set_default_dtype(self.saved)


# --- measurements --------------------------------------------------------------------------


def diffusers_plain(b: Bench) -> None:
    """diffusers' own FluxPipeline.__call__ with the same embeddings (the baseline)."""
    p = b.params
    b.pipe.flux(
        prompt_embeds=b.embeds.prompt_embeds, pooled_prompt_embeds=b.embeds.pooled_prompt_embeds,
        height=p.height, width=p.width, num_inference_steps=p.steps, guidance_scale=p.guidance,
        generator=torch.Generator(b.pipe.device).manual_seed(0), output_type="latent",
    )  # fmt: skip


def loop(b: Bench, identity: bool, true_cfg: float = 1.0) -> None:
    params = replace(b.params, true_cfg=true_cfg)
    ident = b.identity if identity else None
    b.pipe.denoise(b.embeds, params, ident, negative=b.negative)


def measure(b: Bench, label: str, device: torch.device, repeats: int) -> list[tuple]:
    """Rows (label, case, s/step, s per 28-step image, peak MiB)."""
    latents = b.pipe.denoise(b.embeds, b.params)
    decode = timed(lambda: b.pipe.decode(latents, b.params), device)
    cases = [
        ("diffusers FluxPipeline, plain", lambda: diffusers_plain(b)),
        ("engine loop, no identity", lambda: loop(b, False)),
        ("engine loop + PuLID", lambda: loop(b, True)),
        ("engine loop + PuLID + true CFG 4", lambda: loop(b, True, 4.0)),
    ]
    rows = []
    for name, fn in cases:
        reset_peak(device)
        per_step = timed(fn, device, repeats) / b.params.steps
        rows.append((label, name, per_step, IMAGE_STEPS * per_step + decode, peak_mib(device)))
    reset_peak(device)
    encode = timed(lambda: b.encoder.encode([b.face]), device, repeats)
    rows.append((label, "identity encode (EVA + IDFormer)", None, encode, peak_mib(device)))
    return rows


def compiled(b: Bench, label: str, device: torch.device, repeats: int) -> list[tuple]:
    start = time.perf_counter()
    b.pipe.transformer.compile_repeated_blocks()
    loop(b, True)
    loop(b, False)
    sync(device)
    warm = time.perf_counter() - start
    rows = [(label + " +compile", "compile + first runs", None, warm, peak_mib(device))]
    for name, ident in (("engine loop, no identity", False), ("engine loop + PuLID", True)):
        per_step = timed(lambda ident=ident: loop(b, ident), device, repeats) / b.params.steps
        rows.append((label + " +compile", name, per_step, IMAGE_STEPS * per_step, None))
    return rows


def _cell(value: float | None, spec: str) -> str:
    return f"{'-':>9}" if value is None else format(value, spec)


def print_table(rows: list[tuple], device_name: str, size: int) -> None:
    print(f"\nengine benchmark on {device_name}, {size}x{size}, per-image = {IMAGE_STEPS} steps")
    print("(s/image of the encode and compile rows: seconds for that operation)")
    print(f"{'setup':<18} {'case':<36} {'s/step':>9} {'s/image':>9} {'peak MiB':>9}")
    for label, case, step, image, peak in rows:
        cells = (_cell(step, "9.4f"), _cell(image, "9.3f"), _cell(peak, "9.0f"))
        print(f"{label:<18} {case:<36} {' '.join(cells)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--steps", type=int, default=4, help="timed steps per run")
    ap.add_argument("--size", type=int, default=None, help="image side (cpu 64, gpu 1024)")
    ap.add_argument("--modes", default="gpu,offload,fp8")
    ap.add_argument("--compile", action="store_true", help="also time regional compile")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.size or (1024 if use_cuda else 64)
    rows: list[tuple] = []
    for mode in args.modes.split(","):
        b = (
            full_bench(mode, args.steps, size, device)
            if use_cuda
            else tiny_bench(mode, args.steps, size)
        )
        label = f"{'flux-dev' if use_cuda else 'tiny'} {mode}"
        rows += measure(b, label, device, args.repeats)
        if args.compile and mode == "gpu":
            rows += compiled(b, label, device, args.repeats)
        b.release()
        del b
        gc.collect()
        reset_peak(device)
    name = (
        torch.cuda.get_device_name(device)
        if use_cuda
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print_table(rows, name, size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
