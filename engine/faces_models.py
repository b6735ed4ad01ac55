"""Face model files: official names and layout, presence checks, insightface loaders.

Layout inside the configured model folder (what ``pulid-bot models download`` writes)::

    antelopev2/scrfd_10g_bnkps.onnx   SCRFD-10G detector with 5 keypoints
    antelopev2/glintr100.onnx         ArcFace ResNet-100 (Glint360K), 112 px → 512
    parsing_bisenet.pth               facexlib BiSeNet, 19 CelebAMask-HQ classes
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

ANTELOPEV2_DIR = "antelopev2"
SCRFD_FILE = "scrfd_10g_bnkps.onnx"
ARCFACE_FILE = "glintr100.onnx"
BISENET_FILE = "parsing_bisenet.pth"
SCRFD_PATH = f"{ANTELOPEV2_DIR}/{SCRFD_FILE}"
ARCFACE_PATH = f"{ANTELOPEV2_DIR}/{ARCFACE_FILE}"
#: Every face file, relative to the model folder.
FACE_MODEL_FILES = (SCRFD_PATH, ARCFACE_PATH, BISENET_FILE)
#: The ArcFace 112 px template (insightface ``arcface_dst``), image-left eye first.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
     [70.7299, 92.2041]],
    dtype=np.float32,
)  # fmt: skip
DET_THRESHOLD = 0.5
#: SCRFD input sizes tried in turn until a face appears (ComfyUI nodes' retry, PULID_SPEC §1.2).
DET_SIZE_STEP = 64


class MissingModelError(FileNotFoundError):
    """A model file is absent; ``user_message`` names it and the fix."""

    def __init__(self, relative: str, model_dir: Path) -> None:
        self.relative = relative
        self.user_message = (
            f"Model file {relative} is missing from {model_dir}; run `pulid-bot models download`."
        )
        super().__init__(self.user_message)


def require_file(model_dir: Path, relative: str) -> Path:
    """The path of ``relative`` inside ``model_dir``, or :class:`MissingModelError`."""
    path = Path(model_dir) / relative
    if not path.is_file():
        raise MissingModelError(relative, Path(model_dir))
    return path


def missing_face_models(model_dir: Path) -> list[str]:
    """The face files (relative names) absent from ``model_dir``."""
    return [rel for rel in FACE_MODEL_FILES if not (Path(model_dir) / rel).is_file()]


def ensure_face_models(model_dir: Path) -> None:
    """Raise :class:`MissingModelError` for the first face file absent from ``model_dir``."""
    for rel in FACE_MODEL_FILES:
        require_file(model_dir, rel)


def file_fingerprint(path: Path, length: int = 16) -> str:
    """``name:sha256-prefix`` of a weight file, to tell embeddings of different weights apart."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return f"{Path(path).name}:{digest.hexdigest()[:length]}"


def load_onnx(path: Path, providers: Sequence[str | tuple[str, dict]]):  # -> SCRFD | ArcFaceONNX
    """Load an ONNX face model through insightface's own router (SCRFD or ArcFaceONNX).

    ``providers`` go to the ONNX Runtime session as given: names or (name, options) pairs.
    """
    from insightface.model_zoo import get_model

    model = get_model(str(path), providers=list(providers))
    if model is None:
        raise ValueError(f"{path} is not a face detector or recogniser insightface can run")
    return model


def load_recognizer(
    model: object, providers: Sequence[str | tuple[str, dict]] = ("CPUExecutionProvider",)
):
    """An ArcFaceONNX from a loaded one or from a path to an ``.onnx`` file."""
    from insightface.model_zoo import ArcFaceONNX

    loaded = load_onnx(Path(model), providers) if isinstance(model, (str, Path)) else model
    if not isinstance(loaded, ArcFaceONNX):
        raise ValueError(f"{model} is not an ArcFace recogniser (N, 3, 112, 112) → (N, 512)")
    return loaded


def arcface_embedding(recognizer, bgr: np.ndarray, kps: np.ndarray) -> np.ndarray:
    """Raw (un-normalised) ArcFace vector of the face at ``kps``: insightface's ``norm_crop``."""
    from insightface.utils import face_align

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # skimage's estimate() deprecation
        crop = face_align.norm_crop(bgr, landmark=kps, image_size=recognizer.input_size[0])
    return recognizer.get_feat(crop).reshape(-1).astype(np.float32)


class ScrfdDetector:
    """insightface SCRFD at ``det_size``, retried at smaller sizes until a face appears."""

    name = "scrfd"

    def __init__(self, model, det_size: int = 640, threshold: float = DET_THRESHOLD) -> None:
        from insightface.model_zoo import SCRFD

        if not isinstance(model, SCRFD) or not model.use_kps:
            raise ValueError("the detector must be an SCRFD model with 5 keypoints")
        if det_size % 32 or det_size < 64:
            raise ValueError(f"det_size must be a multiple of 32 and ≥ 64, got {det_size}")
        self.model = model
        self.threshold = threshold
        self.sizes = list(range(det_size, det_size // 2 - 1, -DET_SIZE_STEP))
        model.prepare(0, input_size=(det_size, det_size), det_thresh=threshold)

    def detect(self, bgr: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """(bbox x1y1x2y2, kps (5, 2), score) for every face found."""
        for size in self.sizes:
            det, kpss = self.model.detect(bgr, input_size=(size, size), det_thresh=self.threshold)
            if len(det):
                log.debug("scrfd found %d face(s) at %d px", len(det), size)
                return [(d[:4], k, float(d[4])) for d, k in zip(det, kpss, strict=True)]
        return []
