"""The insightface path end to end on tiny ONNX files; model files, layout and errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from engine.faces import (
    HAAR_NOTE,
    TINY_DET_SIZE,
    TINY_NOTE,
    FaceAnalyzer,
    MissingModelError,
    align_face,
    ensure_face_models,
    missing_face_models,
    prepare_reference,
)
from engine.faces_models import (
    ANTELOPEV2_DIR,
    ARCFACE_PATH,
    ARCFACE_TEMPLATE,
    BISENET_FILE,
    SCRFD_PATH,
)


def test_tiny_scrfd_has_the_scrfd_10g_bnkps_interface(tiny_face_dir: Path):
    from insightface.model_zoo import SCRFD, get_model

    graph = onnx.load(str(tiny_face_dir / SCRFD_PATH)).graph
    widths = [o.type.tensor_type.shape.dim[1].dim_value for o in graph.output]
    assert widths == [1, 1, 1, 4, 4, 4, 10, 10, 10]
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[:2]] == [1, 3]
    model = get_model(str(tiny_face_dir / SCRFD_PATH), providers=["CPUExecutionProvider"])
    assert isinstance(model, SCRFD)
    assert model.use_kps and model.fmc == 3 and model._num_anchors == 2
    assert model._feat_stride_fpn == [8, 16, 32] and not model.batched


def test_tiny_arcface_has_the_glintr100_interface(tiny_face_dir: Path):
    from insightface.model_zoo import ArcFaceONNX, get_model

    model = get_model(str(tiny_face_dir / ARCFACE_PATH), providers=["CPUExecutionProvider"])
    assert isinstance(model, ArcFaceONNX)
    assert model.input_size == (112, 112) and (model.input_mean, model.input_std) == (127.5, 127.5)
    feats = model.get_feat([np.zeros((112, 112, 3), np.uint8)] * 2)
    assert feats.shape == (2, 512)


def test_tiny_files_are_tiny_and_seeded(tiny_face_dir: Path, tmp_path: Path):
    from engine.tinyfaces import write_tiny_scrfd

    assert (tiny_face_dir / SCRFD_PATH).stat().st_size < 100_000
    assert (tiny_face_dir / ARCFACE_PATH).stat().st_size < 1_000_000
    again = write_tiny_scrfd(tmp_path / "a.onnx", seed=0).read_bytes()
    assert again == (tiny_face_dir / SCRFD_PATH).read_bytes()
    assert write_tiny_scrfd(tmp_path / "b.onnx", seed=1).read_bytes() != again


@pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")
def test_detection_matches_insightface_face_analysis(tiny_analyzer, tiny_face_dir, astronaut_rgb):
    from insightface.app import FaceAnalysis

    app = FaceAnalysis(name=str(tiny_face_dir / ANTELOPEV2_DIR), providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(TINY_DET_SIZE, TINY_DET_SIZE))
    (theirs,) = app.get(np.ascontiguousarray(astronaut_rgb[:, :, ::-1]))
    (ours,) = tiny_analyzer.detect(astronaut_rgb)
    np.testing.assert_allclose(ours.bbox, theirs.bbox, atol=1e-4)
    np.testing.assert_allclose(ours.kps, theirs.kps, atol=1e-4)
    assert ours.det_score == pytest.approx(float(theirs.det_score))
    np.testing.assert_allclose(ours.embedding, theirs.embedding, rtol=1e-5, atol=1e-5)


def test_keypoints_feed_both_arcface_and_alignment(
    tiny_analyzer, tiny_parser, astronaut_png: bytes, astronaut_rgb: np.ndarray
):
    prepared = prepare_reference(astronaut_png, tiny_analyzer, tiny_parser, eva_size=224)
    face = prepared.face
    assert prepared.eva_input.shape == (1, 3, 224, 224)
    assert prepared.arcface.shape == (512,) and prepared.arcface.dtype == np.float32
    assert abs(np.linalg.norm(prepared.arcface) - 1.0) > 1e-3, "raw, not normalised"
    assert prepared.quality_note == TINY_NOTE
    np.testing.assert_array_equal(prepared.aligned, align_face(astronaut_rgb, face.kps))
    # the tiny detector puts its keypoints on the ArcFace template, scaled to its 80 px box
    rel = (face.kps - face.kps.mean(0)) / np.ptp(face.kps[:, 0])
    tmpl = (ARCFACE_TEMPLATE - ARCFACE_TEMPLATE.mean(0)) / np.ptp(ARCFACE_TEMPLATE[:, 0])
    assert np.abs(rel - tmpl).max() < 0.3


def test_crop_region_runs_detection_there(tiny_analyzer, astronaut_rgb: np.ndarray):
    faces = tiny_analyzer.detect(astronaut_rgb, region=(256, 256, 512, 512))
    assert len(faces) == 1
    x1, y1, x2, y2 = faces[0].bbox
    assert 256 - 60 <= (x1 + x2) / 2 <= 512 and 256 - 60 <= (y1 + y2) / 2 <= 512


def test_tiny_constructor(tmp_path: Path, astronaut_rgb: np.ndarray):
    analyzer = FaceAnalyzer.tiny(tmp_path, seed=3)
    assert (tmp_path / SCRFD_PATH).is_file() and analyzer.quality_note == TINY_NOTE
    assert len(analyzer.detect(astronaut_rgb)) == 1
    assert analyzer.fingerprint.startswith("glintr100.onnx:")
    haar = FaceAnalyzer.tiny(tmp_path, seed=3, detector="haar")
    assert haar.detector.name == "haar" and HAAR_NOTE in haar.quality_note


def test_missing_scrfd_falls_back_to_haar(tiny_face_dir: Path, tmp_path: Path):
    (tmp_path / ARCFACE_PATH).parent.mkdir()
    shutil.copy(tiny_face_dir / ARCFACE_PATH, tmp_path / ARCFACE_PATH)
    analyzer = FaceAnalyzer.from_folder(tmp_path)
    assert analyzer.detector.name == "haar" and analyzer.quality_note == HAAR_NOTE
    with pytest.raises(MissingModelError, match="scrfd_10g_bnkps.onnx"):
        FaceAnalyzer.from_folder(tmp_path, haar_fallback=False)


def test_missing_recogniser_is_a_clear_error(tmp_path: Path):
    with pytest.raises(MissingModelError) as info:
        FaceAnalyzer.from_folder(tmp_path)
    msg = info.value.user_message
    assert "antelopev2/glintr100.onnx" in msg and "`pulid-bot models download`" in msg
    assert str(tmp_path) in msg and "\n" not in msg


def test_ensure_face_models(tiny_face_dir: Path, tmp_path: Path):
    assert missing_face_models(tiny_face_dir) == [BISENET_FILE]
    with pytest.raises(MissingModelError, match="parsing_bisenet.pth"):
        ensure_face_models(tiny_face_dir)
    for rel in (SCRFD_PATH, ARCFACE_PATH, BISENET_FILE):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert ensure_face_models(tmp_path) is None and missing_face_models(tmp_path) == []


def test_arcface_template_is_insightfaces():
    from insightface.utils.face_align import arcface_dst

    np.testing.assert_array_equal(ARCFACE_TEMPLATE, arcface_dst)
