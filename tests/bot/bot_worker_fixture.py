"""TEST FIXTURE, not the engine: plays the engine worker's part through the storage API only.

It claims jobs and drives them through progress, finish, fail and cancel exactly as the real
worker (``python -m engine worker``) does, so the command core and its adapters can be tested
end to end without models. Its images are flat-colour PNGs; its face "encoding" is random.
"""

from __future__ import annotations

import asyncio
import io
import random

import numpy as np
from PIL import Image

from storage import embeddings, jobs
from storage.db import Database
from storage.errors import StorageError
from storage.records import IdentityWrite, JobRecord, ResultData
from storage.schemas import (
    BatchParams,
    CompareParams,
    FaceParams,
    GenerationSettings,
    ImagineParams,
    Refusal,
    RefusalCode,
    ResultKind,
)

FINGERPRINT = "fixture-worker-v1"
BUILT_IN_COMPARE = ["a portrait in a park", "an astronaut on the moon", "a chef in a kitchen"]


def png(colour: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def face_embedding(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    emb = embeddings.IdentityEmbedding(
        id_tokens=rng.standard_normal((1, 4, 16)).astype(np.float16),
        uncond_tokens=rng.standard_normal((4, 16)).astype(np.float16),
        arcface=rng.standard_normal((1, 8)).astype(np.float32),
        fingerprint=FINGERPRINT,
    )
    return embeddings.pack(emb)


class FixtureWorker:
    """Burst-mode job runner over the storage API (``faces_in_photo`` > 1 simulates a group)."""

    def __init__(
        self, db: Database, *, faces_in_photo: int = 1, worker_id: str = "fixture"
    ) -> None:
        self.db = db
        self.faces_in_photo = faces_in_photo
        self.worker_id = worker_id
        self.processed: list[int] = []

    async def drain(self) -> list[int]:
        """Run queued jobs until none is left; returns their ids."""
        done = []
        while (job := await jobs.claim(self.db, self.worker_id)) is not None:
            await self.process(job)
            done.append(job.id)
        self.processed += done
        return done

    async def run(self, stop: asyncio.Event, interval: float = 0.02) -> None:
        """Drain repeatedly until ``stop`` is set (a background worker for adapter tests)."""
        while not stop.is_set():
            await self.drain()
            await asyncio.sleep(interval)

    async def process(self, job: JobRecord) -> None:
        params = job.params
        if await jobs.progress(self.db, job.id, self.worker_id, 1, 2):
            await jobs.mark_cancelled(self.db, job.id, self.worker_id)
            return
        if isinstance(params, FaceParams):
            await self._face(job, params)
            return
        prompts = _prompts(params)
        out = [
            ResultData(i, png((40 * i % 255, 90, 160)), _seed(params.settings, i), p, 0.5 + i / 100)
            for i, p in enumerate(prompts)
        ]
        if isinstance(params, CompareParams):
            out.append(ResultData(0, png((1, 2, 3), (96, 32)), kind=ResultKind.GRID))
        await jobs.progress(self.db, job.id, self.worker_id, 2, 2)
        await jobs.finish(self.db, job.id, self.worker_id, out)

    async def _face(self, job: JobRecord, params: FaceParams) -> None:
        chosen = params.face_index is not None or params.crop is not None
        if self.faces_in_photo > 1 and not chosen:
            await self._several_faces(job)
            return
        await jobs.progress(self.db, job.id, self.worker_id, 2, 2)  # encoded, as the engine's 2/2
        face = IdentityWrite(
            params.name, face_embedding(job.id), mode=params.mode,
            thumbnail=png((200, 150, 120)), make_default=params.make_default,
        )  # fmt: skip
        try:  # saved with the job's results, in one transaction, as the engine worker does
            await jobs.finish(
                self.db, job.id, self.worker_id, [ResultData(0, face.thumbnail)], identity=face
            )
        except StorageError as exc:  # e.g. the name was taken while the job waited
            await jobs.fail(self.db, job.id, self.worker_id, exc.user_message, repr(exc))

    async def _several_faces(self, job: JobRecord) -> None:
        """Refused as the engine refuses a group photo: a structured refusal with the count and
        the numbered preview, written with the failure (the wording is only for the user)."""
        n = self.faces_in_photo
        await jobs.progress(self.db, job.id, self.worker_id, 2, 2)
        refusal = Refusal(code=RefusalCode.SEVERAL_FACES, faces=n)
        message = f"Group photo: {n} faces found; choose one with a face number or a crop box."
        await jobs.fail(
            self.db, job.id, self.worker_id, message, refusal=refusal, preview=png((9, 9, 9))
        )


def _prompts(params: ImagineParams | BatchParams | CompareParams) -> list[str]:
    if isinstance(params, ImagineParams):
        return [params.prompt]
    return list(params.prompts) or list(BUILT_IN_COMPARE)


def _seed(settings: GenerationSettings, i: int) -> int:
    return settings.seed + i if settings.seed is not None else random.randrange(2**32 - 16)
