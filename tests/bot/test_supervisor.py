"""Worker supervision: crashed children restart with backoff; stop sends SIGTERM."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.supervisor import Backoff, Supervised


def test_backoff_doubles_and_resets_after_a_healthy_run() -> None:
    b = Backoff(initial=1, maximum=5, healthy_after=10)
    assert [b.delay(0.1) for _ in range(5)] == [1, 2, 4, 5, 5]
    assert b.delay(30) == 1


async def test_a_crashing_child_is_restarted(tmp_path: Path) -> None:
    marker = tmp_path / "starts"
    code = f"open({str(marker)!r}, 'a').write('x'); raise SystemExit(3)"
    sup = Supervised("crasher", [sys.executable, "-c", code], backoff=Backoff(initial=0.05))
    task = asyncio.create_task(sup.run())
    for _ in range(200):
        if sup.starts >= 3:
            break
        await asyncio.sleep(0.05)
    await sup.stop()
    await asyncio.wait_for(task, 5)
    assert sup.starts >= 3
    assert set(sup.exit_codes[:2]) == {3}
    assert set(sup.exit_codes) <= {3, -15}
    assert sup.exit_codes.count(3) <= len(marker.read_text()) <= sup.starts


async def _wait_for(path: Path, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not path.exists():
        assert loop.time() < deadline, f"{path.name} never appeared"
        await asyncio.sleep(0.02)


async def test_stop_terminates_a_running_child_gracefully(tmp_path: Path) -> None:
    done, ready = tmp_path / "done", tmp_path / "ready"
    code = (
        "import signal, sys, time\n"
        f"def bye(*_): open({str(done)!r}, 'w').write('ok'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        f"open({str(ready)!r}, 'w').close()\n"
        "time.sleep(60)\n"
    )
    sup = Supervised("sleeper", [sys.executable, "-c", code], stop_timeout=10)
    task = asyncio.create_task(sup.run())
    await _wait_for(ready)
    await sup.stop()
    await asyncio.wait_for(task, 10)
    assert sup.starts == 1
    assert done.read_text() == "ok"
    assert sup.exit_codes == [0]


async def test_stop_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"open({str(ready)!r}, 'w').close(); time.sleep(60)"
    )
    sup = Supervised("stubborn", [sys.executable, "-c", code], stop_timeout=0.5)
    task = asyncio.create_task(sup.run())
    await _wait_for(ready)
    await sup.stop()
    await asyncio.wait_for(task, 10)
    assert sup.exit_codes == [-9]


async def test_a_stop_during_a_restart_leaves_no_child_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts = tmp_path / "starts"
    code = (
        "import time\n"
        f"open({str(starts)!r}, 'a').write('x')\n"
        f"if len(open({str(starts)!r}).read()) == 1: raise SystemExit(1)\n"
        "time.sleep(60)\n"
    )
    sup = Supervised("flaky", [sys.executable, "-c", code], backoff=Backoff(initial=0.01))
    spawn = asyncio.create_subprocess_exec

    async def spawn_then_stop(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        proc = await spawn(*args, **kwargs)
        if sup.starts == 1:  # the restart: stop() arrives while it is being spawned
            await sup.stop()
        return proc

    monkeypatch.setattr(asyncio, "create_subprocess_exec", spawn_then_stop)
    await asyncio.wait_for(sup.run(), 20)
    assert sup.starts == 2
    assert sup.exit_codes == [1, -15]
