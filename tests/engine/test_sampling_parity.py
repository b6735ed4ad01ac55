"""PULID_SPEC §9.5 (g) and (h): our schedule and denoise loop against the BFL-style reference.

(g) BFL ``get_schedule(N, L)`` (tests/engine/reference/flux_sampling.py) against the pipeline's
scheduler timesteps / 1000 and sigmas. (h) 4 Euler steps with start_step 2, true CFG 3 from step
1, a negative text and the uncond ID: :class:`FluxPulidPipeline` on the tiny diffusers twin
against the reference loop on the same twin's BFL weights, plus the three rules per pass.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from pipeline_support import spy_passes
from pulid_support import attached_twin, rel_err
from reference import flux_sampling as ref
from reference import pulid_math, twin

from engine import tiny
from engine.pipeline import (
    FluxPulidPipeline,
    IdentityTokens,
    PromptEmbeds,
    SamplingParams,
    initial_latents,
    schedule,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = torch.device("cpu")
RULES = ref.Rules(start_step=2, true_cfg=3.0, cfg_start_step=1, id_weight=1.0, guidance=4.0)
PARAMS = SamplingParams(
    width=64, height=48, steps=4, seed=11, guidance=RULES.guidance, id_weight=RULES.id_weight,
    start_step=RULES.start_step, true_cfg=RULES.true_cfg, cfg_start_step=RULES.cfg_start_step,
)  # fmt: skip
SEQ_LEN = (PARAMS.width // 16) * (PARAMS.height // 16)


def _port_schedule(steps: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    scheduler = FlowMatchEulerDiscreteScheduler(**tiny.FLUX_SCHEDULER_CONFIG)
    timesteps = schedule(scheduler, steps, seq_len, CPU)
    return timesteps / 1000, scheduler.sigmas


# --- (g) schedule ---------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 4, 20, 28, 50])
@pytest.mark.parametrize("size", [(256, 256), (512, 768), (896, 1152), (1024, 1024), (1536, 1536)])
def test_schedule_matches_bfl_get_schedule(steps: int, size: tuple[int, int]) -> None:
    seq_len = (size[0] // 16) * (size[1] // 16)
    expected = torch.tensor(ref.get_schedule(steps, seq_len), dtype=torch.float64)
    timesteps, sigmas = _port_schedule(steps, seq_len)
    assert timesteps.shape == (steps,) and sigmas.shape == (steps + 1,)
    assert (timesteps.double() - expected[:-1]).abs().max() <= 1e-6
    assert (sigmas.double() - expected).abs().max() <= 1e-6  # the Euler step's t_prev - t_curr


def test_schedule_numbers_of_the_spec_at_896x1152() -> None:
    seq_len = (896 // 16) * (1152 // 16)
    assert seq_len == 4032 and ref.schedule_mu(seq_len) == pytest.approx(1.13917, abs=5e-6)
    for steps, head in ((28, [1.0, 0.9883, 0.9760, 0.9630, 0.9494]),
                        (20, [1.0, 0.9834, 0.9657, 0.9465, 0.9259])):  # fmt: skip
        assert ref.get_schedule(steps, seq_len)[:5] == pytest.approx(head, abs=5e-5)
        assert _port_schedule(steps, seq_len)[0][:5].tolist() == pytest.approx(head, abs=5e-5)


# --- (h) denoise loop -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup():
    tw, state, adapter = attached_twin()
    flux = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**tiny.FLUX_SCHEDULER_CONFIG), vae=None,
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        transformer=tw.transformer,
    )  # fmt: skip
    return tw, state, adapter, FluxPulidPipeline(flux, adapter, CPU)


def _text(length: int, seed: int) -> PromptEmbeds:
    gen = torch.Generator().manual_seed(seed)
    embeds = torch.randn(1, length, 48, generator=gen)
    return PromptEmbeds(embeds, torch.randn(1, 32, generator=gen), torch.zeros(length, 3))


def _bfl_text(embeds: PromptEmbeds) -> ref.Text:
    return ref.Text(embeds.prompt_embeds, embeds.text_ids[None], embeds.pooled_prompt_embeds)


@pytest.fixture(scope="module")
def run(setup):
    """Both loops on the same inputs: (port latents, port passes, reference, reference trace)."""
    tw, state, adapter, pipe = setup
    positive, negative = _text(7, seed=20), _text(5, seed=21)
    id_cond, vit = twin.id_inputs()
    zeros = [torch.zeros_like(v) for v in vit]
    cond = pulid_math.idformer(state, id_cond, vit, twin.ENC_HEADS)
    uncond = pulid_math.idformer(state, torch.zeros_like(id_cond), zeros, twin.ENC_HEADS)
    with torch.no_grad():
        port_id = IdentityTokens(
            adapter.pulid_encoder(id_cond, vit), adapter.uncond_tokens(vit_tokens=twin.VIT_TOKENS)
        )
        with spy_passes(pipe, positive) as passes:
            latents = pipe.denoise(positive, PARAMS, port_id, negative=negative)
        reference, trace = _reference(tw, state, positive, negative, cond, uncond)
    return latents, passes, reference, trace, (cond, uncond)


def _reference(tw, state, positive, negative, cond, uncond):
    img, img_ids = ref.prepare_img(ref.get_noise(PARAMS.height, PARAMS.width, PARAMS.seed))
    trace: ref.Trace = []
    out = ref.denoise(
        tw.bfl, tw.params, img=img, img_ids=img_ids, text=_bfl_text(positive),
        negative=_bfl_text(negative), timesteps=ref.get_schedule(PARAMS.steps, SEQ_LEN),
        rules=RULES, injector=lambda tokens, w: twin.reference_injector(state, tokens, w),
        id_tokens=cond, uncond_id=uncond, trace=trace,
    )  # fmt: skip
    return out, trace


def test_noise_and_ids_match_the_bfl_recipe() -> None:
    latents, ids = initial_latents(PARAMS, 16, CPU, torch.float32)
    img, img_ids = ref.prepare_img(ref.get_noise(PARAMS.height, PARAMS.width, PARAMS.seed))
    assert torch.equal(latents, img) and torch.equal(ids, img_ids[0])


def test_four_euler_steps_with_start_step_true_cfg_and_uncond_id_match_bfl(run) -> None:
    latents, _, reference, _, _ = run
    assert latents.shape == reference.shape == (1, SEQ_LEN, 64)
    assert rel_err(latents, reference) <= 1e-4


EXPECTED_PASSES = [  # (kind, which ID) per transformer call, steps 0..3
    ("pos", None),  # step 0: no ID (start_step 2), no CFG (cfg_start_step 1)
    ("pos", None), ("neg", None),  # step 1: CFG, still no ID
    ("pos", "cond"), ("neg", "uncond"),  # steps 2, 3: ID; the negative pass gets the uncond ID
    ("pos", "cond"), ("neg", "uncond"),
]  # fmt: skip


def _which(tokens: torch.Tensor | None, cond: torch.Tensor, uncond: torch.Tensor) -> str | None:
    if tokens is None:
        return None
    matches = [n for n, t in (("cond", cond), ("uncond", uncond)) if rel_err(tokens, t) < 1e-5]
    return matches[0] if len(matches) == 1 else "other"


def test_the_three_rules_hold_at_every_pass_of_both_loops(run) -> None:
    _, passes, _, trace, (cond, uncond) = run
    port = [(p.kind, _which(p.tokens, cond, uncond)) for p in passes]
    oracle = [(kind, _which(tokens, cond, uncond)) for kind, tokens in trace]
    assert port == oracle == EXPECTED_PASSES
    times = ref.get_schedule(PARAMS.steps, SEQ_LEN)
    per_step = [times[0], times[1], times[1], times[2], times[2], times[3], times[3]]
    assert [p.timestep for p in passes] == pytest.approx(per_step, abs=1e-6)


def test_dropping_the_uncond_id_moves_the_result_beyond_the_tolerance(run, setup) -> None:
    latents, _, _, _, (cond, _) = run
    tw, state, _, _ = setup
    positive, negative = _text(7, seed=20), _text(5, seed=21)
    with torch.no_grad():
        without, _ = _reference(tw, state, positive, negative, cond, None)
    assert rel_err(latents, without) > 1e-3  # rule 3 moves the result far beyond the tolerance
