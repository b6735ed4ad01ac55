"""Shared pieces of the worker tests: one tiny engine per process, jobs, workers, PNG text."""

from __future__ import annotations

import atexit
import functools
import io
import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.presets import Engine, load_engine
from engine.worker import Worker, WorkerOptions
from storage import identities, jobs, results, users, workers
from storage.db import Database
from storage.records import IdentityRecord, JobRecord, ResultRecord
from storage.schemas import GenerationSettings, ResultKind

ROOT = Path(__file__).resolve().parents[2]
ALL_KINDS = (ResultKind.IMAGE, ResultKind.GRID)
_ids = itertools.count(1)


@functools.cache
def tiny_engine() -> Engine:
    """The tiny preset, loaded once per test process (closed at exit)."""
    engine = load_engine("tiny")
    atexit.register(engine.close)
    return engine


@functools.cache
def compute_executor() -> ThreadPoolExecutor:
    """The one compute thread every in-process worker shares (the engine runs one job at a time)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-engine")


def one_thread_engine() -> Iterator[Engine]:
    """Body of the test modules' ``engine`` fixture: the tiny engine, torch on one thread.

    On 2 shared cores extra intra-op threads only spin; one thread is several times faster.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tiny_engine()
    torch.set_num_threads(threads)


def astronaut_face_png() -> bytes:
    """scikit-image's astronaut cropped to 256 × 256 around her face (a real photo, one face)."""
    from skimage import data

    from engine.images import png_bytes

    return png_bytes(np.ascontiguousarray(data.astronaut()[20:276, 90:346]))


@functools.cache
def astronaut_identity() -> tuple[bytes, bytes]:
    """(embedding bytes, thumbnail PNG) of the astronaut, encoded once by the tiny engine."""
    from engine.codec import embedding_to_bytes

    engine = tiny_engine()
    face = engine.prepare_face(astronaut_face_png())
    return embedding_to_bytes(engine.encode_identity([face])), face.thumbnail_png


async def make_user(db: Database, uid: str = "1") -> int:
    return (await users.get_or_create_user(db, "discord", uid)).id


async def save_astronaut(db: Database, owner_id: int, name: str = "astro") -> IdentityRecord:
    data, thumb = astronaut_identity()
    return await identities.save_identity(db, owner_id, name, data, thumbnail=thumb)


def small(steps: int = 2, seed: int | None = 7, **kw: object) -> GenerationSettings:
    """The smallest settings the job contract allows: 256 × 256, a few steps."""
    return GenerationSettings(width=256, height=256, steps=steps, seed=seed, **kw)


def options(**kw: object) -> WorkerOptions:
    base = dict(
        worker_id=f"test-worker-{next(_ids)}",
        lease_seconds=30.0,
        heartbeat_seconds=5.0,
        poll_seconds=0.05,
        progress_interval=1.0,
        grace_seconds=10.0,
        burst=True,
    )
    return WorkerOptions(**(base | kw))  # type: ignore[arg-type]


async def make_worker(db: Database, engine: Engine, **kw: object) -> Worker:
    """A registered, ready burst-mode worker on the shared compute thread."""
    worker = Worker(db, engine, options(**kw), executor=compute_executor())
    await workers.register_worker(
        db, worker.worker_id, host="test", device="cpu", preset=engine.name
    )
    await workers.mark_worker_ready(db, worker.worker_id, fingerprint=engine.fingerprint)
    return worker


async def drain(db: Database, engine: Engine, **kw: object) -> Worker:
    """Run a new burst worker until the queue is empty."""
    worker = await make_worker(db, engine, **kw)
    await worker.run()
    return worker


async def job(db: Database, job_id: int) -> JobRecord:
    return await jobs.get_job(db, job_id)


async def outputs(db: Database, owner_id: int, job_id: int) -> list[ResultRecord]:
    return await results.list_results(db, owner_id, job_id, kinds=ALL_KINDS)


def png_text(png: bytes) -> dict[str, str]:
    """The PNG's text chunks."""
    with Image.open(io.BytesIO(png)) as img:
        img.load()
        return dict(img.text)


def png_size(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as img:
        return img.size


class TransformerHook:
    """A forward pre-hook on the FLUX transformer: counts denoising passes, may act on one.

    Test fixture: it raises or calls ``action`` inside a real sampling step (the seam a real
    out-of-memory error or a cancel click would hit).
    """

    def __init__(self, engine: Engine, *, at: int = 0, action=None, error=None) -> None:
        self.calls, self.at, self.action, self.error = 0, at, action, error
        self._handle = engine.pipeline.transformer.register_forward_pre_hook(self)

    def __call__(self, module, args):  # noqa: ANN001
        self.calls += 1
        if self.calls == self.at and self.action is not None:
            self.action()
        if self.calls == self.at and self.error is not None:
            raise self.error

    def __enter__(self) -> TransformerHook:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()
