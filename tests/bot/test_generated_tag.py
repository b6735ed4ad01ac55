"""The "AI-generated" tag reaches people on every platform (DESIGN §7).

The engine writes it into each result PNG as a text chunk. The console saves the PNG as it is
and Discord receives the file as it is (re-encoded only when too large, tests in
test_discord_delivery), so the tag survives; Telegram re-encodes photos, so its captions carry
a visible mark instead (test_telegram_results).
"""

from __future__ import annotations

import io
from pathlib import Path

from bot_helpers import add_face
from bot_worker_fixture import FixtureWorker
from PIL import Image, PngImagePlugin
from test_discord_fakeapi import ALICE, FOLLOW_UP
from test_discord_support import Harness, command_data, interaction_payload, option, save_faces
from test_discord_support import h as h

from bot.console import Console
from bot.core.app import Core
from storage import jobs
from storage.records import ResultData

ENGINE = "engine"  # this test, playing the engine worker through the storage API
TAG = "AI-generated"  # engine.codec.AI_TAG_KEY


def tagged_png() -> bytes:
    """A result PNG tagged as the engine tags its outputs."""
    info = PngImagePlugin.PngInfo()
    info.add_text(TAG, "true")
    info.add_text("prompt", "a chef")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (20, 90, 160)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def tag_of(data: bytes) -> str | None:
    with Image.open(io.BytesIO(data)) as img:
        return img.text.get(TAG)  # type: ignore[attr-defined, no-any-return]


async def _finish_next(core: Core) -> int:
    job = await jobs.claim(core.db, ENGINE)
    assert job is not None
    assert await jobs.finish(core.db, job.id, ENGINE, [ResultData(0, tagged_png(), 5, "a chef")])
    return job.id


async def test_the_console_saves_the_png_with_its_tag(
    core: Core, worker: FixtureWorker, tmp_path: Path
) -> None:
    console = Console(core, tmp_path / "out", out=io.StringIO())
    await add_face(core, worker, console.caller)
    await console.deliverer().run_once()
    receipt = await console.handle("/imagine a chef --seed 5")
    job_id = await _finish_next(core)
    assert receipt.job_id == job_id and await console.deliverer().run_once() == 1
    saved = tmp_path / "out" / f"job{job_id}-1.png"
    assert saved.read_bytes() == tagged_png() and tag_of(saved.read_bytes()) == "true"


async def test_discord_receives_the_png_with_its_tag(h: Harness) -> None:
    await save_faces(h.core, ALICE, "me")
    sent = h.send(interaction_payload(2, command_data("imagine", [option("prompt", "a chef")])))
    assert "queued" in (await h.callback(sent)).content
    job_id = await _finish_next(h.core)
    [post] = await h.fake.wait_for("POST", FOLLOW_UP)
    [(name, data)] = post.files
    assert name == f"job{job_id}-1.png" and tag_of(data) == "true"
