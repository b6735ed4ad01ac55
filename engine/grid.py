"""The compare grid: the reference face, every output with its identity score, and the mean."""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image, ImageDraw

from engine.images import WHITE, font, make_grid
from engine.scoring import IdentityScore

CELL = 256
MISSING_REFERENCE = (200, 200, 200)


def mean_score(scores: Sequence[IdentityScore]) -> float | None:
    """The mean similarity of the outputs that have a face (None when none has one)."""
    values = [s.similarity for s in scores if s.similarity is not None]
    return round(sum(values) / len(values), 4) if values else None


def mean_label(scores: Sequence[IdentityScore]) -> str:
    """``mean likeness 0.52 (7 of 8 with a face)``, or why there is no mean."""
    mean = mean_score(scores)
    if mean is None:
        return "mean likeness: n/a (no face found in any output)"
    scored = sum(s.similarity is not None for s in scores)
    return f"mean likeness {mean:.2f} ({scored} of {len(scores)} with a face)"


def reference_tile(thumbnail_png: bytes | None, size: int = CELL) -> Image.Image:
    """The identity's saved face thumbnail, or a gray tile when it has none."""
    if thumbnail_png:
        with Image.open(io.BytesIO(thumbnail_png)) as img:
            return img.convert("RGB")
    return Image.new("RGB", (size, size), MISSING_REFERENCE)


def compare_grid(
    reference: Image.Image,
    outputs: Sequence[Image.Image],
    scores: Sequence[IdentityScore],
    *,
    footer: Sequence[str] = (),
    cell: int = CELL,
) -> Image.Image:
    """Reference first, then each output captioned ``N: score``; the mean (and notes) below."""
    if len(outputs) != len(scores):
        raise ValueError("compare_grid: one score per output")
    captions = ["reference"] + [f"{i + 1}: {s.label()}" for i, s in enumerate(scores)]
    tiles = make_grid([reference, *outputs], cell=cell, captions=captions)
    lines = [mean_label(scores), *footer]
    size = max(12, cell // 14)
    line_h = size + 6
    canvas = Image.new("RGB", (tiles.width, tiles.height + line_h * len(lines) + 6), WHITE)
    canvas.paste(tiles, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for n, line in enumerate(lines):
        draw.text((6, tiles.height + 3 + n * line_h), line, fill=(0, 0, 0), font=font(size))
    return canvas
