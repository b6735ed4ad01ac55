"""The sampling loop on tiny FLUX components (CPU): parity with diffusers, the three PuLID rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pipeline_support import spy_passes
from pulid_support import tiny_flux_adapter

from engine import tiny
from engine.memory import cast_flux, flux_dtypes, vae_dtype
from engine.pipeline import (
    FluxPulidPipeline,
    GenerationCancelled,
    IdentityTokens,
    PipelineInputError,
    Progress,
    SamplingParams,
    plan_steps,
    resolve_seed,
)

PARAMS = SamplingParams(width=64, height=48, steps=4, seed=7, max_sequence_length=32)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def flux():
    return tiny.flux_pipeline(seed=0)


@pytest.fixture(scope="module")
def adapter(flux):
    return tiny_flux_adapter(flux.transformer, seed=1)


@pytest.fixture(scope="module")
def pipe(flux, adapter) -> FluxPulidPipeline:
    return FluxPulidPipeline(flux, adapter, torch.device("cpu"))


@pytest.fixture(scope="module")
def identity(adapter) -> IdentityTokens:
    gen = torch.Generator().manual_seed(3)
    cond = torch.randn(1, 8, 64, generator=gen)
    return IdentityTokens(cond, adapter.uncond_tokens(vit_tokens=17).float())


@pytest.fixture(scope="module")
def embeds(pipe):
    return pipe.encode_prompt("a portrait photo", PARAMS.max_sequence_length)


def _diffusers(flux, output_type: str, **kw):
    gen = torch.Generator("cpu").manual_seed(PARAMS.seed)
    args = dict(
        height=PARAMS.height, width=PARAMS.width, num_inference_steps=PARAMS.steps,
        guidance_scale=PARAMS.guidance, generator=gen, max_sequence_length=32,
        output_type=output_type,
    )  # fmt: skip
    return flux("a portrait photo", **{**args, **kw}).images


def test_plain_loop_equals_diffusers_flux_pipeline(pipe, flux, embeds) -> None:
    latents = pipe.denoise(embeds, PARAMS)
    assert torch.equal(latents, _diffusers(flux, "latent"))
    image = pipe.generate(["a portrait photo"], PARAMS)[0]
    assert np.array_equal(np.asarray(image), np.asarray(_diffusers(flux, "pil")[0]))


def test_true_cfg_from_step_zero_equals_diffusers_true_cfg(pipe, flux, embeds) -> None:
    params = SamplingParams(**{**PARAMS.__dict__, "true_cfg": 3.0, "cfg_start_step": 0})
    negative = pipe.encode_prompt("blurry", 32)
    latents = pipe.denoise(embeds, params, negative=negative)
    reference = _diffusers(flux, "latent", negative_prompt="blurry", true_cfg_scale=3.0)
    assert torch.equal(latents, reference)


def test_weight_zero_and_no_identity_are_plain_flux(pipe, flux, embeds, identity) -> None:
    plain = _diffusers(flux, "latent")
    zero = SamplingParams(**{**PARAMS.__dict__, "id_weight": 0.0})
    assert torch.equal(pipe.denoise(embeds, zero, identity), plain)
    with_id = pipe.denoise(embeds, PARAMS, identity)
    assert not torch.allclose(with_id, plain)
    # nothing lingers after a run with an identity: outside the context it is plain FLUX again
    assert torch.equal(pipe.denoise(embeds, PARAMS), plain)
    assert torch.equal(_diffusers(flux, "latent"), plain)


def test_start_step_and_true_cfg_switch_on_at_the_configured_steps(pipe, embeds, identity) -> None:
    params = SamplingParams(
        **{**PARAMS.__dict__, "steps": 5, "start_step": 3, "true_cfg": 3.0, "cfg_start_step": 1}
    )
    negative = pipe.encode_prompt("blurry", 32)
    steps: list[int] = []
    with spy_passes(pipe, embeds) as passes:
        pipe.denoise(embeds, params, identity, negative=negative, on_step=steps.append)
    assert [p.kind for p in passes] == ["pos"] + ["pos", "neg"] * 4
    tokens = [p.tokens for p in passes]
    assert all(t is None for t in tokens[:5])  # steps 0-2: no identity at all
    for i in (5, 7):  # steps 3 and 4: cond tokens in the positive, uncond in the negative pass
        assert torch.equal(tokens[i], identity.cond)
        assert torch.equal(tokens[i + 1], identity.uncond)
    assert steps == [1, 2, 3, 4, 5]


def test_resolve_seed() -> None:
    assert resolve_seed(7) == 7
    drawn = {resolve_seed(None) for _ in range(4)} | {resolve_seed(-1)}
    assert len(drawn) > 1 and all(0 <= s < 2**32 for s in drawn)


def test_plan_steps_applies_the_official_cfg_threshold() -> None:
    off = plan_steps(SamplingParams(steps=3, true_cfg=1.005), has_identity=True)
    on = plan_steps(SamplingParams(steps=3, true_cfg=1.02, start_step=2), has_identity=True)
    assert [p.use_cfg for p in off] == [False, False, False]
    assert [(p.use_id, p.use_cfg) for p in on] == [(False, False), (False, True), (True, True)]
    assert not any(p.use_id for p in plan_steps(SamplingParams(steps=3), has_identity=False))


def test_same_seed_same_image_other_seed_other_image(pipe, identity) -> None:
    a = pipe.generate(["a portrait photo"], PARAMS, identity)[0]
    b = pipe.generate(["a portrait photo"], PARAMS, identity)[0]
    c = pipe.generate(["a portrait photo"], SamplingParams(**{**PARAMS.__dict__, "seed": 8}))[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_batch_encodes_text_once_per_prompt_and_seeds_in_turn(pipe, monkeypatch) -> None:
    calls: list[str] = []
    original = pipe.encode_prompt

    def counting(prompt, max_sequence_length=128):
        calls.append(prompt)
        return original(prompt, max_sequence_length)

    monkeypatch.setattr(pipe, "encode_prompt", counting)
    params = SamplingParams(**{**PARAMS.__dict__, "true_cfg": 2.0})
    images = pipe.generate(["one", "two", "three"], params, negative="blurry")
    assert calls == ["blurry", "one", "two", "three"]
    second = pipe.generate(
        ["two"], SamplingParams(**{**params.__dict__, "seed": 8}), negative="blurry"
    )
    assert np.array_equal(np.asarray(images[1]), np.asarray(second[0]))


def test_precomputed_embeds_bypass_the_text_encoders(pipe, embeds, monkeypatch) -> None:
    expected = pipe.generate(["a portrait photo"], PARAMS)[0]
    monkeypatch.setattr(pipe, "encode_prompt", lambda *a, **k: pytest.fail("text encoded"))
    got = pipe.generate([embeds], PARAMS)[0]
    assert np.array_equal(np.asarray(got), np.asarray(expected))


def test_callback_returning_false_stops_within_one_step(pipe) -> None:
    forwards: list[int] = []
    handle = pipe.transformer.register_forward_pre_hook(lambda *_: forwards.append(1))
    seen: list[Progress] = []

    def callback(progress: Progress) -> bool:
        seen.append(progress)
        return progress.step < 2

    params = SamplingParams(**{**PARAMS.__dict__, "steps": 6})
    try:
        with pytest.raises(GenerationCancelled) as info:
            pipe.generate(["a", "b"], params, callback=callback)
    finally:
        handle.remove()
    assert len(forwards) == 2 and (info.value.image, info.value.step) == (0, 2)
    assert [p.step for p in seen] == [1, 2] and seen[-1].fraction == pytest.approx(2 / 12)


def test_callback_exception_propagates(pipe) -> None:
    class Stop(Exception):
        pass

    def callback(progress: Progress) -> None:
        raise Stop

    with pytest.raises(Stop):
        pipe.generate(["a"], PARAMS, callback=callback)


@pytest.mark.parametrize(
    ("change", "word"),
    [({"width": 60}, "width"), ({"height": 0}, "height"), ({"steps": 0}, "steps"),
     ({"width": 4096, "height": 4096}, "cap"), ({"max_sequence_length": 1024}, "max_sequence")],
)  # fmt: skip
def test_bad_parameters_name_the_argument(pipe, change, word) -> None:
    with pytest.raises(PipelineInputError, match=word):
        pipe.generate(["a"], SamplingParams(**{**PARAMS.__dict__, **change}), max_pixels=2**22)


def test_true_cfg_with_identity_needs_uncond_tokens(pipe, identity) -> None:
    params = SamplingParams(**{**PARAMS.__dict__, "true_cfg": 2.0})
    with pytest.raises(PipelineInputError, match="uncond"):
        pipe.generate(["a"], params, IdentityTokens(identity.cond))
    with pytest.raises(PipelineInputError, match="non-empty"):
        pipe.generate(["  "], PARAMS)


def test_batch_runs_in_phases_text_then_denoise_then_decode(pipe, identity) -> None:
    """Each model is used in one stretch per call (an offload chain moves it once)."""
    events: list[str] = []
    models = {"t5": pipe.flux.text_encoder_2, "clip": pipe.flux.text_encoder,
              "dit": pipe.transformer, "vae": pipe.flux.vae.decoder}  # fmt: skip
    handles = [
        m.register_forward_pre_hook(lambda *_, name=name: events.append(name))
        for name, m in models.items()
    ]
    params = SamplingParams(**{**PARAMS.__dict__, "true_cfg": 2.0, "steps": 2})
    try:
        images = pipe.generate(["one", "two", "three"], params, identity, negative="blurry")
    finally:
        for handle in handles:
            handle.remove()
    assert len(images) == 3
    phases = [name for i, name in enumerate(events) if i == 0 or events[i - 1] != name]
    assert phases.count("dit") == 1 and phases.count("vae") == 1  # one stretch each
    assert events.count("t5") == 4 and events.count("clip") == 4  # negative + one per prompt
    last_text = max(i for i, e in enumerate(events) if e in ("t5", "clip"))
    assert last_text < events.index("dit") and events.index("vae") > len(events) - 4
    assert events[-3:] == ["vae"] * 3 and events.count("dit") == 3 * (2 + 1)


def test_identity_entries_are_built_once_per_denoise(pipe, embeds, identity, monkeypatch) -> None:
    from engine.pulid_hooks import IdentityInjection

    prepared, original = [], IdentityInjection.prepare

    def counting(self, entries):
        prepared.append(1)
        return original(self, entries)

    monkeypatch.setattr(IdentityInjection, "prepare", counting)
    monkeypatch.setattr(IdentityInjection, "set", lambda *a, **k: pytest.fail("set per pass"))
    params = SamplingParams(**{**PARAMS.__dict__, "true_cfg": 2.0, "steps": 5})
    negative = pipe.encode_prompt("blurry", 32)
    pipe.denoise(embeds, params, identity, negative=negative)
    assert len(prepared) == 2  # cond and uncond, not once per pass (9 passes)


def test_vae_stays_fp32_under_a_bf16_engine() -> None:
    assert vae_dtype(torch.bfloat16) == torch.float32  # PULID_SPEC §5.1
    assert vae_dtype(torch.float16) == torch.float16 and vae_dtype(torch.float32) == torch.float32
    assert flux_dtypes(torch.bfloat16) == {"default": torch.bfloat16, "vae": torch.float32}
    flux = tiny.flux_pipeline(seed=0)
    cast_flux(flux, torch.bfloat16)
    assert flux.transformer.dtype == torch.bfloat16 and flux.text_encoder_2.dtype == torch.bfloat16
    assert flux.vae.dtype == torch.float32


def test_bf16_latents_decode_in_an_fp32_vae_under_bf16_autocast(flux) -> None:
    pipe = FluxPulidPipeline(flux, None, torch.device("cpu"))
    latents = torch.randn(
        1, (48 // 16) * (64 // 16), 64, generator=torch.Generator().manual_seed(0)
    )
    seen: list[tuple[bool, torch.dtype]] = []
    hook = flux.vae.decoder.register_forward_pre_hook(
        lambda m, args: seen.append((torch.is_autocast_enabled("cpu"), m.conv_in.weight.dtype))
    )
    try:
        full = np.asarray(pipe.decode(latents, PARAMS), dtype=np.float32)
        mixed = np.asarray(pipe.decode(latents.bfloat16(), PARAMS), dtype=np.float32)
    finally:
        hook.remove()
    assert seen == [(False, torch.float32), (True, torch.float32)]
    assert np.abs(full - mixed).mean() < 4  # bf16 rounding only (0-255 pixel scale)
