"""The console adapter end to end: every command from a script, with the fixture worker."""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from bot_helpers import astronaut_png
from bot_worker_fixture import FixtureWorker

from bot.console import commands, run_chat
from storage import users
from storage.config import Settings
from storage.db import Database


@pytest.fixture
async def background_worker(settings: Settings) -> AsyncIterator[FixtureWorker]:
    db = await Database.open(settings.database.url)
    worker = FixtureWorker(db)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    yield worker
    stop.set()
    await task
    await db.close()


def test_commands_join_continuations_and_skip_comments() -> None:
    lines = ["# a comment", "", "/batch me \\", "a pilot \\", "a monk", "  ", "/jobs", "/x \\"]
    assert list(commands(lines)) == ["/batch me\na pilot\na monk", "/jobs", "/x"]


async def test_every_command_from_a_script(
    settings: Settings, background_worker: FixtureWorker, tmp_path: Path
) -> None:
    photo = tmp_path / "astronaut.png"
    photo.write_bytes(astronaut_png())
    out_dir = tmp_path / "out"
    settings = settings.model_copy(
        update={"queue": settings.queue.model_copy(update={"poll_seconds": 0.05})}
    )
    script = tmp_path / "session.txt"
    script.write_text(
        f"""# every command, in order
/help
/face add me {photo}
/press Accept
/face more me "{photo}"
/face add twin {photo} default
/face list
/face show me
/face default me
/settings --steps 4 --ar 1:1
/imagine a chef in Paris --seed 3
/press Use seed
/press Re-roll
/batch me \\
a pilot \\
a monk
/compare
/face export me
/face import {out_dir}/me.safetensors copy
/face delete twin
/jobs
/forget
/press Erase everything
""",
        encoding="utf-8",
    )
    out = io.StringIO()
    code = await run_chat(settings, script=script, out_dir=out_dir, user="tester", out=out)
    text = out.getvalue()
    assert code == 0, text
    assert "! " not in text, text
    for expected in (
        "Commands:",
        "Before saving a face",
        "Saved face 'me' (1 photo, your default face)",
        "Added a photo to face 'me' (2 photos, your default face)",
        "Saved face 'twin' (1 photo, your default face)",
        "• 'me' (2 photos)",
        "'me' is now your default face.",
        "--size 1024x1024 --steps 4",
        "done: “a chef in Paris” · seed 3",
        "Seed 3 is now your default",
        "done: 2 images.",
        "the face across 3 prompts",
        "Imported 'copy' (2 photos)",
        "Deleted face 'twin'.",
        "Your jobs:",
        "Erased 2 faces",
    ):
        assert expected in text, (expected, text)
    saved = sorted(p.name for p in out_dir.iterdir())
    assert "me.safetensors" in saved and "me.png" in saved
    assert any(name.endswith("-grid.png") for name in saved)
    assert sum(name.startswith("job") for name in saved) >= 8
    assert await users.find_user(background_worker.db, "console", "tester") is None


async def test_script_exit_status_reports_failures(settings: Settings, tmp_path: Path) -> None:
    script = tmp_path / "bad.txt"
    script.write_text("/help\n/cancel 999\n/face add me /no/such/file.png\n", encoding="utf-8")
    out = io.StringIO()
    code = await run_chat(settings, script=script, out_dir=tmp_path / "o", out=out)
    assert code == 1
    lines = out.getvalue().splitlines()
    assert "! You have no job 999." in lines
    assert "! No file at /no/such/file.png" in lines
    assert lines[0].startswith("No engine worker has registered")


async def test_script_times_out_without_a_worker(settings: Settings, tmp_path: Path) -> None:
    photo = tmp_path / "p.png"
    photo.write_bytes(astronaut_png())
    script = tmp_path / "s.txt"
    script.write_text(f"/face add me {photo}\n/press 1\n/help\n", encoding="utf-8")
    out = io.StringIO()
    code = await run_chat(settings, script=script, out_dir=tmp_path, out=out, job_timeout=0.3)
    assert code == 1
    assert "did not finish within 0s" in out.getvalue()
    assert "Commands:" not in out.getvalue()  # stopped at the stuck job


async def test_interactive_reads_stdin_until_quit(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("/help face\n/press 9\n/quit\n/help\n"))
    out = io.StringIO()
    code = await run_chat(settings, out_dir=tmp_path, out=out)
    text = out.getvalue()
    assert code == 0
    assert "/face add NAME IMAGE" in text
    assert "! No button '9' is shown" in text
    assert text.count("Commands:") == 0
