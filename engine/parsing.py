"""Face parsing and the EVA input: BiSeNet labels → white/gray composite → 336 px CLIP tensor.

PULID_SPEC §1.4–1.5. BiSeNet (facexlib's class, 19 CelebAMask-HQ labels) sees the aligned crop
as RGB in [0, 1] with ImageNet mean/std; the argmax of its first output is the label map.
Background labels (background, ears, earring, neck, necklace, cloth, hat) become white; the rest
becomes grayscale ``0.299 R + 0.587 G + 0.114 B`` of the un-normalised crop, on three channels.

EVA preprocessing resizes the 512 px composite to 336 px with torchvision's tensor bicubic resize,
then normalises with OpenAI CLIP mean/std. **Antialias:** the flag is explicit and defaults to
False. The official bf16 environment (torchvision 0.15.2) does not antialias tensor resizes, the
fp8 one (0.19.1) does; the weights were released with the first, so False reproduces the primary
official input. Pass ``antialias=True`` to match the fp8 environment. Tests pin both.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from engine.faces_models import MissingModelError

log = logging.getLogger(__name__)

NUM_LABELS = 19
#: CelebAMask-HQ labels painted white: background, l/r ear, earring, neck, necklace, cloth, hat.
BACKGROUND_LABELS = (0, 7, 8, 9, 14, 15, 16, 18)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
GRAY_WEIGHTS = (0.299, 0.587, 0.114)
EVA_SIZE = 336


def _channels(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


def to_tensor01(aligned_rgb: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """HxWx3 uint8 RGB → (1, 3, H, W) float32 in [0, 1]."""
    arr = np.ascontiguousarray(aligned_rgb, dtype=np.uint8)
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).to(device, torch.float32) / 255.0


class FaceParser:
    """BiSeNet face parsing; ``labels(aligned)`` → (H, W) int64 label map."""

    def __init__(self, net: torch.nn.Module, *, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.net = net.eval().to(self.device)

    @classmethod
    def from_file(cls, path: Path, *, device: str | torch.device = "cpu") -> FaceParser:
        """The official ``parsing_bisenet.pth`` (a plain state dict), loaded strictly."""
        from facexlib.parsing.bisenet import BiSeNet

        path = Path(path)
        if not path.is_file():
            raise MissingModelError(path.name, path.parent)
        net = BiSeNet(num_class=NUM_LABELS)
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        log.info("loaded face parser %s", path)
        return cls(net, device=device)

    @classmethod
    def tiny(cls, seed: int = 0, *, device: str | torch.device = "cpu") -> FaceParser:
        """facexlib's BiSeNet with seeded random weights (tests and the ``tiny`` preset)."""
        from engine.tinyfaces import tiny_bisenet

        return cls(tiny_bisenet(seed), device=device)

    @torch.inference_mode()
    def labels(self, aligned_rgb: np.ndarray) -> np.ndarray:
        """Label map (H, W) int64 of an aligned RGB uint8 crop."""
        x = to_tensor01(aligned_rgb, self.device)
        x = (x - _channels(IMAGENET_MEAN, x)) / _channels(IMAGENET_STD, x)
        logits = self.net(x)[0]
        return logits.argmax(dim=1)[0].cpu().numpy().astype(np.int64)


def background_mask(labels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(1, 1, H, W) bool: True where the label is a background label."""
    lab = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels)
    lab = lab.reshape(1, 1, *lab.shape[-2:])
    return torch.isin(lab, torch.tensor(BACKGROUND_LABELS, dtype=lab.dtype, device=lab.device))


def white_gray_composite(
    aligned_rgb_float01: torch.Tensor, labels: np.ndarray | torch.Tensor
) -> torch.Tensor:
    """Background labels → 1.0 (white); the rest → grayscale of the crop on 3 channels."""
    img = aligned_rgb_float01
    w = GRAY_WEIGHTS
    gray = (w[0] * img[:, 0:1] + w[1] * img[:, 1:2] + w[2] * img[:, 2:3]).repeat(1, 3, 1, 1)
    bg = background_mask(labels).to(img.device)
    return torch.where(bg, torch.ones_like(img), gray)


def eva_preprocess(
    composite: torch.Tensor, size: int = EVA_SIZE, antialias: bool = False
) -> torch.Tensor:
    """Bicubic resize to ``size`` (explicit ``antialias``), then CLIP mean/std normalisation."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as tvf

    x = tvf.resize(composite, [size, size], InterpolationMode.BICUBIC, antialias=antialias)
    return (x - _channels(CLIP_MEAN, x)) / _channels(CLIP_STD, x)
