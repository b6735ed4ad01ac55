"""Tiny FLUX components built in code: the real classes, tiny configurations, seeded weights.

Everything here is constructed without a download: the CLIP BPE and T5 unigram tokenizers come
from in-code vocabularies (the ``tokenizers`` library under transformers' tokenizer classes), the
models from tiny configs with weights drawn from a seeded generator. Images are noise; the
machinery (shapes, packing, schedule, hooks) is the real one. The face side (tiny ArcFace ONNX,
tiny BiSeNet, Haar detector) lives in ``engine.faces``/``engine.tinyfaces``.
"""

from __future__ import annotations

import contextlib
import string
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
)
from tokenizers import pre_tokenizers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from engine.eva import EVA_TINY, EvaConfig, build_eva

#: FLUX.1-dev's scheduler configuration (scheduler/scheduler_config.json), shared by the tiny set.
FLUX_SCHEDULER_CONFIG = dict(
    base_image_seq_len=256,
    base_shift=0.5,
    max_image_seq_len=4096,
    max_shift=1.15,
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
)


@dataclass(frozen=True)
class TinySpec:
    """Dimensions of the tiny set (the PULID_SPEC §9.2 twin transformer, a tiny EVA tower)."""

    flux_layers: int = 3
    flux_single_layers: int = 6
    flux_heads: int = 4
    flux_head_dim: int = 32
    text_dim: int = 48  # T5 width = joint_attention_dim
    pooled_dim: int = 32  # CLIP width = pooled_projection_dim
    axes_dims_rope: tuple[int, int, int] = (8, 12, 12)
    vae_channels: int = 8
    pulid_encoder_heads: int = 4  # PulidAdapter.build_state_dict_tiny's IDFormer
    pulid_ca_heads: int = 2
    eva: EvaConfig = EVA_TINY

    def describe(self) -> dict[str, object]:
        """A plain-data view (for fingerprints and logs)."""
        return asdict(self)


TINY = TinySpec()


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the body under a fixed torch seed without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def clip_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP BPE tokenizer whose vocabulary is every single byte (no merges)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        vocab.update({ch + suffix: len(vocab) + i for i, ch in enumerate(alphabet)})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer() -> T5Tokenizer:
    """A T5 unigram tokenizer over printable ASCII characters and word-initial letters."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    chars = string.ascii_letters + string.digits + string.punctuation
    pieces += [(ch, -3.0) for ch in chars]
    pieces += [("▁" + ch, -2.5) for ch in string.ascii_letters + string.digits]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def clip_text_encoder(seed: int, spec: TinySpec = TINY) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(clip_tokenizer()),
        hidden_size=spec.pooled_dim,
        intermediate_size=2 * spec.pooled_dim,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=spec.pooled_dim,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    with seeded(seed):
        return CLIPTextModel(config).eval()


def t5_encoder(seed: int, spec: TinySpec = TINY) -> T5EncoderModel:
    config = T5Config(
        vocab_size=len(t5_tokenizer()),
        d_model=spec.text_dim,
        d_ff=2 * spec.text_dim,
        d_kv=spec.text_dim // 4,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    with seeded(seed):
        return T5EncoderModel(config).eval()


def transformer(seed: int, spec: TinySpec = TINY) -> FluxTransformer2DModel:
    with seeded(seed):
        return FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,
            num_layers=spec.flux_layers,
            num_single_layers=spec.flux_single_layers,
            attention_head_dim=spec.flux_head_dim,
            num_attention_heads=spec.flux_heads,
            joint_attention_dim=spec.text_dim,
            pooled_projection_dim=spec.pooled_dim,
            guidance_embeds=True,
            axes_dims_rope=spec.axes_dims_rope,
        ).eval()


def vae(seed: int, spec: TinySpec = TINY) -> AutoencoderKL:
    """A 16-channel VAE with FLUX's 8x scale (four levels) and FLUX's scaling/shift factors."""
    c = spec.vae_channels
    with seeded(seed):
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(c, c, c, c),
            layers_per_block=1,
            latent_channels=16,
            norm_num_groups=4,
            scaling_factor=0.3611,
            shift_factor=0.1159,
            use_quant_conv=False,
            use_post_quant_conv=False,
        ).eval()


def scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG)


def eva_model(seed: int, spec: TinySpec = TINY):
    with seeded(seed):
        return build_eva(spec.eva)


def flux_pipeline(seed: int = 0, spec: TinySpec = TINY) -> FluxPipeline:
    """A diffusers FluxPipeline assembled from the tiny components (each with its own seed)."""
    pipe = FluxPipeline(
        scheduler=scheduler(),
        vae=vae(seed + 1, spec),
        text_encoder=clip_text_encoder(seed + 2, spec),
        tokenizer=clip_tokenizer(),
        text_encoder_2=t5_encoder(seed + 3, spec),
        tokenizer_2=t5_tokenizer(),
        transformer=transformer(seed + 4, spec),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
