"""What the face, imagine and batch jobs do (compare lives in :mod:`engine.compare`).

A runner takes a :class:`JobContext` and returns a :class:`JobOutcome`: the results to store, a
one-line summary for the user and, for a face job, the identity to save (the worker's finish
writes all of them in one transaction). It raises :class:`~engine.jobs_errors.JobRefused` (or a
storage or engine error carrying a user message) when the job cannot be done as asked, and
:class:`~engine.pipeline.GenerationCancelled` when the monitor asked it to stop. Model work runs on
the worker's compute thread (:meth:`JobContext.compute`); storage calls stay on the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from PIL import Image

from engine import codec
from engine.faces import FaceError, PreparedFace
from engine.identity import FingerprintMismatch, IdentityEmbedding
from engine.images import ImageError, png_bytes
from engine.jobs_errors import JobRefused, sentence
from engine.jobs_monitor import JobMonitor
from engine.pipeline import GenerationCancelled, Progress, SamplingParams
from engine.presets import Engine
from engine.scoring import IdentityScore
from storage import embeddings, identities
from storage.db import Database
from storage.records import IdentityRecord, IdentityWrite, JobRecord, ResultData
from storage.schemas import FaceParams, GenerationSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
NO_UPLOAD = "The uploaded photo is no longer available; please send it again."


@dataclass(frozen=True)
class JobOutcome:
    """What a finished job stores: its results, a summary line for the user (the job's note)
    and, for a face job, the identity that the finish saves with them."""

    results: list[ResultData]
    note: str | None = None
    identity: IdentityWrite | None = None


@dataclass
class JobContext:
    """Everything a runner needs: storage, the loaded engine, the job and its monitor."""

    db: Database
    engine: Engine
    job: JobRecord
    monitor: JobMonitor
    executor: Executor | None = None

    async def compute(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the compute thread (the one that owns the models)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args))

    def on_step(self, progress: Progress) -> bool:
        """The pipeline's step callback: one step count over every image of the job."""
        done = progress.image * progress.steps + progress.step
        return self.monitor.step(done, progress.images * progress.steps)

    def checkpoint(self, done: int, total: int) -> None:
        """Report a non-sampling step; stop here when the monitor says so."""
        if not self.monitor.step(done, total):
            raise GenerationCancelled(0, done)

    def extra_metadata(self) -> dict[str, str]:
        meta = {"job": str(self.job.id), "job_kind": self.job.kind.value}
        return meta | ({"notice": self.engine.notice} if self.engine.notice else {})


def join_notes(*notes: str | None) -> str | None:
    """The notes that are set, as one line (None when there is none)."""
    kept = [n for n in notes if n]
    return "; ".join(kept) if kept else None


# --- face -------------------------------------------------------------------------------------


async def run_face(ctx: JobContext) -> JobOutcome:
    """Detect, choose and encode the uploaded face; the worker's finish saves it with the job.

    The identity is written in the job's finish transaction (storage.job_finish), so a worker
    killed at any moment leaves either nothing or the face and the job's result together.
    """
    params = ctx.job.params
    assert isinstance(params, FaceParams)
    if not ctx.job.input_blob:
        raise JobRefused(NO_UPLOAD)
    face, embedding = await ctx.compute(_encode_upload, ctx, params, ctx.job.input_blob)
    note = join_notes(face.quality_note)
    png = _face_png(ctx, face.thumbnail_png, params.name, embedding.fingerprint, note)
    identity = IdentityWrite(
        name=params.name,
        embedding=codec.embedding_to_bytes(embedding, params.name),
        mode=params.mode,
        thumbnail=face.thumbnail_png,
        make_default=params.make_default,
    )
    return JobOutcome([ResultData(index=0, png=png)], note, identity)


def _encode_upload(
    ctx: JobContext, params: FaceParams, upload: bytes
) -> tuple[PreparedFace, IdentityEmbedding]:
    """Compute thread: decode, detect, choose, align, parse, then encode the identity."""
    crop = params.crop
    try:
        face = ctx.engine.prepare_face(
            upload, crop=crop, crop_relative=bool(crop and crop.relative), index=params.face_index
        )
    except ImageError as exc:
        raise JobRefused(exc.user_message) from exc
    except FaceError as exc:  # the detector's quality note may explain a missed face
        preview, note = getattr(exc, "preview_png", None), ctx.engine.analyzer.quality_note
        raise JobRefused(exc.user_message, preview=preview, note=note) from exc
    ctx.checkpoint(1, 2)
    embedding = ctx.engine.encode_identity([face])
    ctx.checkpoint(2, 2)
    return face, embedding


def _face_png(
    ctx: JobContext, thumbnail_png: bytes, name: str, weights: str, note: str | None
) -> bytes:
    """The face's thumbnail, labelled (a crop of the upload, so no AI-generated tag)."""
    meta = {"kind": "face thumbnail", "face": name, "weights": weights}
    meta |= ctx.extra_metadata() | ({"note": note} if note else {})
    with Image.open(io.BytesIO(thumbnail_png)) as img:
        return png_bytes(img.convert("RGB"), meta)


# --- imagine and batch ------------------------------------------------------------------------


@dataclass(frozen=True)
class Generated:
    """The images of a job, their scores, and what made them."""

    identity: IdentityRecord
    embedding: IdentityEmbedding
    prompts: list[str]
    params: SamplingParams
    images: list[Image.Image]
    scores: list[IdentityScore | None]


def base_seed(job: JobRecord, settings: GenerationSettings) -> int:
    """The asked seed, or one drawn from the job itself (the same for every attempt)."""
    if settings.seed is not None:
        return settings.seed
    key = f"pulid-bot:{job.id}:{job.created_at.isoformat()}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "big")


def sampling_params(settings: GenerationSettings, seed: int) -> SamplingParams:
    """The pipeline's parameters for the job's settings."""
    fields = settings.model_dump(exclude={"seed"})
    return SamplingParams(seed=seed, **fields)


async def load_identity(
    ctx: JobContext, identity_id: int
) -> tuple[IdentityRecord, IdentityEmbedding]:
    """The job's face from storage, refused when other weights made it."""
    record = await identities.get_identity_by_id(ctx.db, ctx.job.owner_id, identity_id)
    stored = embeddings.unpack(record.embedding, max_bytes=2**40, max_refs=2**31)
    try:
        return record, codec.from_storage(stored, ctx.engine.fingerprint)
    except FingerprintMismatch as exc:
        raise JobRefused(sentence(str(exc))) from exc


async def generate_images(ctx: JobContext, prompts: Sequence[str], *, score: bool) -> Generated:
    """Load the identity once, make one image per prompt; with ``score``, score each one."""
    params = ctx.job.params
    record, embedding = await load_identity(ctx, params.identity_id)
    sampling = sampling_params(params.settings, base_seed(ctx.job, params.settings))
    images, scores = await ctx.compute(_generate, ctx, list(prompts), sampling, embedding, score)
    return Generated(record, embedding, list(prompts), sampling, images, scores)


def _generate(
    ctx: JobContext,
    prompts: list[str],
    params: SamplingParams,
    embedding: IdentityEmbedding,
    score: bool,
) -> tuple[list[Image.Image], list[IdentityScore | None]]:
    images = ctx.engine.generate(prompts, params, embedding, callback=ctx.on_step)
    if not score:
        return images, [None] * len(images)
    return images, [ctx.engine.score(img, embedding.arcface) for img in images]


def image_results(ctx: JobContext, run: Generated) -> list[ResultData]:
    """One stored PNG per image, with prompt, seed, parameters, weights and the AI tag."""
    results = []
    for i, (prompt, image, score) in enumerate(
        zip(run.prompts, run.images, run.scores, strict=True)
    ):
        params = replace(run.params, seed=run.params.seed + i)
        extra = ctx.extra_metadata() | ({"identity_score": score.label()} if score else {})
        meta = codec.result_metadata(prompt, params, ctx.engine.fingerprint, extra)
        png = codec.png_with_metadata(image, meta)
        similarity = score.similarity if score else None
        results.append(
            ResultData(i, png, seed=params.seed, prompt=prompt, identity_score=similarity)
        )
    return results


async def run_imagine(ctx: JobContext) -> JobOutcome:
    """One image of the identity."""
    run = await generate_images(ctx, [ctx.job.params.prompt], score=False)
    return JobOutcome(image_results(ctx, run), join_notes(ctx.engine.notice))


async def run_batch(ctx: JobContext) -> JobOutcome:
    """One image per prompt, the identity encoded once."""
    run = await generate_images(ctx, ctx.job.params.prompts, score=False)
    return JobOutcome(image_results(ctx, run), join_notes(ctx.engine.notice))
