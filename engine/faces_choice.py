"""Choosing one face: crop box, face number, or the only face; and the numbered preview.

Faces are numbered 1, 2, … left to right (box centres), as drawn on the preview. Rules:

* a crop box keeps the faces whose box centre lies inside it; one must remain;
* a face number picks that face (among the crop's faces when a crop is also given);
* otherwise the one face large enough is taken; several → :class:`MultipleFacesError` carrying
  the preview PNG so the user can answer with a number or a crop.

Faces smaller than ``min_face_px`` (the shorter box side, in pixels of the decoded image) never
count as "the only face"; picked explicitly, they raise :class:`FaceTooSmallError`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import ImageDraw

from engine.images import as_image, font, png_bytes

log = logging.getLogger(__name__)

MIN_FACE_PX = 64
#: Detection around a crop box looks this fraction of the box's long side beyond each edge.
CROP_MARGIN = 0.25
BOX_COLOURS = ((255, 64, 64), (64, 160, 255), (255, 200, 0), (64, 220, 120), (220, 90, 255))
SMALL_COLOUR = (160, 160, 160)


class FaceLike(Protocol):
    bbox: np.ndarray
    det_score: float


class FaceError(ValueError):
    """A face could not be chosen; ``user_message`` is one line for the chat."""

    default_message = "No usable face."

    def __init__(self, user_message: str | None = None) -> None:
        self.user_message = user_message or self.default_message
        super().__init__(self.user_message)


class NoFaceError(FaceError):
    default_message = "No face found in the image; use a clear, front-facing photo."


class MultipleFacesError(FaceError):
    """Several faces and no choice; ``preview_png`` shows them numbered."""

    def __init__(self, count: int, preview_png: bytes = b"") -> None:
        super().__init__(
            f"{count} faces found; choose one with a face number (1–{count}, left to right, "
            "as numbered on the preview) or a crop box."
        )
        self.count = count
        self.preview_png = preview_png


class FaceTooSmallError(FaceError):
    default_message = "The face is too small; use a closer or larger photo."


class BadCropError(FaceError):
    default_message = "The crop box lies outside the image."


class BadFaceIndexError(FaceError):
    default_message = "There is no face with that number."


@dataclass(frozen=True)
class PixelBox:
    """A region x1, y1, x2, y2 in pixels of the decoded image."""

    x1: float
    y1: float
    x2: float
    y2: float

    def contains(self, x: float, y: float) -> bool:
        return self.x1 <= x <= self.x2 and self.y1 <= y <= self.y2

    def expanded(self, margin: float, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """Integer region grown by ``margin`` × long side, clipped to the image."""
        pad = margin * max(self.x2 - self.x1, self.y2 - self.y1)
        x1, y1 = max(0, int(self.x1 - pad)), max(0, int(self.y1 - pad))
        x2, y2 = (
            min(size[0], int(np.ceil(self.x2 + pad))),
            min(size[1], int(np.ceil(self.y2 + pad))),
        )
        return x1, y1, x2, y2


def crop_box(
    crop: object, image_size: tuple[int, int], *, relative: bool = False, scale: float = 1.0
) -> PixelBox:
    """A crop (x, y, w, h tuple, or any object with x, y, w, h, relative) → pixel box.

    Pixel crops are multiplied by ``scale`` (upload → decoded pixels); relative crops are
    fractions 0–1 of the image. The box is clipped to the image; nothing left → BadCropError.
    """
    if all(hasattr(crop, a) for a in ("x", "y", "w", "h")):
        values = (crop.x, crop.y, crop.w, crop.h)  # type: ignore[attr-defined]
        relative = bool(getattr(crop, "relative", relative))
    else:
        values = crop
    try:
        x, y, w, h = (float(v) for v in values)  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise BadCropError("A crop box needs four numbers: x, y, width, height.") from exc
    if not all(np.isfinite((x, y, w, h))):
        raise BadCropError("A crop box needs four numbers: x, y, width, height.")
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        raise BadCropError("A crop box needs x, y ≥ 0 and a positive width and height.")
    if relative and max(x, y, w, h) > 1:
        raise BadCropError("Relative crop values are fractions between 0 and 1.")
    fx, fy = (image_size[0], image_size[1]) if relative else (scale, scale)
    box = PixelBox(
        x * fx, y * fy, min((x + w) * fx, image_size[0]), min((y + h) * fy, image_size[1])
    )
    if box.x2 - box.x1 < 1 or box.y2 - box.y1 < 1:
        raise BadCropError()
    return box


def face_px(face: FaceLike) -> float:
    """The shorter side of a face's box, in pixels."""
    x1, y1, x2, y2 = face.bbox[:4]
    return float(min(x2 - x1, y2 - y1))


def centre(face: FaceLike) -> tuple[float, float]:
    x1, y1, x2, y2 = face.bbox[:4]
    return float(x1 + x2) / 2, float(y1 + y2) / 2


def choose_face(
    faces: list,
    image_size: tuple[int, int],
    *,
    crop: object | None = None,
    crop_relative: bool = False,
    index: int | None = None,
    min_face_px: float = MIN_FACE_PX,
    rgb: np.ndarray | None = None,
):
    """Pick one face from ``faces`` (sorted left → right); ``index`` is 1-based.

    ``image_size`` is (width, height) of the image the boxes refer to, and pixel crops are in
    that image's pixels. ``rgb``, when given, is drawn into MultipleFacesError's preview.
    """
    if crop is not None:
        box = (
            crop
            if isinstance(crop, PixelBox)
            else crop_box(crop, image_size, relative=crop_relative)
        )
        faces = [f for f in faces if box.contains(*centre(f))]
        if not faces:
            raise NoFaceError("No face found inside the crop box.")
    if not faces:
        raise NoFaceError()
    if index is not None:
        return _by_index(faces, index, min_face_px)
    usable = [f for f in faces if face_px(f) >= min_face_px]
    if not usable:
        raise FaceTooSmallError(_too_small(max(faces, key=face_px), min_face_px))
    if len(usable) > 1:
        preview = preview_png(rgb, faces, min_face_px=min_face_px) if rgb is not None else b""
        raise MultipleFacesError(len(faces), preview)
    return usable[0]


def _by_index(faces: list, index: int, min_face_px: float):
    if not 1 <= index <= len(faces):
        raise BadFaceIndexError(f"There is no face {index}; faces are numbered 1–{len(faces)}.")
    face = faces[index - 1]
    if face_px(face) < min_face_px:
        raise FaceTooSmallError(_too_small(face, min_face_px))
    return face


def _too_small(face: FaceLike, min_face_px: float) -> str:
    return (
        f"The face is too small ({face_px(face):.0f} px, at least {min_face_px:.0f} px needed); "
        "use a closer or larger photo."
    )


def draw_faces(rgb: np.ndarray, faces: list, *, min_face_px: float = MIN_FACE_PX):
    """The image with each face's box, number and detection score drawn on it."""
    img = as_image(rgb).copy()
    draw = ImageDraw.Draw(img)
    width = max(2, round(max(img.size) / 400))
    label_font = font(max(14, round(max(img.size) / 40)))
    for number, face in enumerate(faces, start=1):
        small = face_px(face) < min_face_px
        colour = SMALL_COLOUR if small else BOX_COLOURS[(number - 1) % len(BOX_COLOURS)]
        x1, y1, x2, y2 = (float(v) for v in face.bbox[:4])
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        text = f"{number}  {face.det_score:.2f}" + ("  small" if small else "")
        left, top, right, bottom = draw.textbbox((x1, y1), text, font=label_font)
        ty = y1 - (bottom - top) - 2 * width if y1 - (bottom - top) - 2 * width >= 0 else y2 + width
        draw.rectangle(
            (x1, ty, x1 + right - left + 2 * width, ty + bottom - top + 2 * width), fill=colour
        )
        draw.text((x1 + width, ty + width - (top - y1)), text, fill=(0, 0, 0), font=label_font)
    return img


def preview_png(rgb: np.ndarray, faces: list, *, min_face_px: float = MIN_FACE_PX) -> bytes:
    """PNG of :func:`draw_faces`."""
    return png_bytes(draw_faces(rgb, faces, min_face_px=min_face_px))
