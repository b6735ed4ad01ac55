"""``pulid-bot demo``: the whole product on embedded defaults, in one scripted session.

SQLite in the data folder, the ``tiny`` preset in a separate engine worker process
(``python -m engine worker``), and the console adapter running a scripted session: save a face
from scikit-image's astronaut photo, imagine, batch, compare. Images land in ``./demo-out/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from bot.cli import engine_command, engine_env
from bot.console import quiet_logs, run_chat
from bot.supervisor import terminate
from storage import workers
from storage.config import Settings
from storage.db import Database, upgrade
from storage.schemas import WorkerState

DEMO_USER = "demo"
READY_TIMEOUT = 180.0
STOP_TIMEOUT = 30.0
#: Small images and few steps: the tiny preset's output is noise at any size.
SCRIPT = """\
# pulid-bot demo session (run again with: pulid-bot chat --script {script})
/help
/face add astronaut {photo}
/press Accept
/face list
/settings --size 256x256 --steps 4
/imagine a portrait of an astronaut on the moon, studio light --seed 7
/batch astronaut \\
a chef in a busy kitchen \\
a hiker on a mountain ridge at dawn \\
a jazz singer on a smoky stage
/compare astronaut \\
a portrait in a park \\
a knight in shining armour \\
a scientist in a laboratory
/jobs
"""

INTRO = """\
pulid-bot demo: the whole product on embedded defaults.
  database  {db} (SQLite, fresh for each demo)
  engine    the 'tiny' preset in a separate worker process (log: {log})
  chat      the local console, running {script}
The tiny preset builds the real model classes with tiny random weights, so it runs on a CPU
in seconds -- and draws noise, not people."""

OUTRO = """\
Demo finished in {seconds:.0f} s; images and the compare grid are in {out}/.
The pictures are noise because the tiny preset has random weights. For real images on a GPU:
  1. put `[engine]` / `preset = "flux-dev"` in config.toml (see config.example.toml),
  2. run `pulid-bot models download --accept-licence` (FLUX.1-dev, PuLID, EVA02-CLIP, antelopev2),
  3. run `pulid-bot db upgrade`, then `pulid-bot serve` (Discord/Telegram tokens in
     config.toml), or `pulid-bot engine` beside `pulid-bot chat` for a local console."""


def run_demo(
    settings: Settings,
    *,
    out_dir: Path = Path("demo-out"),
    worker_argv: Sequence[str] | None = None,
    out: TextIO | None = None,
) -> int:
    """Run the demo; returns the exit code (0 when every step succeeded)."""
    return asyncio.run(demo(settings, out_dir=out_dir, worker_argv=worker_argv, out=out))


async def demo(
    settings: Settings,
    *,
    out_dir: Path,
    worker_argv: Sequence[str] | None = None,
    out: TextIO | None = None,
) -> int:
    """The demo in the running event loop (``worker_argv`` replaces the engine worker)."""
    out = out or sys.stdout
    quiet_logs()
    began = time.monotonic()
    settings = demo_settings(settings)
    paths = _prepare(settings)
    out.write(INTRO.format(db=paths["db"], log=paths["log"], script=paths["script"]) + "\n")
    await upgrade(settings.database.url)
    out.write("Starting the engine worker (loading the tiny models)...\n")
    out.flush()
    try:
        async with engine_worker(settings, paths["config"], paths["log"], worker_argv):
            out.write("Engine worker ready.\n")
            code = await run_chat(
                settings, script=paths["script"], out_dir=out_dir, user=DEMO_USER, out=out
            )
    except WorkerFailed as exc:
        out.write(f"! {exc}\n")
        return 1
    out.write(OUTRO.format(seconds=time.monotonic() - began, out=out_dir) + "\n")
    return code


class WorkerFailed(RuntimeError):
    """The engine worker process exited or did not become ready."""


@contextlib.asynccontextmanager
async def engine_worker(
    settings: Settings, config: Path, log: Path, argv: Sequence[str] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """An engine worker process reading ``config`` and writing ``log``, ready while in use.

    The settings go to the child as a TOML file (no platform tokens); on exit the worker gets
    SIGTERM (it finishes or releases its job) and SIGKILL if it hangs.
    """
    config.write_text(to_toml(worker_config(settings)), encoding="utf-8")
    with log.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *(argv or engine_command(["worker"])),
            env=engine_env(config),
            stdout=log_file,
            stderr=log_file,
        )
        try:
            await _wait_ready(settings, proc, log)
            yield proc
        finally:
            await terminate(proc, STOP_TIMEOUT, "engine worker")


def demo_settings(settings: Settings) -> Settings:
    """The given settings with the demo's database, the tiny preset on the CPU, quick polling."""
    data = settings.storage.data_dir
    db = data / "demo.db"
    return settings.model_copy(
        update={
            "database": settings.database.model_copy(update={"url": f"sqlite+aiosqlite:///{db}"}),
            "engine": settings.engine.model_copy(update={"preset": "tiny", "devices": ["cpu"]}),
            "queue": settings.queue.model_copy(update={"poll_seconds": 0.2}),
        }
    )


def _prepare(settings: Settings) -> dict[str, Path]:
    """A fresh demo database, the worker's config, the astronaut photo and the script."""
    data = settings.storage.data_dir
    data.mkdir(parents=True, exist_ok=True)
    db = data / "demo.db"
    for stale in (db, data / "demo.db-wal", data / "demo.db-shm"):
        stale.unlink(missing_ok=True)
    paths = {
        "db": db,
        "config": data / "demo-config.toml",
        "log": data / "demo-worker.log",
        "photo": data / "astronaut.png",
        "script": data / "demo-script.txt",
    }
    paths["photo"].write_bytes(astronaut_png())
    script = SCRIPT.format(photo=paths["photo"], script=paths["script"])
    paths["script"].write_text(script, encoding="utf-8")
    return paths


def astronaut_png() -> bytes:
    """scikit-image's astronaut photo (Eileen Collins, public domain) as PNG bytes."""
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, format="PNG")
    return buf.getvalue()


def worker_config(settings: Settings) -> dict[str, dict[str, Any]]:
    """The settings the worker needs (no platform tokens), as TOML-ready sections."""
    dumped = settings.model_dump(mode="json", exclude={"discord", "telegram"})
    return {
        name: {k: v for k, v in section.items() if v is not None}
        for name, section in dumped.items()
    }


def to_toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """Sections of scalars and lists as TOML (JSON's strings, numbers and arrays are TOML too)."""
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)


async def _wait_ready(settings: Settings, proc: asyncio.subprocess.Process, log: Path) -> None:
    """Return once a worker reports ready; :class:`WorkerFailed` if it exits or stalls."""
    db = await Database.open(settings.database.url)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise WorkerFailed(
                    f"The engine worker exited with code {proc.returncode}; see {log}."
                )
            found = await workers.list_workers(db)
            if any(w.state is WorkerState.READY for w in found):
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.25)
        raise WorkerFailed(
            f"The engine worker was not ready after {READY_TIMEOUT:.0f} s; see {log}."
        )
    finally:
        await db.close()
