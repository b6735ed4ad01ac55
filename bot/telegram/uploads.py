"""Uploads: the photo or file a command refers to, checked before it is downloaded.

A command finds its file on its own message (the command is the caption) or on the message it
replies to. Photos are the largest size Telegram kept (re-compressed JPEG); image documents are
the original file, which gives a better identity. Bots may download at most 20 MB, and the
host may allow less: both are refused from the declared ``file_size`` before any download.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from pathlib import PurePath

from telegram import Bot, Document, Message, PhotoSize
from telegram.error import TelegramError

from bot.core import parsing
from bot.core.errors import BadInput
from bot.core.messages import Attachment

log = logging.getLogger(__name__)

#: The Bot API's download limit for bots (getFile).
TELEGRAM_DOWNLOAD_CAP = 20 * 1024 * 1024
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
FACE_FILE_SUFFIX = ".safetensors"
TIP = (
    "Tip: send the photo as a file (📎 → File, uncompressed); the original keeps more "
    "detail than a compressed photo and gives a better likeness."
)
HOW_TO_ATTACH = "send the photo with the command as its caption, or reply to the photo with it"
HOW_TO_IMPORT = "send the .safetensors file with /face import as its caption, or reply to it"


class Need(enum.Enum):
    """What a command needs attached."""

    NOTHING = "nothing"
    IMAGE = "image"
    FACE_FILE = "face file"


@dataclass(frozen=True)
class Upload:
    """A file on a message, not yet downloaded."""

    file_id: str
    name: str
    size: int | None
    is_image: bool
    compressed: bool  # a Telegram "photo" rather than an uncompressed file


def need_of(text: str) -> Need:
    """``/face add|more`` need an image, ``/face import`` a face file, the rest nothing."""
    try:
        name, rest = parsing.split_command(text)
    except BadInput:
        return Need.NOTHING
    sub = rest.split(maxsplit=1)[0].lower() if rest.split() else ""
    if name != "face":
        return Need.NOTHING
    return {"add": Need.IMAGE, "more": Need.IMAGE, "import": Need.FACE_FILE}.get(sub, Need.NOTHING)


def find_upload(message: Message) -> Upload | None:
    """The photo or document on the message, else on the message it replies to."""
    for m in (message, message.reply_to_message):
        if m is None:
            continue
        if m.photo:
            return _photo(max(m.photo, key=lambda p: p.width * p.height))
        if m.document is not None:
            return _document(m.document)
    return None


def _photo(p: PhotoSize) -> Upload:
    return Upload(p.file_id, f"photo-{p.file_unique_id}.jpg", p.file_size, True, True)


def _document(d: Document) -> Upload:
    name = d.file_name or f"file-{d.file_unique_id}"
    mime = d.mime_type or ""
    is_image = mime.startswith("image/") or PurePath(name).suffix.lower() in IMAGE_SUFFIXES
    return Upload(d.file_id, name, d.file_size, is_image, False)


def check_upload(upload: Upload | None, need: Need, max_bytes: int) -> Upload:
    """Refuse a missing, wrong-kind or too-large file before downloading it."""
    if upload is None:
        raise BadInput(HOW_TO_ATTACH if need is Need.IMAGE else HOW_TO_IMPORT)
    if need is Need.IMAGE and not upload.is_image:
        raise BadInput(
            f"{upload.name!r} is not an image: send a photo, or a JPEG, PNG or WebP image as a file"
        )
    if need is Need.FACE_FILE and not upload.name.lower().endswith(FACE_FILE_SUFFIX):
        raise BadInput(f"/face import takes the {FACE_FILE_SUFFIX} file that /face export sent")
    _check_size(upload, max_bytes)
    return upload


def _check_size(upload: Upload, max_bytes: int) -> None:
    cap = min(max_bytes, TELEGRAM_DOWNLOAD_CAP)
    if upload.size is None or upload.size <= cap:
        return
    who = "Telegram lets bots download" if cap == TELEGRAM_DOWNLOAD_CAP else "this bot takes"
    raise BadInput(f"{upload.name!r} is {_mb(upload.size)}; {who} files up to {_mb(cap)}")


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


async def download(bot: Bot, upload: Upload) -> Attachment:
    """Fetch the file's bytes from Telegram."""
    try:
        file = await bot.get_file(upload.file_id)
        data = await file.download_as_bytearray()
    except TelegramError as exc:
        log.warning("download of %s failed: %s", upload.name, exc)
        raise BadInput(f"could not download {upload.name!r} from Telegram; send it again") from None
    return Attachment(upload.name, bytes(data))
