"""Choosing one face: only face, crop boxes, face numbers, sizes; the numbered preview."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine.faces import (
    BadCropError,
    BadFaceIndexError,
    DetectedFace,
    FaceError,
    FaceTooSmallError,
    MultipleFacesError,
    NoFaceError,
    choose_face,
    crop_box,
    preview_png,
)
from storage.schemas import CropBox

SIZE = (400, 300)


def _face(x: float, y: float, side: float = 80.0, score: float = 0.9) -> DetectedFace:
    kps = np.array(
        [
            [x + side * f, y + side * g]
            for f, g in ((0.3, 0.4), (0.7, 0.4), (0.5, 0.6), (0.35, 0.8), (0.65, 0.8))
        ],
        np.float32,
    )
    return DetectedFace(np.array([x, y, x + side, y + side], np.float32), kps, score, None)


@pytest.fixture
def three() -> list[DetectedFace]:
    """Three faces left → right; the middle one is small (40 px)."""
    return [_face(10, 50), _face(150, 60, side=40, score=0.7), _face(250, 100)]


def test_the_only_face_is_chosen():
    face = _face(100, 100)
    assert choose_face([face], SIZE) is face


def test_small_faces_do_not_compete_with_a_usable_one():
    big, small = _face(10, 10), _face(200, 10, side=30)
    assert choose_face([big, small], SIZE) is big


def test_no_face():
    with pytest.raises(NoFaceError) as info:
        choose_face([], SIZE)
    assert info.value.user_message.startswith("No face")


def test_several_faces_refused_with_numbered_preview(three: list[DetectedFace]):
    rgb = np.full((SIZE[1], SIZE[0], 3), 40, np.uint8)
    with pytest.raises(MultipleFacesError) as info:
        choose_face(three, SIZE, rgb=rgb)
    err = info.value
    assert err.count == 3 and "1–3" in err.user_message and "\n" not in err.user_message
    preview = np.asarray(Image.open(io.BytesIO(err.preview_png)).convert("RGB"))
    assert preview.shape == rgb.shape
    assert (preview[50:130, 10] != 40).any(), "box of face 1 drawn"
    assert (preview[100:180, 330] != 40).any(), "box of face 3 drawn"
    assert (preview[200:, :] == 40).all(), "nothing drawn below the faces"


def test_preview_png_draws_numbers_and_scores(astronaut_rgb: np.ndarray):
    face = _face(180, 70, side=90, score=0.87)
    drawn = np.asarray(Image.open(io.BytesIO(preview_png(astronaut_rgb, [face]))))
    changed = np.any(drawn != astronaut_rgb, axis=2)
    assert changed[70:160, 180:182].all(), "left edge of the box"
    assert changed[40:70, 180:240].any(), "label above the box"
    assert not changed[300:, :].any()


@pytest.mark.parametrize(("index", "expected"), [(1, 0), (3, 2)])
def test_face_number_is_one_based_left_to_right(three, index: int, expected: int):
    assert choose_face(three, SIZE, index=index) is three[expected]


@pytest.mark.parametrize("index", [0, 4, -1])
def test_bad_face_number(three, index: int):
    with pytest.raises(BadFaceIndexError, match="numbered 1–3"):
        choose_face(three, SIZE, index=index)


def test_picked_face_too_small(three):
    with pytest.raises(FaceTooSmallError, match="40 px"):
        choose_face(three, SIZE, index=2)
    with pytest.raises(FaceTooSmallError):
        choose_face([three[1]], SIZE)


def test_min_face_px_is_configurable(three):
    assert choose_face(three, SIZE, index=2, min_face_px=32) is three[1]


def test_crop_in_pixels_selects_the_face_inside(three):
    assert choose_face(three, SIZE, crop=(230, 80, 150, 150)) is three[2]


def test_crop_relative_and_crop_objects(three):
    assert choose_face(three, SIZE, crop=(0.0, 0.0, 0.3, 0.6), crop_relative=True) is three[0]
    obj = CropBox(x=0.6, y=0.2, w=0.4, h=0.8, relative=True)
    assert choose_face(three, SIZE, crop=obj) is three[2]
    assert choose_face(three, SIZE, crop=CropBox(x=0, y=0, w=120, h=200)) is three[0]


def test_crop_with_index_numbers_faces_inside_the_crop(three):
    both = (0, 0, 400, 300)
    assert choose_face(three, SIZE, crop=both, index=2, min_face_px=30) is three[1]


def test_crop_without_a_face(three):
    with pytest.raises(NoFaceError, match="inside the crop"):
        choose_face(three, SIZE, crop=(0, 200, 100, 100))


@pytest.mark.parametrize(
    ("crop", "relative", "match"),
    [
        ((500, 10, 50, 50), False, "outside"),
        ((10, 10, 0, 50), False, "positive"),
        ((-5, 10, 50, 50), False, "positive"),
        ((0.5, 0.5, 1.5, 0.2), True, "fractions"),
        ((1, 2, 3), False, "four numbers"),
        ((float("nan"), 0, 1, 1), False, "four numbers"),
        (("a", 0, 1, 1), False, "four numbers"),
    ],
)
def test_bad_crops(three, crop, relative: bool, match: str):
    with pytest.raises(BadCropError, match=match):
        choose_face(three, SIZE, crop=crop, crop_relative=relative)


def test_crop_box_scales_upload_pixels_and_clips():
    box = crop_box((100, 50, 800, 100), (500, 400), scale=0.5)
    assert (box.x1, box.y1, box.x2, box.y2) == (50, 25, 450, 75)
    clipped = crop_box((300, 300, 900, 900), (500, 400))
    assert (clipped.x2, clipped.y2) == (500, 400)
    assert clipped.expanded(0.25, (500, 400)) == (250, 250, 500, 400)


def test_every_face_error_has_a_one_line_message():
    for cls in (NoFaceError, FaceTooSmallError, BadCropError, BadFaceIndexError):
        err = cls()
        assert isinstance(err, FaceError) and err.user_message and "\n" not in err.user_message
