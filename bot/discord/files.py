"""Files within Discord's limits: at most 10 a message, and no message over the upload limit.

The upload limit (10 MiB unless a server is boosted; an interaction says its own as
``attachment_size_limit``) bounds the whole request, so each message's files together stay
under it. A single image over it is re-encoded (PNG at full compression, then JPEG at falling
quality, then smaller) with its text metadata — the "AI-generated" tag among it — carried over;
a file that still cannot fit is left out and named in the message text. The adapter packs
through :func:`pack_in_thread`, so re-encoding never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath

import aiohttp
import discord
from PIL import Image, PngImagePlugin

from bot.core.errors import BadInput
from bot.core.messages import Attachment

log = logging.getLogger(__name__)

MAX_FILES = 10
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
#: Room left in every request for the JSON payload and the multipart framing.
REQUEST_OVERHEAD = 64 * 1024
JPEG_QUALITIES = (92, 85, 75)
SCALES = (1.0, 0.75, 0.5, 0.35)
EXIF_DESCRIPTION = 0x010E
EXIF_SOFTWARE = 0x0131


@dataclass(frozen=True)
class Packed:
    """Files grouped into messages, and the names of those too large to send at all."""

    messages: list[list[Attachment]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def note(self, text: str) -> str:
        """``text`` with a line naming every file that was left out."""
        if not self.dropped:
            return text
        names = ", ".join(self.dropped)
        return f"{text}\n(Too large for Discord, not sent: {names}.)"


def pack(
    files: Sequence[Attachment],
    *,
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_files: int = MAX_FILES,
) -> Packed:
    """Shrink what is too large, then group in order: ≤ ``max_files`` and ≤ ``max_bytes`` each."""
    budget = max(1024, max_bytes - REQUEST_OVERHEAD)
    packed = Packed()
    fitted = []
    for file in files:
        small = shrink(file, budget)
        if small is None:
            packed.dropped.append(file.name)
        else:
            fitted.append(small)
    packed.messages.extend(_groups(fitted, budget, max_files))
    return packed


async def pack_in_thread(files: Sequence[Attachment], *, max_bytes: int) -> Packed:
    """:func:`pack` off the event loop: re-encoding a large image takes a while."""
    if not files:
        return Packed()
    return await asyncio.to_thread(pack, files, max_bytes=max_bytes)


def _groups(files: Sequence[Attachment], budget: int, max_files: int) -> Iterator[list[Attachment]]:
    group: list[Attachment] = []
    size = 0
    for file in files:
        if group and (len(group) >= max_files or size + len(file.data) > budget):
            yield group
            group, size = [], 0
        group.append(file)
        size += len(file.data)
    if group:
        yield group


def shrink(file: Attachment, max_bytes: int) -> Attachment | None:
    """The file itself if small enough, else a re-encoded image that fits, else ``None``."""
    if len(file.data) <= max_bytes:
        return file
    try:
        with Image.open(io.BytesIO(file.data)) as img:
            img.load()
            meta = {str(k): str(v) for k, v in (getattr(img, "text", None) or {}).items()}
            rgb = img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        log.warning(
            "%s (%d bytes) is over the upload limit and not an image", file.name, len(file.data)
        )
        return None
    data, suffix = _reencode(rgb, meta, max_bytes)
    if data is None:
        log.warning("%s could not be re-encoded under %d bytes", file.name, max_bytes)
        return None
    name = str(PurePath(file.name).with_suffix(suffix))
    log.info(
        "re-encoded %s (%d bytes) as %s (%d bytes)", file.name, len(file.data), name, len(data)
    )
    return Attachment(name, data, file.description)


def _reencode(img: Image.Image, meta: dict[str, str], max_bytes: int) -> tuple[bytes | None, str]:
    data = _png(img, meta)
    if len(data) <= max_bytes:
        return data, ".png"
    for scale in SCALES:
        frame = img if scale == 1.0 else _scaled(img, scale)
        for quality in JPEG_QUALITIES:
            data = _jpeg(frame, meta, quality)
            if len(data) <= max_bytes:
                return data, ".jpg"
    return None, ""


def _scaled(img: Image.Image, scale: float) -> Image.Image:
    size = (max(16, round(img.width * scale)), max(16, round(img.height * scale)))
    return img.resize(size, Image.Resampling.LANCZOS)


def _png(img: Image.Image, meta: dict[str, str]) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in meta.items():
        info.add_text(key, value)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info, compress_level=9)
    return buf.getvalue()


def _jpeg(img: Image.Image, meta: dict[str, str], quality: int) -> bytes:
    """JPEG with the PNG text kept as a JSON comment and as the EXIF description."""
    text = json.dumps(meta, ensure_ascii=True, separators=(",", ":"))
    exif = Image.Exif()
    exif[EXIF_DESCRIPTION] = text
    exif[EXIF_SOFTWARE] = "pulid-bot"
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, comment=text.encode(), exif=exif.tobytes())
    return buf.getvalue()


def to_discord(file: Attachment) -> discord.File:
    """A fresh :class:`discord.File` (each can be sent once)."""
    description = file.description[:1024] or None
    return discord.File(io.BytesIO(file.data), filename=file.name, description=description)


def to_discord_all(files: Sequence[Attachment]) -> list[discord.File]:
    return [to_discord(f) for f in files]


async def download(upload: discord.Attachment, max_bytes: int, what: str = "file") -> Attachment:
    """An uploaded file's bytes; refused before downloading when Discord says it is too large."""
    if upload.size > max_bytes:
        raise BadInput(
            f"the {what} {upload.filename!r} is {upload.size / 2**20:.1f} MB; "
            f"the limit is {max_bytes / 2**20:.1f} MB"
        )
    try:
        data = await upload.read()
    except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
        log.warning("download of attachment %s failed: %s", upload.id, exc)
        raise BadInput(f"could not download {upload.filename!r}; please send it again") from None
    return Attachment(upload.filename, data)
