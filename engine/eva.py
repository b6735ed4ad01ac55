"""EVA02-CLIP-L-14-336 vision tower through timm (PULID_SPEC §1.5).

The tower is timm's :class:`timm.models.eva.Eva` built with the ``eva02_large_patch14_clip_336``
configuration (no pretrained download). Two checkpoint layouts load into it, both through timm's
own ``checkpoint_filter_fn``:

* the official EVA-CLIP file ``EVA02_CLIP_L_336_psz14_s6B.pt`` (a full CLIP: ``visual.*`` keys,
  ``q_bias``/``v_bias``, ``mlp.w1/w2/w3/ffn_ln``, ``attn.inner_attn_ln``; text keys are ignored);
* timm / open_clip checkpoints (``visual.trunk.*`` or bare timm keys).

The forward returns what PuLID needs: the L2-normalised pooled 768-d embedding (final norm, CLS,
head) and the token sequences *entering* blocks 4, 8, 12, 16, 20 (outputs of blocks 3, 7, 11, 15,
19), CLS included and without the final norm, taken with forward hooks.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.models.eva import Eva, checkpoint_filter_fn
from torch import nn

log = logging.getLogger(__name__)

#: Hidden-state indices PuLID reads (official: 0 < i <= 20, i % 4 == 0): index i is the sequence
#: entering 0-based block i, i.e. the output of block i - 1 (HF ``hidden_states[i]``).
HIDDEN_BLOCKS = (4, 8, 12, 16, 20)


class EvaWeightsError(ValueError):
    """An EVA checkpoint that is missing, unreadable or does not fit the tower."""


@dataclass(frozen=True)
class EvaConfig:
    """The timm Eva constructor arguments that differ between the real and the tiny tower."""

    img_size: int = 336
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    num_classes: int = 768
    ref_feat_shape: tuple[int, int] = (16, 16)

    def timm_kwargs(self) -> dict[str, object]:
        """All arguments of ``Eva(...)``: timm's ``eva02_large_patch14_clip_336`` recipe."""
        return dict(
            asdict(self),
            mlp_ratio=4 * 2 / 3,
            qkv_fused=False,
            swiglu_mlp=True,
            scale_mlp=True,
            scale_attn_inner=True,
            use_rot_pos_emb=True,
            global_pool="token",
        )


#: EVA02-CLIP-L-14-336 exactly as timm's ``eva02_large_patch14_clip_336``.
EVA02_L_336 = EvaConfig()
#: Tiny tower for tests: 56 px, 16 patches + CLS, width 32, 20 blocks (enough for index 20).
EVA_TINY = EvaConfig(
    img_size=56, patch_size=14, embed_dim=32, depth=20, num_heads=4, ref_feat_shape=(4, 4)
)


def build_eva(config: EvaConfig = EVA02_L_336) -> Eva:
    """A randomly initialised timm Eva tower (load weights with :func:`load_eva_weights`)."""
    if config.depth < max(HIDDEN_BLOCKS):
        raise ValueError(
            f"EVA depth {config.depth} is too small: PuLID reads block inputs up to 20"
        )
    return Eva(**config.timm_kwargs()).eval()


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors``, ``.pt``, ``.pth`` or ``.bin`` file (no pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise EvaWeightsError(f"EVA weights not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise EvaWeightsError(f"EVA weights {path.name} are unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise EvaWeightsError(f"EVA weights {path.name} hold no state dict")
    return data


def convert_state_dict(state_dict: dict[str, torch.Tensor], model: Eva) -> dict[str, torch.Tensor]:
    """Official EVA-CLIP or open_clip/timm layout → timm Eva keys (timm's own filter)."""
    return checkpoint_filter_fn(state_dict, model)


def load_eva_weights(model: Eva, path: str | Path) -> Eva:
    """Load a checkpoint of either layout strictly into ``model``."""
    state = convert_state_dict(read_checkpoint(path), model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise EvaWeightsError(
            f"EVA weights {Path(path).name} do not fit the tower: {first}"
        ) from exc
    log.info("EVA weights loaded from %s (%d tensors)", Path(path).name, len(state))
    return model


class EvaTower(nn.Module):
    """Pooled, normalised CLIP embedding plus the five PuLID hidden states of one Eva tower."""

    def __init__(self, model: Eva, hidden_blocks: tuple[int, ...] = HIDDEN_BLOCKS) -> None:
        super().__init__()
        if max(hidden_blocks) > len(model.blocks):
            raise ValueError(f"tower has {len(model.blocks)} blocks, needs {max(hidden_blocks)}")
        self.model = model
        self.hidden_blocks = hidden_blocks

    @property
    def image_size(self) -> int:
        return int(self.model.patch_embed.img_size[0])

    @property
    def width(self) -> int:
        return int(self.model.embed_dim)

    @property
    def num_tokens(self) -> int:
        return int(self.model.patch_embed.num_patches) + 1

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, 3, S, S) CLIP-normalised pixels → ((B, 768) unit vectors, 5 × (B, T, width))."""
        captured: dict[int, torch.Tensor] = {}
        handles = [
            self.model.blocks[i - 1].register_forward_hook(_capture(captured, i))
            for i in self.hidden_blocks
        ]
        try:
            pooled = self.model(pixels)
        finally:
            for handle in handles:
                handle.remove()
        hidden = [captured[i] for i in self.hidden_blocks]
        return F.normalize(pooled, dim=-1), hidden


def _capture(store: dict[int, torch.Tensor], index: int):
    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        store[index] = output

    return hook
