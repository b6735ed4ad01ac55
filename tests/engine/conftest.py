"""Shared engine fixtures: real photos from installed packages, tiny face models, torch threads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def astronaut_rgb() -> np.ndarray:
    """scikit-image's astronaut (512 × 512 RGB, one face)."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


@pytest.fixture(scope="session")
def astronaut_png(astronaut_rgb: np.ndarray) -> bytes:
    from engine.images import png_bytes

    return png_bytes(astronaut_rgb)


@pytest.fixture(scope="session")
def t1_jpeg() -> bytes:
    """insightface's group photo ``t1.jpg`` (six people), as uploaded bytes."""
    import insightface

    return (Path(insightface.__file__).parent / "data" / "images" / "t1.jpg").read_bytes()


@pytest.fixture(scope="session")
def t1_decoded(t1_jpeg: bytes):
    """``t1.jpg`` decoded like an upload: 1024 × 708, with its scale from upload pixels."""
    from engine.images import decode_upload

    return decode_upload(t1_jpeg)


@pytest.fixture(scope="session")
def tiny_face_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder holding tiny ``antelopev2/{scrfd_10g_bnkps,glintr100}.onnx`` (seed 0)."""
    from engine.faces_models import ARCFACE_PATH, SCRFD_PATH
    from engine.tinyfaces import write_tiny_arcface, write_tiny_scrfd

    root = tmp_path_factory.mktemp("face-models")
    write_tiny_scrfd(root / SCRFD_PATH, seed=0)
    write_tiny_arcface(root / ARCFACE_PATH, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_analyzer(tiny_face_dir: Path):
    """Tiny SCRFD + tiny ArcFace through insightface's classes."""
    from engine.faces import TINY_DET_SIZE, TINY_NOTE, FaceAnalyzer

    return FaceAnalyzer.from_folder(tiny_face_dir, det_size=TINY_DET_SIZE, quality_note=TINY_NOTE)


@pytest.fixture(scope="session")
def haar_analyzer(tiny_face_dir: Path):
    """Haar detector + tiny ArcFace (the ``tiny`` preset's face front-end)."""
    from engine.faces import FaceAnalyzer
    from engine.faces_models import ARCFACE_PATH

    return FaceAnalyzer.haar(tiny_face_dir / ARCFACE_PATH)


@pytest.fixture(scope="session")
def tiny_parser():
    """facexlib BiSeNet with seeded random weights."""
    from engine.parsing import FaceParser

    return FaceParser.tiny(seed=0)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """torch on one thread for a module (``pytest.mark.usefixtures``), restored afterwards.

    Tiny models run fastest on one thread, and do not fight parallel test runs.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
