"""Identity similarity of an output image to an identity (ArcFace cosine, PULID_SPEC §1.6).

Scores use *normalised* ArcFace vectors (unlike id_cond, which takes the raw one). The reference
is the normalised mean of the identity's normalised vectors; every face found in the output is
compared and the best match is the score. An image with no face has no score, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image


class _Face(Protocol):
    embedding: np.ndarray


class _Analyzer(Protocol):
    def detect(self, rgb: np.ndarray) -> list[_Face]: ...


@dataclass(frozen=True)
class IdentityScore:
    """Cosine similarity in [-1, 1] of the best face, or None with the reason in ``note``."""

    similarity: float | None
    faces: int
    note: str = ""

    def label(self) -> str:
        """Short text for grids and captions."""
        return f"{self.similarity:.2f}" if self.similarity is not None else "no face"


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    v = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def reference_vector(arcface: np.ndarray) -> np.ndarray:
    """The normalised mean of the normalised reference vectors, (512,)."""
    return unit(unit(arcface).mean(axis=0))[0]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(unit(a)[0] @ unit(b)[0])


def score_image(
    analyzer: _Analyzer, image: Image.Image | np.ndarray, arcface: np.ndarray
) -> IdentityScore:
    """ArcFace cosine between the identity and the best-matching face of ``image``."""
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    faces = analyzer.detect(rgb)
    if not faces:
        return IdentityScore(None, 0, "no face found in the output")
    ref = reference_vector(arcface)
    sims = [cosine(face.embedding, ref) for face in faces]
    best = int(np.argmax(sims))
    note = f"best of {len(faces)} faces" if len(faces) > 1 else ""
    return IdentityScore(round(sims[best], 4), len(faces), note)
