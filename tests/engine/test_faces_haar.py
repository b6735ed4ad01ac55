"""The offline Haar backend on real photos: astronaut (one face) and t1.jpg (a group of six)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine.faces import (
    HAAR_NOTE,
    FaceTooSmallError,
    MultipleFacesError,
    NoFaceError,
    choose_face,
    find_face,
    prepare_reference,
)
from engine.faces_haar import keypoints_from_eyes
from engine.faces_models import ARCFACE_TEMPLATE

T1_SIZE = (1280, 886)

#: Face centres in t1.jpg upload pixels (1280 × 886), left to right, and a crop box a person
#: would draw around each head. Joey (top right, three-quarter view) is beyond Haar.
T1_PEOPLE = {
    "rachel": ((113, 330), (20, 230, 200, 200)),
    "monica": ((308, 214), (230, 120, 160, 180)),
    "ross": ((512, 342), (420, 220, 200, 220)),
    "chandler": ((788, 412), (700, 300, 180, 200)),
    "phoebe": ((1175, 335), (1090, 230, 170, 200)),
}


@pytest.fixture(scope="module")
def t1_faces(haar_analyzer, t1_decoded):
    return haar_analyzer.detect(t1_decoded.rgb)


def _centre_upload(face, scale: float) -> np.ndarray:
    return np.array([face.bbox[0] + face.bbox[2], face.bbox[1] + face.bbox[3]]) / 2 / scale


def test_astronaut_has_one_face(haar_analyzer, astronaut_rgb: np.ndarray):
    (face,) = haar_analyzer.detect(astronaut_rgb)
    x1, y1, x2, y2 = face.bbox
    assert 150 < x1 < x2 < 300 and 40 < y1 < y2 < 190  # her face, not the flag or the suit
    left, right, nose, mouth_l, mouth_r = face.kps
    assert left[0] < nose[0] < right[0] and max(left[1], right[1]) < nose[1] < mouth_l[1]
    assert x1 <= face.kps[:, 0].min() and face.kps[:, 0].max() <= x2
    assert face.embedding.shape == (512,) and face.embedding.dtype == np.float32
    assert haar_analyzer.quality_note == HAAR_NOTE


def test_group_photo_count_is_plausible(t1_faces, t1_decoded):
    assert 4 <= len(t1_faces) <= 7
    centres = [_centre_upload(f, t1_decoded.scale)[0] for f in t1_faces]
    assert centres == sorted(centres), "numbered left to right"
    for name, (centre, _) in T1_PEOPLE.items():
        gaps = [np.linalg.norm(_centre_upload(f, t1_decoded.scale) - centre) for f in t1_faces]
        assert min(gaps) < 40, f"{name} not found"


@pytest.mark.parametrize("name", list(T1_PEOPLE))
def test_crop_box_selects_the_intended_person(haar_analyzer, t1_decoded, name: str):
    centre, crop = T1_PEOPLE[name]
    face = find_face(t1_decoded.rgb, haar_analyzer, crop=crop, scale=t1_decoded.scale)
    side = (face.bbox[2] - face.bbox[0]) / t1_decoded.scale
    assert np.linalg.norm(_centre_upload(face, t1_decoded.scale) - centre) < 0.35 * side


def test_relative_crop_selects_phoebe(haar_analyzer, t1_decoded):
    (cx, cy), (x, y, w, h) = T1_PEOPLE["phoebe"]
    rel = (x / T1_SIZE[0], y / T1_SIZE[1], w / T1_SIZE[0], h / T1_SIZE[1])
    face = find_face(t1_decoded.rgb, haar_analyzer, crop=rel, crop_relative=True)
    assert np.linalg.norm(_centre_upload(face, t1_decoded.scale) - (cx, cy)) < 40


def test_crop_on_the_table_finds_no_face(haar_analyzer, t1_decoded):
    with pytest.raises(NoFaceError, match="inside the crop"):
        find_face(t1_decoded.rgb, haar_analyzer, crop=(300, 650, 500, 200), scale=t1_decoded.scale)


def test_group_photo_without_a_choice_is_refused_with_a_preview(
    haar_analyzer, tiny_parser, t1_jpeg: bytes, t1_faces
):
    with pytest.raises(MultipleFacesError) as info:
        prepare_reference(t1_jpeg, haar_analyzer, tiny_parser)
    assert info.value.count == len(t1_faces)
    preview = Image.open(io.BytesIO(info.value.preview_png))
    assert preview.format == "PNG" and preview.size == (1024, 708)


def test_face_number_picks_from_the_left(t1_faces, t1_decoded):
    face = choose_face(t1_faces, t1_decoded.image.size, index=1)
    assert np.linalg.norm(_centre_upload(face, t1_decoded.scale) - T1_PEOPLE["rachel"][0]) < 40


def test_end_to_end_with_a_crop_in_upload_pixels(haar_analyzer, tiny_parser, t1_jpeg: bytes):
    centre, crop = T1_PEOPLE["ross"]
    prepared = prepare_reference(t1_jpeg, haar_analyzer, tiny_parser, crop=crop)
    assert np.linalg.norm(_centre_upload(prepared.face, 1024 / 1280) - centre) < 40
    assert prepared.aligned.shape == (512, 512, 3)
    assert prepared.eva_input.shape == (1, 3, 336, 336)
    np.testing.assert_array_equal(prepared.arcface, prepared.face.embedding)
    assert prepared.quality_note == HAAR_NOTE
    assert Image.open(io.BytesIO(prepared.thumbnail_png)).size == (128, 128)


def test_face_below_the_configured_size(haar_analyzer, astronaut_rgb: np.ndarray):
    with pytest.raises(FaceTooSmallError, match="too small"):
        find_face(astronaut_rgb, haar_analyzer, min_face_px=120)


def test_keypoints_from_eyes_fit_the_arcface_template():
    kps = keypoints_from_eyes(ARCFACE_TEMPLATE[0] * 2 + 10, ARCFACE_TEMPLATE[1] * 2 + 10)
    np.testing.assert_allclose(kps, ARCFACE_TEMPLATE * 2 + 10, atol=1e-3)
