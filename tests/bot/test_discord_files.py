"""Discord's file limits: at most 10 files and the upload limit per message; re-encoding."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from bot.core.messages import Attachment
from bot.discord import files


def noise_png(side: int, **text: str) -> bytes:
    arr = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def blob(name: str, size: int) -> Attachment:
    return Attachment(name, bytes(size))


def test_more_than_ten_files_are_split_in_order() -> None:
    packed = files.pack([blob(f"{i}.bin", 10) for i in range(23)])
    assert [len(m) for m in packed.messages] == [10, 10, 3]
    assert [f.name for m in packed.messages for f in m] == [f"{i}.bin" for i in range(23)]
    assert packed.dropped == []


def test_each_message_stays_under_the_upload_limit() -> None:
    limit = 1024 * 1024
    packed = files.pack([blob(f"{i}.bin", 400 * 1024) for i in range(5)], max_bytes=limit)
    assert [len(m) for m in packed.messages] == [2, 2, 1]
    assert all(
        sum(len(f.data) for f in m) <= limit - files.REQUEST_OVERHEAD for m in packed.messages
    )


def test_small_files_are_left_alone() -> None:
    small = Attachment("a.png", noise_png(16))
    assert files.shrink(small, 1024 * 1024) is small


def test_a_large_image_is_re_encoded_with_its_metadata() -> None:
    big = Attachment("job1-1.png", noise_png(400, **{"AI-generated": "true"}), "a chef")
    limit = 300 * 1024
    assert len(big.data) > limit
    small = files.shrink(big, limit)
    assert small is not None and small.name == "job1-1.jpg" and small.description == "a chef"
    assert len(small.data) <= limit
    with Image.open(io.BytesIO(small.data)) as img:
        assert img.format == "JPEG" and img.size == (400, 400)
        assert b'"AI-generated":"true"' in img.info["comment"]
        assert "AI-generated" in img.getexif()[files.EXIF_DESCRIPTION]


def test_what_cannot_fit_is_dropped_and_named() -> None:
    packed = files.pack(
        [Attachment("face.safetensors", bytes(5000)), Attachment("x.png", noise_png(300))],
        max_bytes=files.REQUEST_OVERHEAD + 2000,
    )
    assert packed.messages == [] and packed.dropped == ["face.safetensors", "x.png"]
    assert (
        packed.note("Done.") == "Done.\n(Too large for Discord, not sent: face.safetensors, x.png.)"
    )


async def test_packing_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    real_shrink = files.shrink

    def shrink(file: Attachment, max_bytes: int) -> Attachment | None:
        threads.append(threading.get_ident())
        return real_shrink(file, max_bytes)

    monkeypatch.setattr(files, "shrink", shrink)
    big = Attachment("job1-1.png", noise_png(400), "a chef")
    packed = await files.pack_in_thread([big], max_bytes=300 * 1024)
    assert threads and threading.get_ident() not in threads
    [[small]] = packed.messages
    assert small.name == "job1-1.jpg" and packed == files.pack([big], max_bytes=300 * 1024)
    assert await files.pack_in_thread([], max_bytes=1) == files.Packed()


def test_discord_files_are_fresh_and_described() -> None:
    file = files.to_discord(Attachment("a.png", b"png", "d" * 2000))
    assert file.filename == "a.png" and file.description == "d" * 1024
    assert file.fp.read() == b"png"
