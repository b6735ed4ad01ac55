"""Child-process supervision for ``pulid-bot serve``: restart crashed workers with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Backoff:
    """Exponential restart delay, reset after a child stayed up for ``healthy_after`` seconds."""

    initial: float = 1.0
    maximum: float = 60.0
    healthy_after: float = 120.0
    _next: float = field(default=0.0, init=False)

    def delay(self, uptime: float) -> float:
        """The wait before the next start, given how long the last run lasted."""
        if uptime >= self.healthy_after or self._next == 0.0:
            self._next = self.initial
        else:
            self._next = min(self._next * 2, self.maximum)
        return self._next


class Supervised:
    """One child process kept running until :meth:`stop`."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        backoff: Backoff | None = None,
        stop_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.backoff = backoff or Backoff()
        self.stop_timeout = stop_timeout
        self.starts = 0
        self.exit_codes: list[int] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def run(self) -> None:
        """Start the child, and start it again whenever it exits, until stopped."""
        while not self._stopping.is_set():
            began = time.monotonic()
            code = await self._run_once()
            if self._stopping.is_set():
                break
            delay = self.backoff.delay(time.monotonic() - began)
            log.warning("%s exited with %s; restarting in %.1fs", self.name, code, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _run_once(self) -> int:
        self._proc = await asyncio.create_subprocess_exec(*self.argv, env=self.env)
        self.starts += 1
        log.info("%s started (pid %d, start %d)", self.name, self._proc.pid, self.starts)
        if self._stopping.is_set():  # stop() ran while this child was being spawned
            await terminate(self._proc, self.stop_timeout, self.name)
        code = await self._proc.wait()
        self.exit_codes.append(code)
        return code

    async def stop(self) -> None:
        """SIGTERM the child (it finishes or releases its job), SIGKILL after the timeout."""
        self._stopping.set()
        if self._proc is not None:
            await terminate(self._proc, self.stop_timeout, self.name)


async def terminate(proc: asyncio.subprocess.Process, timeout: float, name: str = "child") -> None:
    """SIGTERM a child process and wait; SIGKILL it if it is still running after ``timeout``."""
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        log.error("%s did not stop in %.0fs; killing it", name, timeout)
        proc.kill()
        await proc.wait()
