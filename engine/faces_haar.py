"""Offline face detector from OpenCV's bundled Haar cascades (face + eyes); no download.

Lower quality than SCRFD and reported as such. Faces are searched on a grayscale copy with its
long edge at ``work_side``, upright and rotated by ±20° (tilted heads). Each candidate is then
checked twice, which removes most false positives (hands, pictures, glasses on a table):

* a second, differently trained cascade (alt2) must put at least 15 raw windows on the
  candidate's upright crop (its *support*);
* the eye cascade must find at least one eye on a contrast-equalised patch of the face's upper
  part.

The five keypoints are estimated from the eyes: the ArcFace template is fitted to the two eye
centres by a similarity transform, which places the nose and mouth corners; with one eye found,
the other is mirrored across the face's axis. The score is support / (support + 20), × 0.85 with
a mirrored eye: a ranking, not a calibrated probability."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from engine.faces_models import ARCFACE_TEMPLATE

log = logging.getLogger(__name__)

FACE_CASCADE = "haarcascade_frontalface_default.xml"
CHECK_CASCADE = "haarcascade_frontalface_alt2.xml"
EYE_CASCADE = "haarcascade_eye.xml"
#: The eye patch: the upper 60 % of a face box, resampled to 200 × 120 px.
PATCH_W, PATCH_H = 200, 120
EXPECTED_EYES = np.array([[58.0, 74.0], [142.0, 74.0]])
EYE_REACH = 35.0  # a lone eye must lie this close (patch px) to where an eye belongs
#: The check crop: the face box plus a third on each side, upright, 120 × 120 px.
CHECK_SIZE, CHECK_FACE = 120, 72
MIN_SUPPORT = 15  # raw windows of the second cascade on the check crop
SUPPORT_HALF = 20.0  # support giving score 0.5
ONE_EYE_FACTOR = 0.85
NMS_IOU = 0.3


@dataclass(frozen=True)
class _Candidate:
    patch_to_image: np.ndarray  # 2×3: eye-patch pixels → image pixels
    size: float  # face box side in image pixels


def _cascade(name: str) -> cv2.CascadeClassifier:
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + name)
    if cascade.empty():
        raise RuntimeError(f"OpenCV's bundled cascade {name} could not be loaded")
    return cascade


def _homog(m: np.ndarray) -> np.ndarray:
    return np.vstack([m, [0.0, 0.0, 1.0]])


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return np.asarray(pts, np.float64) @ m[:, :2].T + m[:, 2]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def keypoints_from_eyes(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Five keypoints from two eye centres: the ArcFace template fitted by similarity."""
    t0, t1 = (complex(*p) for p in ARCFACE_TEMPLATE[:2].astype(np.float64))
    e0, e1 = complex(*left), complex(*right)
    z = (e1 - e0) / (t1 - t0)
    pts = [e0 + z * (complex(*p) - t0) for p in ARCFACE_TEMPLATE.astype(np.float64)]
    return np.array([[p.real, p.imag] for p in pts], np.float32)


class HaarDetector:
    """Face + eye Haar cascades; ``detect(bgr)`` like the SCRFD wrapper."""

    name = "haar"

    def __init__(
        self,
        *,
        work_side: int = 640,
        angles: tuple[float, ...] = (0.0, -20.0, 20.0),
        min_neighbors: int = 3,
        min_size: int = 24,
    ) -> None:
        self.face = _cascade(FACE_CASCADE)
        self.check = _cascade(CHECK_CASCADE)
        self.eye = _cascade(EYE_CASCADE)
        self.work_side = work_side
        self.angles = angles
        self.min_neighbors = min_neighbors
        self.min_size = min_size
        self.clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4))

    def detect(self, bgr: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """(bbox x1y1x2y2, kps (5, 2), score) for every face passing both checks."""
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        found = [f for c in self._candidates(gray) if (f := self._verify(gray, c)) is not None]
        found.sort(key=lambda f: -f[2])
        kept: list[tuple[np.ndarray, np.ndarray, float]] = []
        for face in found:
            if all(_iou(face[0], k[0]) < NMS_IOU for k in kept):
                kept.append(face)
        log.debug(
            "haar: %d candidate(s) with eyes, %d after overlap removal", len(found), len(kept)
        )
        return kept

    def _candidates(self, gray: np.ndarray) -> list[_Candidate]:
        scale = min(1.0, self.work_side / max(gray.shape))
        small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        small = cv2.equalizeHist(small)
        h, w = small.shape
        out = []
        for angle in self.angles:
            rot = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
            view = cv2.warpAffine(small, rot, (w, h)) if angle else small
            to_image = np.diag([1 / scale, 1 / scale, 1.0]) @ np.linalg.inv(_homog(rot))
            boxes = self.face.detectMultiScale(
                view, 1.1, self.min_neighbors, minSize=(self.min_size,) * 2
            )
            for x, y, a, _ in np.asarray(boxes, np.float64).reshape(-1, 4):
                k = a / PATCH_W  # patch px → view px
                patch_to_view = np.array([[k, 0, x], [0, k, y], [0, 0, 1.0]])
                out.append(_Candidate((to_image @ patch_to_view)[:2], a / scale))
        return out

    def _verify(self, gray: np.ndarray, cand: _Candidate):
        support = self._support(gray, cand)
        pair, both = self._eyes(gray, cand) if support >= MIN_SUPPORT else (None, False)
        if pair is None:
            return None
        left, right = _apply(cand.patch_to_image, pair)
        cx, cy = _apply(cand.patch_to_image, [[PATCH_W / 2, PATCH_W / 2]])[0]
        half = cand.size / 2
        bbox = np.array([cx - half, cy - half, cx + half, cy + half], np.float32)
        score = support / (support + SUPPORT_HALF) * (1.0 if both else ONE_EYE_FACTOR)
        return bbox, keypoints_from_eyes(left, right), float(score)

    def _support(self, gray: np.ndarray, cand: _Candidate) -> int:
        """How many raw windows a second, differently trained cascade puts on the face."""
        k = PATCH_W / CHECK_FACE
        margin = (CHECK_SIZE - CHECK_FACE) / 2
        crop_to_patch = np.array([[k, 0, -margin * k], [0, k, -margin * k], [0, 0, 1.0]])
        crop = self._warp(gray, cand.patch_to_image @ crop_to_patch, (CHECK_SIZE, CHECK_SIZE))
        lo, hi = int(CHECK_FACE * 0.7), int(CHECK_FACE * 1.5)
        hits = self.check.detectMultiScale(
            cv2.equalizeHist(crop), 1.05, 0, minSize=(lo, lo), maxSize=(hi, hi)
        )
        return len(hits)

    def _eyes(self, gray: np.ndarray, cand: _Candidate) -> tuple[np.ndarray | None, bool]:
        patch = self._warp(gray, cand.patch_to_image, (PATCH_W, PATCH_H))
        eyes = self.eye.detectMultiScale(
            self.clahe.apply(patch), 1.05, 3, minSize=(20, 20), maxSize=(70, 70)
        )
        return _pick_eyes(np.asarray(eyes, np.float64).reshape(-1, 4))

    @staticmethod
    def _warp(gray: np.ndarray, out_to_image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        return cv2.warpAffine(gray, out_to_image, size, flags=flags)


def _pick_eyes(eyes: np.ndarray) -> tuple[np.ndarray | None, bool]:
    """Left and right eye centres in patch pixels, and whether both were seen.

    The best plausible pair wins (distance 50–130 px, level within 0.3 of that distance, both
    near where eyes belong); failing that, the best lone eye far enough from the face's axis,
    mirrored across it.
    """
    centres = eyes[:, :2] + eyes[:, 2:] / 2
    dist = np.linalg.norm(centres[:, None, :] - EXPECTED_EYES[None], axis=2)  # (n, 2)
    best_pair, best_cost = None, np.inf
    for i, j in np.ndindex(len(centres), len(centres)):
        dx, dy = centres[j] - centres[i]
        ok = 50 <= dx <= 130 and abs(dy) <= 0.3 * dx and max(dist[i, 0], dist[j, 1]) <= EYE_REACH
        if ok and dist[i, 0] + dist[j, 1] < best_cost:
            best_pair, best_cost = np.stack([centres[i], centres[j]]), dist[i, 0] + dist[j, 1]
    if best_pair is not None:
        return best_pair, True
    lone = [
        (dist[i, side], i, side)
        for i in range(len(centres))
        for side in (0, 1)
        if dist[i, side] <= EYE_REACH and abs(centres[i, 0] - PATCH_W / 2) >= 25
    ]
    if not lone:
        return None, False
    _, i, side = min(lone)
    mirrored = np.array([PATCH_W - centres[i, 0], centres[i, 1]])
    pair = [centres[i], mirrored] if side == 0 else [mirrored, centres[i]]
    return np.stack(pair), False
