"""``pulid-bot serve``: every configured adapter in one asyncio loop, one engine worker per device.

Workers are child processes (``python -m engine worker --device D``) restarted with backoff when
they crash; adapters and the retention loop share this process. SIGTERM or SIGINT stops the
adapters first (no new jobs), then each worker (it finishes or releases its job).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from bot.cli import engine_command, engine_env
from bot.core import Core
from bot.core.delivery import retention_loop
from bot.startup import StartupError
from bot.supervisor import Supervised
from storage.config import Settings

log = logging.getLogger(__name__)


class Adapter(Protocol):
    async def stop(self) -> None: ...


AdapterStarter = Callable[[Settings, Core], Awaitable[Adapter]]


class NothingToServe(StartupError):
    """No chat adapter is configured."""


def adapter_starters(settings: Settings) -> dict[str, AdapterStarter]:
    """The adapters whose tokens are set, by name (imported only when configured)."""
    starters: dict[str, AdapterStarter] = {}
    if settings.discord.token is not None:
        from bot.discord.client import start_discord

        starters["discord"] = start_discord
    if settings.telegram.token is not None:
        from bot.telegram import start_telegram

        starters["telegram"] = start_telegram
    return starters


def worker_processes(settings: Settings, config: Path | None) -> list[Supervised]:
    """One supervised engine worker per configured device."""
    env = engine_env(config)
    return [
        Supervised(f"engine[{device}]", engine_command(["worker", "--device", device]), env=env)
        for device in settings.engine.devices
    ]


async def serve(
    settings: Settings,
    *,
    config: Path | None = None,
    starters: dict[str, AdapterStarter] | None = None,
    workers: list[Supervised] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run until ``stop`` is set (or SIGTERM/SIGINT arrives)."""
    starters = adapter_starters(settings) if starters is None else starters
    if not starters:
        raise NothingToServe(
            "no chat adapter is configured: set discord.token or telegram.token "
            "(see config.example.toml), or use `pulid-bot chat` for a local console"
        )
    stop = stop or _signal_event()
    core = await Core.open(settings)
    workers = worker_processes(settings, config) if workers is None else workers
    tasks = [asyncio.create_task(w.run(), name=w.name) for w in workers]
    days = settings.storage.result_retention_days
    tasks.append(asyncio.create_task(retention_loop(core.db, days), name="retention"))
    adapters: list[Adapter] = []
    try:
        adapters = await _start_adapters(settings, core, starters)
        await stop.wait()
    finally:
        await _shutdown(adapters, workers, tasks, core)


async def _start_adapters(
    settings: Settings, core: Core, starters: dict[str, AdapterStarter]
) -> list[Adapter]:
    adapters: list[Adapter] = []
    try:
        for name, start in starters.items():
            adapters.append(await _start_one(name, start, settings, core))
    except StartupError:
        await _stop_adapters(adapters)
        raise
    return adapters


async def _start_one(name: str, start: AdapterStarter, settings: Settings, core: Core) -> Adapter:
    """Start one adapter; any failure becomes one line naming the adapter and the cause."""
    try:
        adapter = await start(settings, core)
    except Exception as exc:
        log.debug("%s adapter failed to start", name, exc_info=True)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise StartupError(f"the {name} adapter could not start: {reason}") from exc
    log.info("%s adapter started", name)
    return adapter


async def _stop_adapters(adapters: list[Adapter]) -> None:
    for adapter in adapters:
        with contextlib.suppress(Exception):
            await adapter.stop()


async def _shutdown(
    adapters: list[Adapter], workers: list[Supervised], tasks: list[asyncio.Task[Any]], core: Core
) -> None:
    await _stop_adapters(adapters)
    await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await core.close()
    log.info("serve stopped")


def _signal_event() -> asyncio.Event:
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, event.set)
    return event


def run_serve(settings: Settings, *, config: Path | None = None) -> int:
    """The ``pulid-bot serve`` command (start-up failures reach the CLI as one line)."""
    asyncio.run(serve(settings, config=config))
    return 0
