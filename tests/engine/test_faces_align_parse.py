"""FFHQ alignment, BiSeNet parsing, the white/gray composite and EVA preprocessing."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.faces import FFHQ_BORDER_RGB, FFHQ_TEMPLATE, align_face, alignment_matrix
from engine.faces_models import MissingModelError
from engine.parsing import (
    BACKGROUND_LABELS,
    CLIP_MEAN,
    CLIP_STD,
    FaceParser,
    eva_preprocess,
    white_gray_composite,
)

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]


def _similarity(scale: float, degrees: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array(
        [[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]]
    )


def _dots(size: tuple[int, int], points: np.ndarray) -> np.ndarray:
    img = np.zeros((size[1], size[0], 3), np.uint8)
    for (x, y), colour in zip(points, COLOURS, strict=True):
        centre = (round(x * 16), round(y * 16))
        cv2.circle(img, centre, 4 * 16, colour, -1, lineType=cv2.LINE_AA, shift=4)
    return img


def _centroid(img: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """Intensity-weighted centre of the pixels of one pure colour."""
    off = [c for c in range(3) if colour[c] == 0]
    on = [c for c in range(3) if colour[c] == 255]
    weight = img[:, :, on].min(axis=2).astype(float) - img[:, :, off].max(axis=2)
    weight = np.clip(weight, 0, None)
    ys, xs = np.indices(weight.shape)
    return np.array([(xs * weight).sum(), (ys * weight).sum()]) / weight.sum()


def test_alignment_puts_the_five_landmarks_on_the_template():
    to_image = _similarity(0.55, 23.0, 300.0, 180.0)
    kps = FFHQ_TEMPLATE @ to_image[:, :2].T + to_image[:, 2]
    np.testing.assert_allclose(
        (alignment_matrix(kps) @ np.c_[kps, np.ones(5)].T).T, FFHQ_TEMPLATE, atol=1e-3
    )
    aligned = align_face(_dots((800, 600), kps), kps)
    assert aligned.shape == (512, 512, 3) and aligned.dtype == np.uint8
    for point, colour in zip(FFHQ_TEMPLATE, COLOURS, strict=True):
        assert np.linalg.norm(_centroid(aligned, colour) - point) < 1.0


def test_border_is_the_official_gray():
    kps = FFHQ_TEMPLATE * 0.3 + 130  # a small face at the corner: much of the crop is outside
    rgb = np.full((200, 200, 3), 255, np.uint8)
    aligned = align_face(rgb, kps)
    assert tuple(aligned[-1, -1]) == FFHQ_BORDER_RGB == (132, 133, 135)
    assert tuple(aligned[0, 0]) == (255, 255, 255)
    official = cv2.warpAffine(
        rgb[:, :, ::-1],
        alignment_matrix(kps),
        (512, 512),
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(135, 133, 132),
    )
    np.testing.assert_array_equal(aligned, official[:, :, ::-1])


def test_real_keypoints_align_near_the_template(haar_analyzer, astronaut_rgb: np.ndarray):
    (face,) = haar_analyzer.detect(astronaut_rgb)
    m = alignment_matrix(face.kps)
    moved = face.kps @ m[:, :2].T + m[:, 2]
    assert np.abs(moved - FFHQ_TEMPLATE).max() < 12  # five points, one similarity: near


def _labels_all_classes() -> np.ndarray:
    labels = np.repeat(np.arange(19), 512 * 512 // 19 + 1)[: 512 * 512]
    return np.random.default_rng(0).permutation(labels).reshape(512, 512)


def test_composite_is_white_exactly_on_background_labels():
    labels = _labels_all_classes()
    img = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    out = white_gray_composite(img, labels)
    bg = np.isin(labels, BACKGROUND_LABELS)
    assert bg.any() and (~bg).any()
    gray = 0.299 * img[0, 0] + 0.587 * img[0, 1] + 0.114 * img[0, 2]
    for c in range(3):
        channel = out[0, c].numpy()
        assert (channel[bg] == 1.0).all()
        np.testing.assert_allclose(channel[~bg], gray.numpy()[~bg], rtol=0, atol=1e-6)
        assert (channel[~bg] < 1.0).all()  # rand < 1 keeps face pixels off-white
    assert torch.equal(out, white_gray_composite(img, torch.from_numpy(labels)))


def test_background_labels_are_the_official_set():
    assert sorted(BACKGROUND_LABELS) == [0, 7, 8, 9, 14, 15, 16, 18]


def test_eva_preprocess_shape_and_clip_normalisation():
    white = torch.ones(1, 3, 512, 512)
    out = eva_preprocess(white)
    assert out.shape == (1, 3, 336, 336)
    for c in range(3):
        expected = (1 - CLIP_MEAN[c]) / CLIP_STD[c]
        torch.testing.assert_close(out[0, c], torch.full((336, 336), expected), atol=1e-5, rtol=0)
    assert eva_preprocess(white, size=224).shape == (1, 3, 224, 224)


def test_eva_antialias_flag_is_explicit_and_false_by_default():
    checker = ((torch.arange(512)[:, None] + torch.arange(512)[None]) % 2).float()
    img = checker.expand(1, 3, 512, 512).contiguous()
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    plain = F.interpolate(img, size=(336, 336), mode="bicubic", align_corners=False)
    smooth = F.interpolate(
        img, size=(336, 336), mode="bicubic", align_corners=False, antialias=True
    )
    torch.testing.assert_close(eva_preprocess(img), (plain - mean) / std)
    torch.testing.assert_close(eva_preprocess(img, antialias=True), (smooth - mean) / std)
    assert (plain - smooth).abs().max() > 0.1  # the flag matters on fine detail


def test_tiny_parser_labels(tiny_parser: FaceParser, astronaut_rgb: np.ndarray):
    aligned = cv2.resize(astronaut_rgb, (512, 512))
    labels = tiny_parser.labels(aligned)
    assert labels.shape == (512, 512) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < 19
    same = FaceParser.tiny(seed=0).net.state_dict()
    other = FaceParser.tiny(seed=1).net.state_dict()
    key = "cp.resnet.conv1.weight"
    assert torch.equal(same[key], tiny_parser.net.state_dict()[key])
    assert not torch.equal(other[key], same[key])


def test_parser_from_file_loads_the_official_layout(tmp_path, tiny_parser):
    path = tmp_path / "parsing_bisenet.pth"
    torch.save(tiny_parser.net.state_dict(), path)  # the official file is a plain state dict
    loaded = FaceParser.from_file(path)
    theirs = tiny_parser.net.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in loaded.net.state_dict().items())
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.net(x)[0], tiny_parser.net(x)[0])


def test_parser_from_missing_file(tmp_path):
    with pytest.raises(MissingModelError, match="parsing_bisenet.pth.*pulid-bot models download"):
        FaceParser.from_file(tmp_path / "parsing_bisenet.pth")
