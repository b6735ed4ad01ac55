"""Cheap checks of uploads before they are queued (Pillow header reads only).

The engine decodes and validates fully; this refuses what is plainly wrong at once, with a
clear message, so nothing invalid reaches the queue: empty or huge files, non-images,
decompression bombs, crop boxes outside the picture. Animated images pass: the engine uses
their first frame (engine.images), and the receipt says so.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, replace

from PIL import Image

from bot.core.errors import BadInput
from bot.core.messages import Attachment, Reply
from storage.schemas import CropBox

#: The formats the engine decodes (engine/images.py ALLOWED_FORMATS).
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
#: The engine's decoding cap; larger pictures are refused before they are queued.
MAX_IMAGE_PIXELS = 40_000_000
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
FIRST_FRAME = "The image is animated: its first frame is used."


@dataclass(frozen=True)
class ImageInfo:
    """What the header says: format and size as displayed (EXIF rotation applied), and
    whether it is animated (the engine then uses the first frame)."""

    format: str
    width: int
    height: int
    animated: bool = False


def check_size(upload: Attachment, max_bytes: int, what: str = "file") -> None:
    """Refuse an empty upload or one over ``max_bytes``."""
    if not upload.data:
        raise BadInput(f"the {what} {upload.name!r} is empty")
    if len(upload.data) > max_bytes:
        raise BadInput(
            f"the {what} {upload.name!r} is {_mb(len(upload.data))}; the limit is {_mb(max_bytes)}"
        )


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


def sniff_image(upload: Attachment, max_bytes: int) -> ImageInfo:
    """Read an upload's header; :class:`BadInput` for anything the engine would refuse."""
    check_size(upload, max_bytes, "photo")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(upload.data), formats=IMAGE_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadInput(f"{upload.name!r} is too large to decode safely") from None
    except (OSError, ValueError, SyntaxError):
        raise BadInput(
            f"{upload.name!r} is not an image (send a JPEG, PNG, WebP, GIF, BMP or TIFF photo)"
        ) from None
    with img:
        return _info(upload, img)


def _info(upload: Attachment, img: Image.Image) -> ImageInfo:
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        raise BadInput(
            f"{upload.name!r} has {width * height / 1e6:.0f} megapixels; "
            f"the limit is {MAX_IMAGE_PIXELS / 1e6:.0f}"
        )
    animated = bool(getattr(img, "is_animated", False))
    if img.getexif().get(0x0112) in _ROTATED:
        width, height = height, width
    return ImageInfo(format=str(img.format), width=width, height=height, animated=animated)


def check_crop(crop: CropBox, info: ImageInfo, text: str) -> None:
    """A pixel crop box must lie inside the picture (relative boxes always do)."""
    if crop.relative:
        return
    if crop.x + crop.w > info.width or crop.y + crop.h > info.height:
        raise BadInput(f"crop {text} reaches outside the {info.width}×{info.height} image")


def first_frame_note(reply: Reply, info: ImageInfo) -> Reply:
    """``reply`` (a receipt, or the consent request) saying that an animation's first frame is
    used; unchanged for still images and errors."""
    if not info.animated or reply.is_error:
        return reply
    return replace(reply, text=f"{reply.text}\n{FIRST_FRAME}")
