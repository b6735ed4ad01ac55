"""Image decoding and encoding: uploads in, PNGs out.

Uploads are decoded defensively: only common raster formats are opened (no EPS, which would start
Ghostscript), the pixel count is checked from the header before any pixel is decoded, truncated
files are refused, EXIF orientation is applied, the first frame of an animation is taken and every
colour mode becomes 8-bit RGB. The long edge is then capped at 1024 px with cv2's Lanczos-4 and
``int()`` rounding of the new size, as the official PuLID app does (PULID_SPEC §1.1).
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, PngImagePlugin

log = logging.getLogger(__name__)

#: Formats an upload may be in; anything else is "not an image" to us.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG includes MPO
MAX_PIXELS = 40_000_000
MAX_SIDE = 1024
WHITE = (255, 255, 255)


class ImageError(ValueError):
    """An upload that cannot be used; ``user_message`` is one line for the chat."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


@dataclass(frozen=True)
class DecodedImage:
    """A decoded upload: RGB image, the upload's size (EXIF applied) and the downscale factor."""

    image: Image.Image
    source_size: tuple[int, int]
    scale: float

    @property
    def rgb(self) -> np.ndarray:
        return np.asarray(self.image)


def decode_image(
    data: bytes, *, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE
) -> Image.Image:
    """Decode an upload into an RGB image, EXIF-rotated, long edge at most ``max_side``."""
    return decode_upload(data, max_pixels=max_pixels, max_side=max_side).image


def decode_upload(
    data: bytes, *, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE
) -> DecodedImage:
    """Like :func:`decode_image`, also returning the upload's size and the scale applied."""
    img = _load_first_frame(_open_checked(data, max_pixels))
    try:
        rgb = to_rgb(ImageOps.exif_transpose(img))
    except (OSError, ValueError) as exc:
        log.info("image conversion failed: %s", exc)
        raise ImageError(f"Unsupported image colour mode {img.mode}.") from exc
    return _downscaled(rgb, max_side)


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageError("The upload is empty.")
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageError(_too_large(None, max_pixels)) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(
            "That file is not an image I can read (use JPEG, PNG, WebP, GIF, BMP or TIFF)."
        ) from exc
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(_too_large(width * height, max_pixels))
    if width < 1 or height < 1:
        raise ImageError("The image has no pixels.")
    return img


def _load_first_frame(img: Image.Image) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.seek(0)
            img.load()
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        log.info("image decode failed: %s", exc)
        raise ImageError("The image file is truncated or damaged.") from exc
    return img


def _too_large(pixels: int | None, max_pixels: int) -> str:
    got = f" ({pixels / 1e6:.0f} megapixels)" if pixels else ""
    return f"The image is too large{got}; the limit is {max_pixels / 1e6:.0f} megapixels."


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit RGB; transparency is flattened onto white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return Image.fromarray(_gray_to_uint8(np.asarray(img))).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*WHITE, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def _gray_to_uint8(arr: np.ndarray) -> np.ndarray:
    """16-bit, 32-bit integer or float gray → 0–255: 16-bit range for integers, 0–1 for floats."""
    if arr.dtype.kind == "f":
        peak = 1.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 255.0
        scaled = np.nan_to_num(arr.astype(np.float64)) * (255.0 / peak)
    elif int(arr.max(initial=0)) > 255:
        scaled = arr.astype(np.float64) / 257.0
    else:
        scaled = arr.astype(np.float64)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _downscaled(img: Image.Image, max_side: int) -> DecodedImage:
    width, height = img.size
    if max(width, height) <= max_side:
        return DecodedImage(img, (width, height), 1.0)
    k = max_side / max(width, height)
    new_w, new_h = max(1, int(width * k)), max(1, int(height * k))
    arr = cv2.resize(np.asarray(img), (new_w, new_h), interpolation=cv2.INTER_LANCZOS4)
    return DecodedImage(Image.fromarray(arr), (width, height), new_w / width)


def as_image(img: Image.Image | np.ndarray) -> Image.Image:
    """A PIL image from a PIL image or an HxWx3 uint8 RGB array."""
    if isinstance(img, Image.Image):
        return img
    return Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8))


def png_bytes(img: Image.Image | np.ndarray, metadata: dict[str, str] | None = None) -> bytes:
    """Encode as PNG with one tEXt chunk per metadata entry."""
    info = PngImagePlugin.PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(key, value)
    buf = io.BytesIO()
    as_image(img).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def thumbnail(img: Image.Image | np.ndarray, size: int = 128) -> Image.Image:
    """A copy that fits in ``size``×``size`` (aspect kept), Lanczos-resampled."""
    out = as_image(img).copy()
    out.thumbnail((size, size), Image.Resampling.LANCZOS)
    return out


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` px."""
    return ImageFont.load_default(size=max(8, size))


def make_grid(
    images: Sequence[Image.Image | np.ndarray],
    *,
    columns: int | None = None,
    cell: int = 256,
    captions: Sequence[str] | None = None,
    background: tuple[int, int, int] = WHITE,
) -> Image.Image:
    """Tile images into a grid of ``cell``-sized squares, with an optional caption under each."""
    if not images:
        raise ValueError("make_grid needs at least one image")
    if captions is not None and len(captions) != len(images):
        raise ValueError("make_grid: captions must match images one to one")
    cols = columns or int(np.ceil(np.sqrt(len(images))))
    rows = -(-len(images) // cols)
    caption_h = max(14, cell // 10) if captions else 0
    grid = Image.new("RGB", (cols * cell, rows * (cell + caption_h)), background)
    draw = ImageDraw.Draw(grid)
    for i, img in enumerate(images):
        x, y = (i % cols) * cell, (i // cols) * (cell + caption_h)
        tile = thumbnail(img, cell)
        grid.paste(tile, (x + (cell - tile.width) // 2, y + (cell - tile.height) // 2))
        if captions:
            draw.text((x + 4, y + cell + 1), captions[i], fill=(0, 0, 0), font=font(caption_h - 3))
    return grid
