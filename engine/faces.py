"""Face front-end: upload → one chosen face → ArcFace vector, aligned crop, EVA input.

PULID_SPEC §1. One detector runs once; the chosen face's own five keypoints feed both ArcFace
(insightface's 112 px ``norm_crop``) and the 512 px FFHQ alignment, so the embedding and the
crop always show the same person. Backends:

* :meth:`FaceAnalyzer.from_folder`: insightface antelopev2 (SCRFD-10G + glintr100), the
  production path; when the SCRFD file is absent it falls back to the Haar detector.
* :meth:`FaceAnalyzer.haar`: OpenCV Haar cascades (no download) with any ArcFace ONNX;
  ``quality_note`` says it is the lower-quality fallback.
* :meth:`FaceAnalyzer.tiny`: tiny seeded ONNX files run by insightface's own classes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch

from engine import faces_models as fm
from engine.faces_choice import (
    CROP_MARGIN,
    MIN_FACE_PX,
    BadCropError,
    BadFaceIndexError,
    FaceError,
    FaceTooSmallError,
    MultipleFacesError,
    NoFaceError,
    PixelBox,
    choose_face,
    crop_box,
    draw_faces,
    preview_png,
)
from engine.faces_models import (
    ARCFACE_PATH,
    BISENET_FILE,
    FACE_MODEL_FILES,
    SCRFD_PATH,
    MissingModelError,
    ensure_face_models,
    missing_face_models,
)
from engine.images import MAX_PIXELS, MAX_SIDE, decode_upload, png_bytes, thumbnail
from engine.parsing import FaceParser, eva_preprocess, to_tensor01, white_gray_composite

log = logging.getLogger(__name__)

__all__ = [
    "ARCFACE_PATH", "BISENET_FILE", "FACE_MODEL_FILES", "FFHQ_TEMPLATE", "SCRFD_PATH",
    "BadCropError", "BadFaceIndexError", "DetectedFace", "FaceAnalyzer", "FaceError",
    "FaceTooSmallError", "MissingModelError", "MultipleFacesError", "NoFaceError", "PixelBox",
    "PreparedFace", "align_face", "alignment_matrix", "choose_face", "crop_box", "draw_faces",
    "encode_face", "ensure_face_models", "find_face", "missing_face_models", "prepare_reference",
    "preview_png", "thumbnail_png",
]  # fmt: skip

#: FFHQ 512 px template (facexlib FaceRestoreHelper): eyes, nose, mouth corners, image-left first.
FFHQ_TEMPLATE = np.array(
    [[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
     [201.26117, 371.41043], [313.08905, 371.15118]],
)  # fmt: skip
FFHQ_SIZE = 512
#: The official border gray is (135, 133, 132) on a BGR image, i.e. (132, 133, 135) in RGB.
FFHQ_BORDER_BGR = (135, 133, 132)
FFHQ_BORDER_RGB = FFHQ_BORDER_BGR[::-1]
HAAR_NOTE = "lower quality: Haar fallback detector, keypoints estimated from the eyes"
TINY_NOTE = "tiny preset: random-weight face models, embeddings carry no identity"
TINY_DET_SIZE = 160


@dataclass(frozen=True, eq=False)
class DetectedFace:
    """One face in image pixels: box x1y1x2y2, 5 keypoints, score, raw ArcFace vector."""

    bbox: np.ndarray
    kps: np.ndarray
    det_score: float
    embedding: np.ndarray | None = field(default=None, repr=False)


class FaceAnalyzer:
    """A detector plus an ArcFace recogniser; ``detect(rgb)`` → faces sorted left → right."""

    def __init__(self, detector, recognizer, *, quality_note: str | None = None) -> None:
        self.detector = detector
        self.recognizer = fm.load_recognizer(recognizer)
        self.quality_note = quality_note

    @classmethod
    def from_folder(
        cls,
        model_dir: Path,
        *,
        providers: tuple[str | tuple[str, dict], ...] = ("CPUExecutionProvider",),
        det_size: int = 640,
        haar_fallback: bool = True,
        quality_note: str | None = None,
    ) -> FaceAnalyzer:
        """antelopev2 from ``model_dir``; no SCRFD file → Haar (when allowed, reported).

        ``providers`` are ONNX Runtime's: names or (name, options), e.g.
        ``("CUDAExecutionProvider", {"device_id": 1})``.
        """
        arcface = fm.require_file(model_dir, ARCFACE_PATH)
        recognizer = fm.load_onnx(arcface, providers)
        scrfd = Path(model_dir) / SCRFD_PATH
        if not scrfd.is_file() and haar_fallback:
            log.warning("%s missing: using the Haar fallback detector", scrfd)
            return cls.haar(recognizer, quality_note=quality_note)
        detector = fm.ScrfdDetector(
            fm.load_onnx(fm.require_file(model_dir, SCRFD_PATH), providers), det_size
        )
        return cls(detector, recognizer, quality_note=quality_note)

    @classmethod
    def haar(cls, recognizer: object, *, quality_note: str | None = None) -> FaceAnalyzer:
        """Haar detector with ``recognizer`` (an ArcFaceONNX or a path to an ArcFace ONNX)."""
        from engine.faces_haar import HaarDetector

        note = "; ".join(n for n in (HAAR_NOTE, quality_note) if n)
        return cls(HaarDetector(), recognizer, quality_note=note)

    @classmethod
    def tiny(
        cls, workdir: Path, seed: int = 0, *, detector: Literal["scrfd", "haar"] = "scrfd"
    ) -> FaceAnalyzer:
        """Tiny seeded SCRFD + ArcFace ONNX files written under ``workdir``/antelopev2."""
        from engine.tinyfaces import write_tiny_arcface, write_tiny_scrfd

        write_tiny_arcface(Path(workdir) / ARCFACE_PATH, seed)
        if detector == "haar":
            return cls.haar(Path(workdir) / ARCFACE_PATH, quality_note=TINY_NOTE)
        write_tiny_scrfd(Path(workdir) / SCRFD_PATH, seed)
        return cls.from_folder(workdir, det_size=TINY_DET_SIZE, quality_note=TINY_NOTE)

    @cached_property
    def fingerprint(self) -> str:
        """Names the recogniser weights (``file:sha256``), e.g. for identity records."""
        return fm.file_fingerprint(Path(self.recognizer.model_file))

    def detect(
        self, rgb: np.ndarray, *, region: tuple[int, int, int, int] | None = None
    ) -> list[DetectedFace]:
        """Every face (in ``region`` x1, y1, x2, y2 if given), left → right, with embeddings."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"rgb must be an HxWx3 uint8 array, got {rgb.shape} {rgb.dtype}")
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        x1, y1, x2, y2 = (int(v) for v in region or (0, 0, rgb.shape[1], rgb.shape[0]))
        if not (0 <= x1 < x2 <= rgb.shape[1] and 0 <= y1 < y2 <= rgb.shape[0]):
            raise ValueError(f"region {region} is empty or outside the {rgb.shape[:2]} image")
        offset = np.array([x1, y1], np.float32)
        faces = []
        for bbox, kps, score in self.detector.detect(np.ascontiguousarray(bgr[y1:y2, x1:x2])):
            kps = np.asarray(kps, np.float32) + offset
            box = np.asarray(bbox, np.float32) + np.tile(offset, 2)
            vec = fm.arcface_embedding(self.recognizer, bgr, kps)
            faces.append(DetectedFace(box, kps, float(score), vec))
        faces.sort(key=lambda f: (float(f.bbox[0] + f.bbox[2]), float(f.bbox[1] + f.bbox[3])))
        log.debug("%s: %d face(s)", self.detector.name, len(faces))
        return faces


def alignment_matrix(kps: np.ndarray) -> np.ndarray:
    """2×3 similarity taking the 5 keypoints onto the FFHQ template (LMEDS, as facexlib)."""
    src = np.asarray(kps, np.float64).reshape(5, 2)
    matrix, _ = cv2.estimateAffinePartial2D(src, FFHQ_TEMPLATE, method=cv2.LMEDS)
    if matrix is None:
        raise FaceError("The face could not be aligned; try another photo.")
    return matrix


def align_face(rgb: np.ndarray, kps: np.ndarray) -> np.ndarray:
    """The 512×512 FFHQ-aligned RGB crop, gray border (official BGR (135, 133, 132))."""
    return cv2.warpAffine(
        np.ascontiguousarray(rgb),
        alignment_matrix(kps),
        (FFHQ_SIZE, FFHQ_SIZE),
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=FFHQ_BORDER_RGB,
    )


def thumbnail_png(aligned: np.ndarray, size: int = 128) -> bytes:
    """A small PNG of the aligned face."""
    return png_bytes(thumbnail(aligned, size))


@dataclass(frozen=True, eq=False)
class PreparedFace:
    """Everything the identity encoder needs from one reference photo."""

    arcface: np.ndarray  # (512,) float32, raw (not normalised)
    eva_input: torch.Tensor  # (1, 3, eva_size, eva_size), CLIP-normalised
    aligned: np.ndarray  # (512, 512, 3) uint8 RGB
    thumbnail_png: bytes
    face: DetectedFace
    quality_note: str | None
    composite: torch.Tensor = field(repr=False)  # (1, 3, 512, 512) white/gray, in [0, 1]


def prepare_reference(
    data: bytes,
    analyzer: FaceAnalyzer,
    parser: FaceParser,
    *,
    crop: object | None = None,
    crop_relative: bool = False,
    index: int | None = None,
    eva_size: int = 336,
    min_face_px: float = MIN_FACE_PX,
    antialias: bool = False,
    max_pixels: int = MAX_PIXELS,
    max_side: int = MAX_SIDE,
) -> PreparedFace:
    """Decode, detect (inside the crop if given), choose, align, parse, preprocess.

    Pixel crops are in pixels of the upload (EXIF orientation applied); ``index`` is 1-based.
    Raises ImageError or a FaceError subclass, each with a one-line ``user_message``.
    """
    decoded = decode_upload(data, max_pixels=max_pixels, max_side=max_side)
    rgb = decoded.rgb
    face = find_face(
        rgb,
        analyzer,
        crop=crop,
        crop_relative=crop_relative,
        index=index,
        scale=decoded.scale,
        min_face_px=min_face_px,
    )
    return encode_face(
        rgb,
        face,
        parser,
        eva_size=eva_size,
        antialias=antialias,
        quality_note=analyzer.quality_note,
    )


def find_face(
    rgb: np.ndarray,
    analyzer: FaceAnalyzer,
    *,
    crop: object | None = None,
    crop_relative: bool = False,
    index: int | None = None,
    scale: float = 1.0,
    min_face_px: float = MIN_FACE_PX,
) -> DetectedFace:
    """Detect (only around the crop box, if any) and choose one face.

    ``scale`` converts pixel crops from upload pixels to ``rgb``'s pixels.
    """
    size = (rgb.shape[1], rgb.shape[0])
    box = None if crop is None else crop_box(crop, size, relative=crop_relative, scale=scale)
    faces = analyzer.detect(rgb, region=box.expanded(CROP_MARGIN, size) if box else None)
    return choose_face(faces, size, crop=box, index=index, min_face_px=min_face_px, rgb=rgb)


def encode_face(
    rgb: np.ndarray,
    face: DetectedFace,
    parser: FaceParser,
    *,
    eva_size: int = 336,
    antialias: bool = False,
    quality_note: str | None = None,
) -> PreparedFace:
    """Align ``face``, parse it and build the EVA input."""
    if face.embedding is None:
        raise ValueError("face.embedding is None: detect faces with FaceAnalyzer.detect")
    aligned = align_face(rgb, face.kps)
    composite = white_gray_composite(to_tensor01(aligned, parser.device), parser.labels(aligned))
    return PreparedFace(
        arcface=np.asarray(face.embedding, np.float32),
        eva_input=eva_preprocess(composite, eva_size, antialias=antialias),
        aligned=aligned,
        thumbnail_png=thumbnail_png(aligned),
        face=face,
        quality_note=quality_note,
        composite=composite,
    )
