"""A worker process from start to exit: settings → database → engine → :class:`Worker` → exit code.

``python -m engine worker [--device D] [--burst] [--threads N] [--grace S] [--worker-id ID]``
calls :func:`worker_command`. The preset is loaded once (load time and memory are logged) and
readiness is reported in storage (``workers``: starting → ready → stopped). A start-up that cannot
succeed (missing weights, no database schema, a device that does not exist) prints one line
``error: …`` on stderr and exits 1; a stop by signal exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import sys
import time
import uuid
from concurrent.futures import Executor, ThreadPoolExecutor

import torch

from engine.memory import MemoryModeError
from engine.models import MissingWeightsError
from engine.presets import Engine, load_engine
from engine.worker import Worker, WorkerOptions
from storage import workers
from storage.config import Settings
from storage.db import Database, Limits
from storage.errors import StorageError

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FATAL = 0, 1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StartupError(RuntimeError):
    """The worker cannot start; the message is the one line the operator sees."""


def make_worker_id(device: str) -> str:
    """Unique per process: host, pid, device and a random tail."""
    return f"{socket.gethostname()}:{os.getpid()}:{device}:{uuid.uuid4().hex[:6]}"


def check_device(device: str) -> torch.device:
    """The torch device, or StartupError when it does not exist here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise StartupError(f"unknown device {device!r}: {exc}") from exc
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= count:
            raise StartupError(f"device {device} is not available ({count} CUDA GPUs found)")
    elif dev.type != "cpu":
        raise StartupError(f"device {device!r}: use cpu or cuda[:N]")
    return dev


def memory_report(device: torch.device) -> str:
    """Peak resident memory of the process, and what the GPU holds."""
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    report = f"peak RSS {peak_mib:.0f} MiB"
    if device.type == "cuda":
        held = torch.cuda.memory_allocated(device) / 2**20
        report += f", {held:.0f} MiB allocated on {device}"
    return report


def load(settings: Settings, device: torch.device) -> Engine:
    """Build the configured preset on ``device`` (runs on the compute thread)."""
    eng = settings.engine
    try:
        return load_engine(
            eng.preset, device=device, memory_mode=eng.memory_mode, model_dir=eng.model_dir,
            cache_dir=eng.hf_cache, compile=eng.compile, pulid_version=eng.pulid_version,
            eva_source=eng.eva_source, fusion=eng.fusion, onnx_provider=eng.onnx_provider,
            max_pixels=settings.limits.max_pixels, min_face_px=eng.min_face_px,
        )  # fmt: skip
    except MissingWeightsError as exc:
        raise StartupError(str(exc)) from exc
    except (MemoryModeError, ValueError, RuntimeError, OSError) as exc:
        log.debug("engine start-up failed", exc_info=True)
        raise StartupError(f"the engine could not start on {device}: {exc}") from exc


async def open_database(settings: Settings) -> Database:
    try:
        return await Database.open(
            settings.database.url,
            limits=Limits.from_settings(settings),
            pool_size=settings.database.pool_size,
        )
    except StorageError as exc:
        raise StartupError(exc.user_message) from exc
    except Exception as exc:  # driver errors: unreachable server, bad credentials, bad path
        raise StartupError(f"cannot open the database: {type(exc).__name__}: {exc}") from exc


class StopSignals:
    """SIGTERM/SIGINT handlers that reach the worker once it exists."""

    def __init__(self) -> None:
        self.received = 0
        self.worker: Worker | None = None

    def __call__(self, signum: int) -> None:
        self.received += 1
        log.info("received %s: stopping", signal.Signals(signum).name)
        if self.worker is not None:
            self.worker.request_stop()

    @contextlib.contextmanager
    def installed(self):
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self, sig)
        try:
            yield self
        finally:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)


async def start_engine(
    settings: Settings, db: Database, device: torch.device, worker_id: str, executor: Executor
) -> Engine:
    """Register, load the preset once on the compute thread, log time and memory, report ready."""
    preset = settings.engine.preset
    host = socket.gethostname()
    await workers.register_worker(
        db, worker_id, host=host, device=str(device), preset=preset, pid=os.getpid()
    )
    started = time.monotonic()
    engine = await asyncio.get_running_loop().run_in_executor(executor, load, settings, device)
    log.info(
        "engine %s loaded on %s in %.1fs (%s, %s); weights %s",
        preset, device, time.monotonic() - started, settings.engine.memory_mode,
        memory_report(device), engine.fingerprint,
    )  # fmt: skip
    if engine.notice:
        log.warning("%s", engine.notice)
    await workers.mark_worker_ready(db, worker_id, fingerprint=engine.fingerprint)
    return engine


async def serve(settings: Settings, options: WorkerOptions, device: str) -> int:
    """Run one worker process to its end; returns the exit code."""
    dev = check_device(device)
    db = await open_database(settings)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
    engine: Engine | None = None
    registered = False
    try:
        with StopSignals().installed() as signals:
            registered = True
            engine = await start_engine(settings, db, dev, options.worker_id, executor)
            worker = Worker(db, engine, options, executor=executor)
            signals.worker = worker
            if signals.received:
                worker.request_stop()
            await worker.run()
        return EXIT_OK
    finally:
        await _shut_down(db, engine, executor, options.worker_id if registered else None)


async def _shut_down(
    db: Database, engine: Engine | None, executor: ThreadPoolExecutor, worker_id: str | None
) -> None:
    if engine is not None:
        await asyncio.get_running_loop().run_in_executor(executor, engine.close)
    executor.shutdown(wait=True)
    if worker_id is not None:
        with contextlib.suppress(Exception):
            await workers.mark_worker_stopped(db, worker_id)
    await db.close()


def worker_command(args: argparse.Namespace, settings: Settings) -> int:
    """``python -m engine worker``: run one worker; 1 with one ``error:`` line if it cannot."""
    device = args.device or settings.engine.devices[0]
    if args.threads:
        torch.set_num_threads(args.threads)
    options = WorkerOptions.from_settings(
        settings, args.worker_id or make_worker_id(device), burst=args.burst,
        grace_seconds=args.grace,
    )  # fmt: skip
    try:
        return asyncio.run(serve(settings, options, device))
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except Exception as exc:  # the loop gave up (e.g. the database went away in burst mode)
        log.exception("worker failed")
        print(f"error: the worker stopped on {type(exc).__name__}: {exc}", file=sys.stderr)
    return EXIT_FATAL
