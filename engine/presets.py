"""Presets (``flux-dev``, ``tiny``), image-size presets, and the :class:`Engine` a worker holds.

``load_engine(preset, ...)`` builds every model once; the worker keeps the engine between jobs
and calls, per job, :meth:`Engine.prepare_face` / :meth:`Engine.encode_identity` (face jobs) or
:meth:`Engine.generate` and :meth:`Engine.score` (imagine, batch, compare).
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from engine import models, tiny
from engine.eva import EvaTower, build_eva, load_eva_weights
from engine.faces_choice import MIN_FACE_PX
from engine.identity import FUSION_METHODS, IdentityEmbedding, IdentityEncoder, check_fingerprint
from engine.memory import (
    MEMORY_MODES,
    MemoryModeError,
    MemoryPlan,
    apply_memory_mode,
    cast_flux,
    cast_module,
    default_dtype,
    flux_dtypes,
)
from engine.pipeline import (
    FluxPulidPipeline,
    IdentityTokens,
    PipelineInputError,
    PromptEmbeds,
    SamplingParams,
    StepCallback,
)
from engine.scoring import IdentityScore, score_image

log = logging.getLogger(__name__)

PRESETS = ("flux-dev", "tiny")
TINY_NOTICE = "tiny preset: random test weights, the images are noise"
#: Aspect-ratio presets (width:height); sizes come out in multiples of 16.
ASPECT_RATIOS = {
    "1:1": (1, 1), "3:4": (3, 4), "4:3": (4, 3), "2:3": (2, 3), "3:2": (3, 2),
    "4:5": (4, 5), "5:4": (5, 4), "9:16": (9, 16), "16:9": (16, 9), "7:9": (7, 9),
}  # fmt: skip


#: Substrings of the allocators' messages (PyTorch CPU/CUDA, cuBLAS/cuDNN, ONNX Runtime).
OOM_MARKERS = (
    "out of memory",
    "can't allocate memory",
    "cannot allocate memory",
    "cublas_status_alloc_failed",
    "failed to allocate memory",
)
#: Those of the markers that mean the machine's own memory (RAM), not the GPU's.
HOST_OOM_MARKERS = ("can't allocate memory", "cannot allocate memory", "defaultcpuallocator")
#: What may help when the GPU's memory ran out, by memory mode (a lighter mode, if any).
GPU_OOM_ADVICE = {
    "gpu": "try a smaller size, or ask the host to switch to the offload or fp8 memory mode",
    "offload": "try a smaller size, or ask the host to switch to the fp8 memory mode",
    "fp8": "try a smaller size (the host already uses the lightest memory mode)",
}
HOST_OOM_ADVICE = "try a smaller size, or ask the host to give the bot more memory"
#: ONNX Runtime providers of the face models, by ``[engine] onnx_provider``.
ONNX_PROVIDERS = {
    "cpu": ("CPUExecutionProvider",),
    "gpu": ("CUDAExecutionProvider", "CPUExecutionProvider"),
}
CUDA_PROVIDER = "CUDAExecutionProvider"


class EngineOutOfMemory(RuntimeError):
    """The GPU or the machine ran out of memory; ``user_message`` says which and what helps.

    The job fails, the engine frees memory and carries on.
    """

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


def is_out_of_memory(exc: BaseException) -> bool:
    """A device or host allocation failure, whatever layer raised it."""
    if isinstance(exc, EngineOutOfMemory | torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in OOM_MARKERS)


def out_of_memory_message(exc: BaseException, memory: MemoryPlan) -> str:
    """The user's line for an allocation failure: which memory ran out, and what may help.

    On a CPU device, and for the host allocator's failures on any device, it is the machine's
    memory; otherwise the GPU's, where a lighter memory mode may help.
    """
    text = str(exc).lower()
    host = isinstance(exc, MemoryError) or any(m in text for m in HOST_OOM_MARKERS)
    if memory.device.type == "cpu" or host:
        return f"The machine ran out of memory on this job; {HOST_OOM_ADVICE}."
    advice = GPU_OOM_ADVICE.get(memory.mode, GPU_OOM_ADVICE["fp8"])
    return f"The GPU ran out of memory on this job; {advice}."


def size_for_aspect(
    aspect: str, *, pixels: int = 1024 * 1024, max_pixels: int | None = None
) -> tuple[int, int]:
    """(width, height), multiples of 16, near ``pixels`` and within ``max_pixels``."""
    if aspect not in ASPECT_RATIOS:
        raise PipelineInputError(f"aspect {aspect!r}: choose one of {', '.join(ASPECT_RATIOS)}")
    a, b = ASPECT_RATIOS[aspect]
    budget = min(pixels, max_pixels) if max_pixels else pixels
    unit = math.sqrt(budget / (a * b))
    w, h = (max(16, int(x * unit) // 16 * 16) for x in (a, b))
    return w, h


@dataclass
class Components:
    """What a preset builder returns: every model, placed on the CPU."""

    flux: object
    adapter: object
    tower: EvaTower
    analyzer: object
    parser: object
    fingerprint: str


class Engine:
    """Loaded models plus the per-job operations; not thread-safe (one job at a time)."""

    def __init__(
        self, name: str, parts: Components, memory: MemoryPlan, *, workdir: Path | None = None,
        fusion: str = "mean", max_pixels: int | None = None, min_face_px: float = MIN_FACE_PX,
    ) -> None:  # fmt: skip
        self.name = name
        self.pipeline = FluxPulidPipeline(parts.flux, parts.adapter, memory.device)
        self.encoder = IdentityEncoder(parts.tower, parts.adapter, parts.fingerprint)
        self.analyzer, self.parser = parts.analyzer, parts.parser
        self.memory, self.fusion, self.max_pixels = memory, fusion, max_pixels
        self.min_face_px = min_face_px
        self._workdir = workdir

    @property
    def fingerprint(self) -> str:
        return self.encoder.fingerprint

    @property
    def notice(self) -> str | None:
        """A line to show with every output (the tiny preset says it draws noise)."""
        return TINY_NOTICE if self.name == "tiny" else None

    def prepare_face(self, data: bytes, *, crop=None, crop_relative: bool = False,
                     index: int | None = None):  # fmt: skip
        """Decode, detect, choose, align and parse one upload (raises FaceError / ImageError).

        Faces smaller than ``min_face_px`` (``[engine] min_face_px``) are refused as too small.
        """
        from engine.faces import prepare_reference

        with self._guard(free_after=False):
            return prepare_reference(
                data, self.analyzer, self.parser, crop=crop, crop_relative=crop_relative,
                index=index, eva_size=self.encoder.tower.image_size, min_face_px=self.min_face_px,
            )  # fmt: skip

    def encode_identity(self, refs: Sequence, **face_options) -> IdentityEmbedding:
        """Reference uploads (bytes) or prepared faces → one embedding (n_refs tokens)."""
        faces = [
            r if not isinstance(r, bytes) else self.prepare_face(r, **face_options) for r in refs
        ]
        with self._guard():
            return self.encoder.encode(faces)

    def identity_tokens(
        self, identity: IdentityEmbedding, fusion: str | None = None
    ) -> IdentityTokens:
        """Fused cond tokens and uncond tokens, refusing embeddings of other weights."""
        check_fingerprint(identity.fingerprint, self.fingerprint)
        method = fusion or self.fusion
        return IdentityTokens(identity.fused(method), identity.uncond_tokens)

    def generate(
        self, prompts: Sequence[str | PromptEmbeds], params: SamplingParams,
        identity: IdentityEmbedding | None = None, *, fusion: str | None = None,
        negative: str | PromptEmbeds | None = None, callback: StepCallback | None = None,
    ) -> list[Image.Image]:  # fmt: skip
        """One image per prompt; the identity is fused once and reused for all of them."""
        tokens = self.identity_tokens(identity, fusion) if identity is not None else None
        with self._guard():
            return self.pipeline.generate(
                prompts, params, tokens, negative=negative, callback=callback,
                max_pixels=self.max_pixels,
            )  # fmt: skip

    def score(self, image: Image.Image, arcface) -> IdentityScore:
        """ArcFace cosine of the best face in ``image`` to the identity's references."""
        with self._guard(free_after=False):
            return score_image(self.analyzer, image, arcface)

    def _guard(self, *, free_after: bool = True) -> _OomGuard:
        return _OomGuard(self.memory, free_after=free_after)

    def close(self) -> None:
        """Drop hooks, models and the tiny preset's scratch folder."""
        self.memory.close()
        self.pipeline.adapter.detach()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
        if self.memory.device.type == "cuda":
            torch.cuda.empty_cache()


class _OomGuard:
    """Turns an allocation failure into :class:`EngineOutOfMemory` (naming the memory that ran
    out) after freeing what it can; ``free_after`` also offloads models after a success."""

    def __init__(self, memory: MemoryPlan, *, free_after: bool = True) -> None:
        self.memory, self.free_after = memory, free_after

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if self.free_after or exc is not None:
            self.memory.free()
        if exc is None or isinstance(exc, EngineOutOfMemory) or not is_out_of_memory(exc):
            return False
        if self.memory.device.type == "cuda":
            torch.cuda.empty_cache()
        raise EngineOutOfMemory(out_of_memory_message(exc, self.memory)) from exc


# --- builders -----------------------------------------------------------------------------


def build_tiny(
    seed: int, workdir: Path, device: torch.device, spec: tiny.TinySpec = tiny.TINY
) -> Components:
    """Every component at tiny size with seeded random weights; no download."""
    from engine.faces import FaceAnalyzer
    from engine.parsing import FaceParser
    from engine.pulid import PulidAdapter

    flux = tiny.flux_pipeline(seed, spec)
    tower = EvaTower(tiny.eva_model(seed + 5, spec))
    state = PulidAdapter.build_state_dict_tiny(
        flux.transformer, vit_dim=tower.width, id_in_dim=512 + spec.eva.num_classes, seed=seed + 6
    )
    adapter = PulidAdapter.attach(
        flux.transformer,
        state,
        encoder_heads=spec.pulid_encoder_heads,
        ca_heads=spec.pulid_ca_heads,
    )
    analyzer = FaceAnalyzer.tiny(workdir, seed, detector="haar")
    fp = models.tiny_fingerprint(seed, spec.describe())
    return Components(flux, adapter, tower, analyzer, FaceParser.tiny(seed, device=device), fp)


#: The flux-dev files :func:`build_flux_dev` opens itself (the face files go through
#: :func:`flux_dev_analyzer`, where a missing detector means the Haar fallback).
BUILT_ROLES = ("flux", "pulid", "eva")


def build_flux_dev(
    cfg: models.PresetConfig, model_dir: Path, cache_dir: Path | None, device: torch.device,
    dtype: torch.dtype, onnx_provider: str = "cpu",
) -> Components:  # fmt: skip
    """The real weights from ``model_dir`` (see :mod:`engine.models`); missing → clear error."""
    from diffusers import FluxPipeline

    from engine.faces import BISENET_FILE
    from engine.parsing import FaceParser
    from engine.pulid import PulidAdapter, load_pulid_state_dict

    path = {role: models.local_path(cfg.asset(role), model_dir) for role in BUILT_ROLES}
    flux = FluxPipeline.from_pretrained(
        str(path["flux"]), torch_dtype=flux_dtypes(dtype), cache_dir=cache_dir
    )
    flux.set_progress_bar_config(disable=True)
    adapter = PulidAdapter.attach(flux.transformer, load_pulid_state_dict(path["pulid"]))
    tower = EvaTower(load_eva_weights(build_eva(), path["eva"]).to(dtype))
    analyzer = flux_dev_analyzer(model_dir, onnx_provider, device)
    parser = FaceParser.from_file(Path(model_dir) / BISENET_FILE, device=device)
    fp = models.preset_fingerprint(cfg, model_dir)
    return Components(flux, adapter, tower, analyzer, parser, fp)


def onnx_providers(onnx_provider: str, device: torch.device) -> list[str | tuple[str, dict]]:
    """ONNX Runtime providers of the face models for a worker on ``device``.

    The CUDA provider gets the worker's own GPU (``cuda:N`` → ``device_id`` N; bare ``cuda`` or
    a CPU worker → 0), so one worker per GPU keeps its face models on that GPU.
    """
    if onnx_provider not in ONNX_PROVIDERS:
        raise ValueError(f"onnx_provider {onnx_provider!r}: choose one of cpu, gpu")
    index = (device.index or 0) if device.type == "cuda" else 0
    return [
        (name, {"device_id": index}) if name == CUDA_PROVIDER else name
        for name in ONNX_PROVIDERS[onnx_provider]
    ]


def flux_dev_analyzer(
    model_dir: Path, onnx_provider: str = "cpu", device: torch.device | str = "cpu"
):  # -> FaceAnalyzer
    """antelopev2 (SCRFD + glintr100) from ``model_dir``, the flux-dev face front-end.

    Without the SCRFD file it is the Haar detector with glintr100, whose ``quality_note`` says
    it is the lower-quality fallback (the note reaches the user with each face job); without
    glintr100 (needed for the identity itself) it is :class:`models.MissingWeightsError`.
    """
    from engine.faces import FaceAnalyzer, MissingModelError

    providers = onnx_providers(onnx_provider, torch.device(device))
    try:
        return FaceAnalyzer.from_folder(model_dir, providers=tuple(providers))
    except MissingModelError as exc:
        raise models.MissingWeightsError(exc.user_message) from exc


def load_engine(
    preset: str,
    *,
    device: str | torch.device = "cpu",
    memory_mode: str = "gpu",
    model_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    compile: bool = False,
    pulid_version: str = "v0.9.1",
    eva_source: str = "eva-clip",
    fusion: str = "mean",
    onnx_provider: str = "cpu",
    max_pixels: int | None = None,
    min_face_px: float = MIN_FACE_PX,
    seed: int = 0,
) -> Engine:
    """Build the engine of ``preset`` on ``device`` (weights must already be downloaded).

    ``eva_source`` picks the EVA02-CLIP file (``eva-clip`` official or ``timm``) and
    ``min_face_px`` the smallest face side :meth:`Engine.prepare_face` accepts.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r}: choose one of {', '.join(PRESETS)}")
    if fusion not in FUSION_METHODS:
        raise ValueError(f"fusion {fusion!r}: choose one of {', '.join(FUSION_METHODS)}")
    if memory_mode not in MEMORY_MODES:
        raise MemoryModeError(
            f"memory mode {memory_mode!r}: choose one of {', '.join(MEMORY_MODES)}"
        )
    device = torch.device(device)
    dtype = default_dtype(device)
    workdir = None
    if preset == "tiny":
        workdir = Path(tempfile.mkdtemp(prefix="pulid-tiny-"))
        parts = build_tiny(seed, workdir, device)
    else:
        cfg = models.flux_dev_preset(pulid_version, eva_source)
        model_dir = Path(model_dir or "models")
        models.require(cfg, model_dir)
        cache = Path(cache_dir) if cache_dir else None
        parts = build_flux_dev(cfg, model_dir, cache, device, dtype, onnx_provider)
    cast_flux(parts.flux, dtype)
    for module in (parts.tower, parts.adapter):
        cast_module(module, dtype)
    memory = apply_memory_mode(
        parts.flux, resident=[parts.adapter], encoders=[parts.tower], mode=memory_mode,
        device=device,
    )  # fmt: skip
    if compile:
        parts.flux.transformer.compile_repeated_blocks()
    log.info("engine %s ready on %s (%s, %s)", preset, device, memory_mode, dtype)
    return Engine(
        preset, parts, memory, workdir=workdir, fusion=fusion, max_pixels=max_pixels,
        min_face_px=min_face_px,
    )  # fmt: skip
