"""Upload decoding: formats, modes, EXIF, animation, damage, bombs; PNG metadata and grids."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from engine.images import (
    ImageError,
    decode_image,
    decode_upload,
    make_grid,
    png_bytes,
    thumbnail,
)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _halves(size=(60, 30), left=(255, 0, 0), right=(0, 0, 255)) -> Image.Image:
    img = Image.new("RGB", size, right)
    img.paste(left, (0, 0, size[0] // 2, size[1]))
    return img


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` × ``height`` with a tiny (unused) data chunk."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_exif_rotation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = _save(_halves(), "JPEG", exif=exif, quality=95)
    img = decode_image(data)
    assert img.size == (30, 60)
    arr = np.asarray(img).astype(int)
    assert arr[5, 15, 0] > 200 and arr[5, 15, 2] < 60  # left (red) half now on top
    assert arr[55, 15, 2] > 200 and arr[55, 15, 0] < 60


def test_cmyk_jpeg_becomes_rgb():
    data = _save(Image.new("CMYK", (32, 32), (255, 0, 0, 0)), "JPEG", quality=95)  # cyan
    img = decode_image(data)
    assert img.mode == "RGB"
    np.testing.assert_allclose(np.asarray(img)[16, 16], (0, 255, 255), atol=6)


def test_16bit_gray_is_scaled_not_clipped():
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (8, 1))
    data = _save(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    arr = np.asarray(decode_image(data))
    assert arr.dtype == np.uint8 and arr.shape == (8, 256, 3)
    np.testing.assert_allclose(arr[0, :, 0], np.round(ramp[0] / 257.0), atol=1)


def test_rgba_transparency_is_flattened_on_white():
    img = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    img.paste((200, 0, 0, 255), (0, 0, 5, 10))
    arr = np.asarray(decode_image(_save(img, "PNG")))
    assert tuple(arr[5, 2]) == (200, 0, 0)
    assert tuple(arr[5, 8]) == (255, 255, 255)


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    arr = np.asarray(decode_image(data))
    np.testing.assert_allclose(arr[8, 8], (255, 0, 0), atol=4)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "I", "F", "CMYK", "YCbCr", "RGBA", "I;16"])
def test_every_mode_becomes_rgb(mode: str):
    src = Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 20, 3), np.uint8))
    img = src.convert(mode) if mode != "I;16" else src.convert("L").convert("I;16")
    fmt = "TIFF" if mode in ("I", "F", "CMYK", "YCbCr") else "PNG"
    if mode == "YCbCr":
        fmt = "JPEG"
    out = decode_image(_save(img, fmt))
    assert out.mode == "RGB" and out.size == (20, 12)


def test_truncated_file_is_refused(astronaut_rgb: np.ndarray):
    data = _save(Image.fromarray(astronaut_rgb), "JPEG", quality=90)
    with pytest.raises(ImageError, match="truncated"):
        decode_image(data[: len(data) // 2])


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(ImageError, match="too large") as info:
        decode_image(_png_header_only(8000, 6000))  # 48 MP > 40 MP
    assert "\n" not in info.value.user_message
    with pytest.raises(ImageError, match="too large"):
        decode_image(_png_header_only(30000, 30000), max_pixels=10**10)  # Pillow's own guard


def test_pixel_cap_is_configurable():
    data = _save(Image.new("RGB", (300, 200)), "PNG")
    with pytest.raises(ImageError, match="too large"):
        decode_image(data, max_pixels=50_000)
    assert decode_image(data, max_pixels=60_000).size == (300, 200)


@pytest.mark.parametrize(
    "data",
    [b"hello, this is a text file\n" * 20, b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"],
    ids=["text", "eps"],
)
def test_non_images_are_refused(data: bytes):
    with pytest.raises(ImageError, match="not an image"):
        decode_image(data)


def test_empty_upload_is_refused():
    with pytest.raises(ImageError, match="empty"):
        decode_image(b"")


def test_long_edge_is_capped_with_lanczos_like_the_official_app():
    rgb = np.random.default_rng(1).integers(0, 255, (1000, 2001, 3), np.uint8)
    decoded = decode_upload(_save(Image.fromarray(rgb), "PNG"))
    assert decoded.image.size == (1024, 511)  # int() truncation, as resize_numpy_image_long
    assert decoded.source_size == (2001, 1000)
    assert decoded.scale == pytest.approx(1024 / 2001)
    expected = cv2.resize(rgb, (1024, 511), interpolation=cv2.INTER_LANCZOS4)
    np.testing.assert_array_equal(decoded.rgb, expected)


def test_small_images_are_kept_as_they_are(astronaut_png: bytes, astronaut_rgb: np.ndarray):
    decoded = decode_upload(astronaut_png)
    assert decoded.scale == 1.0
    np.testing.assert_array_equal(decoded.rgb, astronaut_rgb)


def test_png_bytes_carries_text_metadata(astronaut_rgb: np.ndarray):
    data = png_bytes(astronaut_rgb, {"Software": "pulid-bot", "ai_generated": "true"})
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    assert img.text == {"Software": "pulid-bot", "ai_generated": "true"}
    np.testing.assert_array_equal(np.asarray(img), astronaut_rgb)


def test_grid_and_thumbnail(astronaut_rgb: np.ndarray):
    assert thumbnail(astronaut_rgb, 64).size == (64, 64)
    tiles = [astronaut_rgb, np.zeros((40, 80, 3), np.uint8), Image.new("RGB", (30, 30), "red")]
    grid = make_grid(tiles, cell=64, captions=["ref", "a", "b"])
    assert grid.size == (2 * 64, 2 * (64 + 14))
    arr = np.asarray(grid)
    assert arr[64 + 14 + 32, 32].tolist() == [255, 0, 0]  # third tile, second row
    assert (arr[64:78, :64] < 128).any()  # caption text drawn under the first tile
    with pytest.raises(ValueError, match="captions"):
        make_grid(tiles, captions=["x"])
