"""``pulid-bot chat``: the bot's commands in a local terminal (or from a script file).

File paths stand in for uploads; images and files in replies are written to a folder and their
paths printed; buttons are shown numbered and pressed with ``/press N`` (or its label, or its
action id). A line ending in ``\\`` continues on the next line (one prompt per line for
``/batch``). In a script, ``#`` starts a comment, and each queued job is awaited before the next
line runs; the exit status is 1 when any command failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TextIO

from bot.core.app import Core
from bot.core.delivery import Deliverer, retention_loop
from bot.core.dispatch import Dispatcher
from bot.core.errors import BadInput
from bot.core.messages import Attachment, Button, Caller, Reply, ReplyKind, error_reply
from storage import workers
from storage.config import Settings
from storage.schemas import Delivery, WorkerState

log = logging.getLogger(__name__)

PLATFORM = "console"
PROMPT = "> "
QUIT = ("/quit", "/exit")
JOB_TIMEOUT = 600.0
QUIET_LOGGERS = ("alembic", "bot", "storage")


class Console:
    """One local user talking to the core; prints replies, saves files, tracks open jobs."""

    def __init__(
        self, core: Core, out_dir: Path, *, user: str = "local", out: TextIO | None = None
    ) -> None:
        self.core = core
        self.out_dir = out_dir
        self.out = out or sys.stdout
        self.caller = Caller(PLATFORM, user, channel_id=user, display_name=user)
        self.dispatcher = Dispatcher(core)
        self.errors = 0
        self._buttons: list[Button] = []
        self._open_jobs: set[int] = set()
        self._delivered: set[int] = set()
        self._changed = asyncio.Condition()

    def deliverer(self, poll_seconds: float = 1.0) -> Deliverer:
        """The delivery loop that prints this console's results and progress."""
        return Deliverer(
            self.core.db,
            PLATFORM,
            self.send,
            progress=self.send,
            poll_seconds=poll_seconds,
            progress_interval=2.0,
        )

    async def send(self, delivery: Delivery, reply: Reply) -> None:
        """Adapter callback: show a delivered result or a progress line."""
        if delivery.channel_id not in (None, self.caller.user_id):
            raise RuntimeError(f"job {reply.job_id} belongs to console user {delivery.channel_id}")
        self.show(reply)
        if reply.kind is ReplyKind.RESULT and reply.job_id is not None:
            async with self._changed:
                self._delivered.add(reply.job_id)
                self._open_jobs.discard(reply.job_id)
                self._changed.notify_all()

    async def handle(self, text: str) -> Reply:
        """Run one command line and show its reply."""
        if text.split(maxsplit=1)[0].lower() == "/press":
            reply = await self.press(text.partition(" ")[2].strip())
        else:
            reply = await self.dispatcher.handle(self.caller, text, open_file=self.open_file)
        if reply.kind is ReplyKind.RECEIPT and reply.job_id not in (None, *self._delivered):
            self._open_jobs.add(reply.job_id)
        self.show(reply)
        return reply

    async def press(self, which: str) -> Reply:
        """Press a shown button by number, label (newest first) or action id."""
        button = self._find_button(which)
        if button is None:
            return error_reply(f"No button {which!r} is shown; buttons appear as [N] label.")
        self.out.write(f"(pressed {button.label})\n")
        return await self.core.press(self.caller, button.action_id)

    def _find_button(self, which: str) -> Button | None:
        if which.isdigit() and 1 <= int(which) <= len(self._buttons):
            return self._buttons[int(which) - 1]
        for button in reversed(self._buttons):
            if which.lower() in (button.label.lower(), button.action_id):
                return button
        return Button(which, which) if ":" in which else None

    def open_file(self, ref: str) -> Attachment:
        """A path typed by the user, read as an upload."""
        path = Path(ref).expanduser()
        if not path.is_file():
            raise BadInput(f"no file at {ref}")
        return Attachment(path.name, path.read_bytes())

    def show(self, reply: Reply) -> None:
        """Print a reply: text, saved file paths, numbered buttons."""
        if reply.kind is ReplyKind.PROGRESS:
            self.out.write(f"  … {reply.text}\n")
            return
        mark = "! " if reply.is_error else ""
        self.errors += reply.is_error
        self.out.write(f"{mark}{reply.text}\n")
        for file in reply.files:
            self.out.write(f"  saved {self._save(file)}\n")
        if reply.buttons:
            self._buttons = list(reply.buttons)
            labels = "  ".join(f"[{i}] {b.label}" for i, b in enumerate(self._buttons, 1))
            self.out.write(f"  {labels}\n")
        self.out.flush()

    def _save(self, file: Attachment) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / Path(file.name).name
        path.write_bytes(file.data)
        return path

    async def wait_jobs(self, timeout: float = JOB_TIMEOUT) -> bool:
        """Wait until every job queued from this console has been delivered."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: not self._open_jobs), timeout)
            except TimeoutError:
                return False
        return True

    async def run_script(self, lines: Iterable[str], timeout: float = JOB_TIMEOUT) -> int:
        """Run commands one by one, waiting for each job's result; 1 if anything failed."""
        for command in commands(lines):
            self.out.write(f"{PROMPT}{command}\n")
            if command.lower() in QUIT:
                break
            await self.handle(command)
            if not await self.wait_jobs(timeout):
                waiting = ", ".join(f"#{j}" for j in sorted(self._open_jobs))
                self.out.write(f"! job {waiting} did not finish within {timeout:.0f}s\n")
                return 1
        return 1 if self.errors else 0


def quiet_logs() -> None:
    """The console is the output: below debug level, keep routine log lines off the terminal."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def commands(lines: Iterable[str]) -> Iterator[str]:
    """Join ``\\``-continued lines; skip blank lines and ``#`` comments."""
    parts: list[str] = []
    for raw in lines:
        line = raw.rstrip("\n")
        if not parts and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            parts.append(line[:-1].rstrip())
            continue
        parts.append(line)
        yield "\n".join(parts).strip()
        parts = []
    if parts:
        yield "\n".join(parts).strip()


def _read_lines(stdin: TextIO, out: TextIO) -> Iterator[str]:
    while True:
        out.write(PROMPT)
        out.flush()
        line = stdin.readline()
        if not line:
            return
        yield line


async def run_chat(
    settings: Settings,
    *,
    script: Path | None = None,
    out_dir: Path,
    user: str = "local",
    out: TextIO | None = None,
    job_timeout: float = JOB_TIMEOUT,
) -> int:
    """``pulid-bot chat``: an interactive (or scripted) local session; returns the exit code."""
    quiet_logs()
    core = await Core.open(settings)
    console = Console(core, out_dir, user=user, out=out)
    deliverer = console.deliverer(settings.queue.poll_seconds)
    task = asyncio.create_task(deliverer.run())
    pruner = asyncio.create_task(retention_loop(core.db, settings.storage.result_retention_days))
    try:
        await _warn_without_worker(core, console.out)
        if script is not None:
            lines = script.read_text(encoding="utf-8").splitlines()
            return await console.run_script(lines, job_timeout)
        return await _interactive(console)
    finally:
        deliverer.stop()
        pruner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(task, pruner)
        await core.close()


async def _interactive(console: Console) -> int:
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def reader() -> None:
        for command in commands(_read_lines(sys.stdin, console.out)):
            loop.call_soon_threadsafe(queue.put_nowait, command)
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=reader, name="console-stdin", daemon=True).start()
    console.out.write("pulid-bot chat: type /help, /quit to leave.\n")
    while (command := await queue.get()) is not None and command.lower() not in QUIT:
        await console.handle(command)
    return 0


async def _warn_without_worker(core: Core, out: TextIO) -> None:
    alive = await workers.list_workers(core.db, alive_within=timedelta(minutes=2))
    if not any(w.state is not WorkerState.STOPPED for w in alive):
        out.write(
            "No engine worker has registered: start one with `pulid-bot engine` "
            "(queued jobs wait until one runs).\n"
        )
