"""The engine a worker holds, on the tiny preset: faces → identity → images → scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine import jobs_startup as startup
from engine.faces import HAAR_NOTE, FaceTooSmallError
from engine.faces_models import ARCFACE_PATH, SCRFD_PATH
from engine.identity import FingerprintMismatch, IdentityEmbedding
from engine.memory import MemoryModeError, MemoryPlan, default_dtype, dtype_for_capability
from engine.models import MissingWeightsError, flux_dev_preset
from engine.pipeline import PipelineInputError, SamplingParams
from engine.presets import (
    TINY_NOTICE,
    EngineOutOfMemory,
    flux_dev_analyzer,
    load_engine,
    onnx_providers,
    out_of_memory_message,
    size_for_aspect,
)
from engine.tinyfaces import write_tiny_arcface, write_tiny_scrfd
from storage.config import Settings

PARAMS = SamplingParams(width=64, height=64, steps=3, seed=5, max_sequence_length=32)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def engine():
    eng = load_engine("tiny", max_pixels=256 * 256)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def identity(engine, astronaut_png) -> IdentityEmbedding:
    return engine.encode_identity([astronaut_png])


def test_identity_from_a_real_photo(engine, identity, astronaut_png) -> None:
    assert identity.id_tokens.shape == (1, 8, 64) and identity.arcface.shape == (1, 512)
    assert identity.fingerprint == engine.fingerprint and engine.fingerprint.startswith("tiny:")
    face = engine.prepare_face(astronaut_png)
    assert face.eva_input.shape == (1, 3, 56, 56) and face.thumbnail_png.startswith(b"\x89PNG")
    again = engine.encode_identity([face])
    assert torch.allclose(again.id_tokens, identity.id_tokens)
    assert engine.notice == TINY_NOTICE


def test_batch_uses_one_identity_encode(engine, astronaut_png, monkeypatch) -> None:
    counts = {"eva": 0, "idformer": 0, "fuse": 0}
    tower, idformer = engine.encoder.tower, engine.encoder.adapter.pulid_encoder
    handles = [
        tower.register_forward_hook(lambda *_: counts.__setitem__("eva", counts["eva"] + 1)),
        idformer.register_forward_hook(
            lambda *_: counts.__setitem__("idformer", counts["idformer"] + 1)
        ),
    ]
    fused = IdentityEmbedding.fused

    def counting(self, method="mean"):
        counts["fuse"] += 1
        return fused(self, method)

    monkeypatch.setattr(IdentityEmbedding, "fused", counting)
    try:
        emb = engine.encode_identity([astronaut_png])
        images = engine.generate(["one", "two", "three"], PARAMS, emb)
    finally:
        for handle in handles:
            handle.remove()
    assert len(images) == 3 and images[0].size == (64, 64)
    assert counts == {"eva": 1, "idformer": 1, "fuse": 1}  # uncond tokens were cached before


def test_generation_is_deterministic_and_scored(engine, identity) -> None:
    params = SamplingParams(**{**PARAMS.__dict__, "true_cfg": 2.0, "start_step": 1})
    a = engine.generate(["a portrait"], params, identity)[0]
    b = engine.generate(["a portrait"], params, identity)[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))
    score = engine.score(a, identity.arcface)
    assert score.similarity is None and "no face" in score.note  # tiny models draw noise


def test_foreign_embedding_and_oversize_are_refused(engine, identity) -> None:
    foreign = IdentityEmbedding(
        identity.id_tokens, identity.uncond_tokens, identity.arcface, "flux-dev:0000"
    )
    with pytest.raises(FingerprintMismatch):
        engine.generate(["a"], PARAMS, foreign)
    big = SamplingParams(**{**PARAMS.__dict__, "width": 512, "height": 512})
    with pytest.raises(PipelineInputError, match="cap"):
        engine.generate(["a"], big)


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("out of memory"),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"
        ),
        MemoryError(),
    ],
    ids=["torch-oom", "cpu-allocator", "memory-error"],
)
def test_out_of_memory_on_the_cpu_says_the_machine_ran_out(engine, monkeypatch, error) -> None:
    def boom(*args, **kwargs):
        raise error

    monkeypatch.setattr(engine.pipeline, "generate", boom)
    with pytest.raises(EngineOutOfMemory) as caught:
        engine.generate(["a"], PARAMS)
    message = caught.value.user_message
    assert message.startswith("The machine ran out of memory") and "GPU" not in message
    assert "smaller size" in message and caught.value.__cause__ is error
    monkeypatch.setattr(engine.pipeline, "generate", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # other errors pass through unchanged
        engine.generate(["a"], PARAMS)


@pytest.mark.parametrize(
    ("mode", "advice"),
    [
        ("gpu", "switch to the offload or fp8 memory mode"),
        ("offload", "switch to the fp8 memory mode"),
        ("fp8", "already uses the lightest memory mode"),
    ],
)
def test_out_of_memory_on_a_gpu_says_the_gpu_ran_out_and_what_helps(mode, advice) -> None:
    plan = MemoryPlan(mode, torch.device("cuda", 0))  # a plan only: no GPU needed
    message = out_of_memory_message(torch.OutOfMemoryError("CUDA out of memory"), plan)
    assert message.startswith("The GPU ran out of memory on this job; try a smaller size")
    assert advice in message and message.endswith(".")
    host = RuntimeError("DefaultCPUAllocator: can't allocate memory")  # offloaded models in RAM
    assert out_of_memory_message(host, plan).startswith("The machine ran out of memory")


def test_offload_mode_gives_the_same_image_as_gpu_mode(engine) -> None:
    expected = engine.generate(["a portrait"], PARAMS)[0]
    offload = load_engine("tiny", memory_mode="offload")
    try:
        assert len(offload.memory.hooks) == 5  # EVA, CLIP, T5, transformer, VAE
        got = offload.generate(["a portrait"], PARAMS)[0]
    finally:
        offload.close()
    assert np.array_equal(np.asarray(got), np.asarray(expected))


def test_fp8_mode_quantises_the_transformer_blocks_only(engine, identity) -> None:
    fp8 = load_engine("tiny", memory_mode="fp8")
    try:
        transformer = fp8.pipeline.transformer
        block_weight = transformer.transformer_blocks[0].attn.to_q.weight
        assert type(block_weight).__name__ == "Float8Tensor"
        assert type(transformer.x_embedder.weight) is torch.nn.Parameter
        assert fp8.pipeline.adapter.pulid_ca[0].to_q.weight.dtype == torch.float32
        image = fp8.generate(["a portrait"], PARAMS, identity)[0]
    finally:
        fp8.close()
    reference = engine.generate(["a portrait"], PARAMS, identity)[0]
    diff = np.abs(np.asarray(image, np.int16) - np.asarray(reference, np.int16))
    assert image.size == (64, 64) and diff.mean() < 8  # close to full precision, not equal


def test_aspect_presets_and_bad_choices() -> None:
    assert size_for_aspect("1:1") == (1024, 1024)
    w, h = size_for_aspect("3:4", max_pixels=896 * 1152)
    assert (w % 16, h % 16) == (0, 0) and w * h <= 896 * 1152 and abs(w / h - 0.75) < 0.02
    with pytest.raises(PipelineInputError, match="aspect"):
        size_for_aspect("5:7")
    with pytest.raises(ValueError, match="preset"):
        load_engine("flux-schnell")
    with pytest.raises(ValueError, match="fusion"):
        load_engine("tiny", fusion="median")
    with pytest.raises(MemoryModeError, match="memory mode"):
        load_engine("tiny", memory_mode="turbo")


def _face_dir(root: Path, *, scrfd: bool, arcface: bool = True) -> Path:
    if arcface:
        write_tiny_arcface(root / ARCFACE_PATH, seed=0)
    if scrfd:
        write_tiny_scrfd(root / SCRFD_PATH, seed=0)
    return root


def test_flux_dev_faces_without_scrfd_use_haar_and_say_so(engine, astronaut_png, tmp_path) -> None:
    analyzer = flux_dev_analyzer(_face_dir(tmp_path, scrfd=False))
    assert analyzer.detector.name == "haar" and "lower quality" in analyzer.quality_note
    before = engine.analyzer
    engine.analyzer = analyzer
    try:
        face = engine.prepare_face(astronaut_png)
    finally:
        engine.analyzer = before
    assert face.quality_note == HAAR_NOTE  # the face job's note, shown to the user
    assert face.arcface.shape == (512,) and face.face.det_score > 0


def test_flux_dev_faces_with_scrfd_are_full_quality(tmp_path) -> None:
    analyzer = flux_dev_analyzer(_face_dir(tmp_path, scrfd=True))
    assert analyzer.detector.name == "scrfd" and analyzer.quality_note is None
    with pytest.raises(ValueError, match="onnx_provider"):
        flux_dev_analyzer(tmp_path, onnx_provider="tpu")


def test_flux_dev_faces_without_glintr100_are_a_start_up_error(tmp_path) -> None:
    with pytest.raises(MissingWeightsError, match="glintr100.onnx is missing"):
        flux_dev_analyzer(_face_dir(tmp_path, scrfd=True, arcface=False))


def test_engine_settings_reach_the_engine(astronaut_png, tmp_path) -> None:
    settings = Settings(engine={"preset": "tiny", "min_face_px": 200})
    small = startup.load(settings, torch.device("cpu"))
    try:
        assert small.min_face_px == 200
        with pytest.raises(FaceTooSmallError, match="at least 200 px"):
            small.prepare_face(astronaut_png)  # accepted at the default 64 px (tests above)
    finally:
        small.close()
    models_dir = tmp_path / "models"
    for asset in flux_dev_preset().assets:  # everything but the timm EVA file
        path = models_dir / asset.local
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir() if asset.role == "flux" else path.write_bytes(b"x")
    timm = Settings(engine={"preset": "flux-dev", "eva_source": "timm", "model_dir": models_dir})
    with pytest.raises(startup.StartupError, match="eva weights missing.*open_clip_model"):
        startup.load(timm, torch.device("cpu"))


@pytest.mark.parametrize(
    ("capability", "dtype"),
    [((6, 1), torch.float16), ((7, 0), torch.float16), ((7, 5), torch.float16),
     ((8, 0), torch.bfloat16), ((8, 6), torch.bfloat16), ((9, 0), torch.bfloat16),
     ((12, 0), torch.bfloat16)],
)  # fmt: skip
def test_fp16_below_compute_capability_8(capability, dtype) -> None:
    assert dtype_for_capability(capability) == dtype  # P40, V100, T4 → fp16; Ampere on → bf16


def test_default_dtype_asks_the_given_device(monkeypatch) -> None:
    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulation
    monkeypatch.setattr(
        torch.cuda, "get_device_capability", lambda d=None: asked.append(d) or (7, 0)
    )
    assert default_dtype(torch.device("cuda:1")) == torch.float16
    assert asked == [torch.device("cuda:1")]
    assert default_dtype(torch.device("cpu")) == torch.float32


def test_onnx_providers_use_the_workers_own_gpu() -> None:
    gpu1 = onnx_providers("gpu", torch.device("cuda:1"))
    assert gpu1 == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert onnx_providers("gpu", torch.device("cuda"))[0] == (
        "CUDAExecutionProvider", {"device_id": 0},
    )  # fmt: skip
    assert onnx_providers("cpu", torch.device("cuda:1")) == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="onnx_provider"):
        onnx_providers("tpu", torch.device("cuda:1"))


def test_flux_dev_face_sessions_get_the_workers_gpu(tmp_path, monkeypatch) -> None:
    import insightface.model_zoo as zoo

    real, seen = zoo.get_model, []

    def spy(name, **kwargs):
        seen.append(kwargs["providers"])
        return real(name, providers=["CPUExecutionProvider"])  # no CUDA here

    monkeypatch.setattr(zoo, "get_model", spy)
    flux_dev_analyzer(_face_dir(tmp_path, scrfd=True), "gpu", torch.device("cuda:1"))
    assert len(seen) == 2  # glintr100 and SCRFD
    assert all(p[0] == ("CUDAExecutionProvider", {"device_id": 1}) for p in seen)
