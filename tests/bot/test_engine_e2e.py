"""End to end with the real engine worker (``python -m engine worker``, tiny preset, CPU).

Every command runs through the console adapter against a worker process, and ``pulid-bot demo``
runs whole. These are the slowest tests of the bot (about a minute together on 2 cores).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from bot_helpers import astronaut_png

from bot.console import run_chat
from bot.core.buttons import VARY_SPAN
from bot.demo import demo_settings, engine_worker, run_demo
from storage import users
from storage.config import Settings, StorageSettings
from storage.db import Database, upgrade

pytestmark = pytest.mark.slow

SCRIPT = """\
/face add me {photo}
/press Accept
/face more me {photo}
/face show me
/settings --size 256x256 --steps 2
/imagine a chef in a kitchen --seed 5
/press Vary
/batch me \\
a pilot \\
a monk
/compare me \\
a park \\
a lab
/face export me
/face import {out}/me.safetensors copy
/face default copy
/face delete copy
/jobs
/forget
/press Erase everything
"""


async def test_every_command_with_the_real_worker(tmp_path: Path) -> None:
    settings = demo_settings(Settings(storage=StorageSettings(data_dir=tmp_path)))
    photo, out_dir = tmp_path / "astronaut.png", tmp_path / "out"
    photo.write_bytes(astronaut_png())
    script = tmp_path / "script.txt"
    script.write_text(SCRIPT.format(photo=photo, out=out_dir), encoding="utf-8")
    out, log = io.StringIO(), tmp_path / "worker.log"
    await upgrade(settings.database.url)
    async with engine_worker(settings, tmp_path / "worker.toml", log):
        code = await run_chat(settings, script=script, out_dir=out_dir, user="e2e", out=out)
    text = out.getvalue()
    assert code == 0, text + log.read_text()
    for expected in (
        "Saved face 'me' (1 photo, your default face)",
        "Added a photo to face 'me' (2 photos, your default face)",
        "done: “a chef in a kitchen” · seed 5",
        "done: 2 images.",
        "the face across 2 prompts.\nMean likeness: n/a (no face found in any output); tiny",
        "done: 2 images.\nTiny preset: random test weights, the images are noise.\n1. ",
        "Imported 'copy' (2 photos)",
        "'copy' is now your default face.",
        "Deleted face 'copy'. Your default face is now 'me'.",
        "Erased 1 face, 6 jobs",
    ):
        assert expected in text, (expected, text)
    seeds = [int(s) for s in re.findall(r"done: “a chef in a kitchen” · seed (\d+)", text)]
    assert seeds[0] == 5 and 5 < seeds[1] <= 5 + VARY_SPAN  # Vary: same prompt, nearby seed
    names = {p.name for p in out_dir.iterdir()}
    assert {"me.png", "me.safetensors"} <= names and any(n.endswith("-grid.png") for n in names)
    db = await Database.open(settings.database.url)
    try:
        assert await users.find_user(db, "console", "e2e") is None
    finally:
        await db.close()


def test_the_demo_runs(tmp_path: Path) -> None:
    out, out_dir = io.StringIO(), tmp_path / "demo-out"
    code = run_demo(
        Settings(storage=StorageSettings(data_dir=tmp_path / "data")), out_dir=out_dir, out=out
    )
    text = out.getvalue()
    assert code == 0, text + (tmp_path / "data" / "demo-worker.log").read_text()
    assert "Saved face 'astronaut'" in text and "done: 3 images." in text
    assert "draws noise, not people" in text and "Demo finished in" in text
    names = sorted(p.name for p in out_dir.iterdir())
    assert any(n.endswith("-grid.png") for n in names) and len(names) >= 6
