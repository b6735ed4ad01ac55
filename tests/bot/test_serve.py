"""``pulid-bot serve``: adapters by configured token, supervised workers, clean shutdown."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from bot.core.app import Core
from bot.serve import NothingToServe, adapter_starters, serve, worker_processes
from bot.startup import StartupError
from bot.supervisor import Backoff, Supervised
from storage.config import DiscordSettings, EngineSettings, Settings, TelegramSettings


class RecordingAdapter:
    """An adapter double that records its life (the real adapters have their own tests)."""

    def __init__(self, events: list[str], core: Core) -> None:
        self.events = events
        self.core = core

    async def stop(self) -> None:
        self.events.append("stop")


def test_adapters_follow_the_configured_tokens(settings: Settings) -> None:
    assert adapter_starters(settings) == {}
    both = settings.model_copy(
        update={
            "discord": DiscordSettings(token=SecretStr("d")),
            "telegram": TelegramSettings(token=SecretStr("1:t")),
        }
    )
    assert sorted(adapter_starters(both)) == ["discord", "telegram"]


def test_one_worker_per_device(settings: Settings, tmp_path: Path) -> None:
    multi = settings.model_copy(update={"engine": EngineSettings(devices=["cuda:0", "cuda:1"])})
    workers = worker_processes(multi, tmp_path / "c.toml")
    assert [w.name for w in workers] == ["engine[cuda:0]", "engine[cuda:1]"]
    assert workers[1].argv[-4:] == ["engine", "worker", "--device", "cuda:1"]
    assert workers[0].env is not None
    assert workers[0].env["PULID_BOT_CONFIG"] == str((tmp_path / "c.toml").resolve())


async def test_nothing_to_serve_without_tokens(settings: Settings) -> None:
    with pytest.raises(NothingToServe, match="discord.token or telegram.token"):
        await serve(settings, workers=[])


async def test_serve_restarts_crashed_workers_and_stops_cleanly(
    settings: Settings, tmp_path: Path
) -> None:
    events: list[str] = []

    async def start(s: Settings, core: Core) -> RecordingAdapter:
        events.append("start")
        return RecordingAdapter(events, core)

    crash = Supervised(
        "crasher", [sys.executable, "-c", "raise SystemExit(1)"], backoff=Backoff(initial=0.05)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, starters={"x": start}, workers=[crash], stop=stop))
    for _ in range(200):
        if crash.starts >= 2:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert crash.starts >= 2
    assert events == ["start", "stop"]


async def test_an_adapter_that_cannot_start_is_one_line_and_stops_the_others(
    settings: Settings,
) -> None:
    events: list[str] = []

    async def good(s: Settings, core: Core) -> RecordingAdapter:
        events.append("start")
        return RecordingAdapter(events, core)

    async def broken(s: Settings, core: Core) -> RecordingAdapter:
        raise OSError("Cannot connect to host api.example:443\nmore detail")

    with pytest.raises(StartupError) as err:
        await serve(settings, starters={"good": good, "telegram": broken}, workers=[])
    assert err.value.user_message == (
        "the telegram adapter could not start: Cannot connect to host api.example:443"
    )
    assert events == ["start", "stop"]


def test_serve_failures_reach_the_terminal_as_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULID_BOT")}
    root = Path(__file__).resolve().parents[2]
    run = [sys.executable, "-m", "bot.cli", "serve"]
    subprocess.run(
        [sys.executable, "-m", "bot.cli", "db", "upgrade"],
        cwd=tmp_path,
        env=env | {"PYTHONPATH": str(root)},
        check=True,
        capture_output=True,
    )
    out = subprocess.run(
        run,
        cwd=tmp_path,
        env=env | {"PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("error: no chat adapter is configured")
