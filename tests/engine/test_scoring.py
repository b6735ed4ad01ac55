"""Identity score: ArcFace cosine of normalised vectors on the best face; no face → no score."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from engine.scoring import cosine, reference_vector, score_image


class _Analyzer:
    def __init__(self, embeddings: list[np.ndarray]) -> None:
        self.embeddings = embeddings
        self.seen: list[tuple[int, ...]] = []

    def detect(self, rgb: np.ndarray):
        self.seen.append(rgb.shape)
        return [SimpleNamespace(embedding=e) for e in self.embeddings]


def _vec(*values: float) -> np.ndarray:
    v = np.zeros(512, np.float32)
    v[: len(values)] = values
    return v


def test_no_face_means_no_score_and_says_so() -> None:
    score = score_image(_Analyzer([]), Image.new("RGB", (32, 32)), _vec(1.0))
    assert score.similarity is None and score.faces == 0
    assert "no face" in score.note and score.label() == "no face"


def test_best_face_wins_and_scale_does_not_matter() -> None:
    ref = np.stack([_vec(30.0), _vec(0.0, 20.0)])  # raw vectors: norms differ, normalised first
    faces = [_vec(0.0, 0.0, 5.0), _vec(2.0, 2.0)]
    score = score_image(_Analyzer(faces), np.zeros((8, 8, 3), np.uint8), ref)
    assert score.faces == 2 and score.similarity == pytest.approx(1.0, abs=1e-4)
    assert "best of 2" in score.note and score.label() == "1.00"


def test_reference_vector_is_unit_mean_of_unit_vectors() -> None:
    ref = reference_vector(np.stack([_vec(10.0), _vec(0.0, 1.0)]))
    assert np.allclose(ref[:2], [np.sqrt(0.5), np.sqrt(0.5)]) and np.isclose(np.linalg.norm(ref), 1)
    assert cosine(_vec(3.0), _vec(-1.0)) == pytest.approx(-1.0)


def test_real_photo_scores_one_against_its_own_face(haar_analyzer, astronaut_rgb) -> None:
    faces = haar_analyzer.detect(astronaut_rgb)
    assert len(faces) == 1
    score = score_image(haar_analyzer, Image.fromarray(astronaut_rgb), faces[0].embedding[None])
    assert score.similarity == pytest.approx(1.0, abs=1e-4)
    blank = score_image(haar_analyzer, Image.new("RGB", (128, 128), "gray"), faces[0].embedding)
    assert blank.similarity is None
