"""Numerical equivalence with the official PuLID-FLUX formulas on the tiny twin (spec §9.5 a-e).

The oracle (tests/engine/reference) is an independent, BFL-layout implementation written from the
specification. Every comparison reports rel = ‖port − ref‖ / ‖ref‖ and max-abs.
"""

from __future__ import annotations

import pytest
import torch
from pulid_support import attached_twin, rel_err

try:
    from .reference import pulid_math, twin
except ImportError:
    from reference import pulid_math, twin

IDFORMER_RTOL, IDFORMER_ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def setup():
    return attached_twin()


@pytest.fixture(scope="module")
def id_tokens(setup) -> torch.Tensor:
    _, _, adapter = setup
    with torch.no_grad():
        return adapter.encoder(*twin.id_inputs())


# ---------------------------------------------------------------------------- (a) IDFormer
@pytest.mark.parametrize(("batch", "images"), [(1, None), (2, None), (1, 3), (2, 2)])
def test_idformer_matches_official_formula(setup, batch: int, images: int | None) -> None:
    _, state, adapter = setup
    id_cond, vit = twin.id_inputs(batch, images)
    with torch.no_grad():
        port = adapter.encoder(id_cond, vit)
    ref = pulid_math.idformer(state, id_cond, vit, twin.ENC_HEADS)
    assert port.shape == (batch, 8, 64)
    torch.testing.assert_close(port, ref, rtol=IDFORMER_RTOL, atol=IDFORMER_ATOL)
    assert rel_err(port, ref) <= 1e-5


def test_multi_image_differs_from_single_image(setup) -> None:
    _, _, adapter = setup
    id_cond, vit = twin.id_inputs(1, 2)
    with torch.no_grad():
        both = adapter.encoder(id_cond, vit)
        first = adapter.encoder(id_cond[:, 0], [h[:, : twin.VIT_TOKENS] for h in vit])
    assert rel_err(both, first) > 1e-2


def test_uncond_tokens_are_idformer_on_zero_inputs(setup) -> None:
    _, state, adapter = setup
    uncond = adapter.uncond_tokens(torch.float32, "cpu", vit_tokens=twin.VIT_TOKENS)
    zeros = [torch.zeros(1, twin.VIT_TOKENS, 1024)] * 5
    ref = pulid_math.idformer(state, torch.zeros(1, 1280), zeros, twin.ENC_HEADS)
    torch.testing.assert_close(uncond, ref, rtol=IDFORMER_RTOL, atol=IDFORMER_ATOL)
    assert uncond.abs().amax() > 0.1  # learned latents and biases: not zero
    assert uncond.dtype == torch.float32 and not uncond.requires_grad


def test_uncond_token_count_default_is_official(setup) -> None:
    _, state, adapter = setup
    uncond = adapter.uncond_tokens(torch.bfloat16)
    zeros = [torch.zeros(1, 577, 1024)] * 5
    ref = pulid_math.idformer(state, torch.zeros(1, 1280), zeros, twin.ENC_HEADS)
    assert uncond.dtype == torch.bfloat16
    assert rel_err(uncond.float(), ref) < 1e-2


def test_idformer_refuses_bad_inputs(setup) -> None:
    _, _, adapter = setup
    id_cond, vit = twin.id_inputs()
    with pytest.raises(ValueError, match="id_cond must be"):
        adapter.encoder(id_cond[:, :512], vit)
    with pytest.raises(ValueError, match="5 tensors"):
        adapter.encoder(id_cond, vit[:4])
    with pytest.raises(ValueError, match=r"vit_hidden_states\[2\]"):
        adapter.encoder(id_cond, [*vit[:2], vit[2][..., :512], *vit[3:]])


# ---------------------------------------------------------------------------- (b) CA
@pytest.mark.parametrize(("img_batch", "id_batch"), [(1, 1), (3, 1), (3, 3)])
def test_cross_attention_matches_official_formula(setup, img_batch: int, id_batch: int) -> None:
    _, state, adapter = setup
    gen = torch.Generator().manual_seed(7)
    img = torch.randn(img_batch, 16, 128, generator=gen)
    ids = torch.randn(id_batch, 8, 64, generator=gen)
    for index, ca in enumerate(adapter.pulid_ca):
        with torch.no_grad():
            port = ca(ids, img)
        ref = pulid_math.cross_attention(state, index, ids, img, twin.CA_HEADS)
        torch.testing.assert_close(port, ref, rtol=1e-5, atol=1e-6)
        assert rel_err(port, ref) <= 1e-5


def test_oracle_detects_swapped_key_value_halves(setup) -> None:
    """Negative control: the comparison is sensitive to a plausible porting mistake."""
    _, state, adapter = setup
    swapped = dict(state)
    k, v = state["pulid_ca.0.to_kv.weight"].chunk(2, dim=0)
    swapped["pulid_ca.0.to_kv.weight"] = torch.cat([v, k])
    img, ids = torch.randn(1, 16, 128), torch.randn(1, 8, 64)
    with torch.no_grad():
        port = adapter.pulid_ca[0](ids, img)
    assert rel_err(port, pulid_math.cross_attention(swapped, 0, ids, img, twin.CA_HEADS)) > 0.1


# ---------------------------------------------------------------------------- (c)-(e) transformer
def _run(tw: twin.Twin, inputs) -> torch.Tensor:
    with torch.no_grad():
        return tw.transformer(**inputs).sample


def test_no_identity_is_bit_identical_to_plain_diffusers(setup) -> None:
    tw, _, adapter = setup
    inputs = twin.flux_inputs()
    plain = _run(tw, inputs)
    with adapter.identity(None) as injection:
        hooked = _run(tw, inputs)
        assert injection.active is False
    assert torch.equal(hooked, plain)


def test_diffusers_twin_matches_bfl_reference(setup) -> None:
    tw, _, _ = setup
    inputs = twin.flux_inputs()
    port, ref = _run(tw, inputs), twin.run_bfl(tw, inputs)
    assert rel_err(port, ref) <= 1e-4
    assert (port - ref).abs().max() <= 1e-4


@pytest.mark.parametrize("weight", [0.5, 1.0, 2.0])
def test_injection_matches_official_forward(setup, id_tokens, weight: float) -> None:
    tw, state, adapter = setup
    inputs = twin.flux_inputs()
    with adapter.identity(id_tokens, weight):
        port = _run(tw, inputs)
    inject = twin.reference_injector(state, id_tokens, weight)
    assert rel_err(port, twin.run_bfl(tw, inputs, inject)) <= 1e-5  # BFL-layout oracle
    with torch.no_grad():
        mixed = twin.run_mixed(tw.transformer, inputs, inject)
    assert rel_err(port, mixed) <= 1e-5  # diffusers blocks + reference CA
    assert rel_err(port, _run(tw, inputs)) > 1e-2  # the identity changes the output


def test_weight_zero_equals_plain_exactly(setup, id_tokens) -> None:
    tw, _, adapter = setup
    inputs = twin.flux_inputs()
    with adapter.identity(id_tokens, 0.0):
        zero = _run(tw, inputs)
    assert torch.equal(zero, _run(tw, inputs))


def test_oracle_detects_misplaced_injection(setup, id_tokens) -> None:
    """Negative control: the same CA modules at the wrong blocks are caught."""
    tw, state, adapter = setup
    inputs = twin.flux_inputs()
    with adapter.identity(id_tokens, 1.0):
        port = _run(tw, inputs)
    right = twin.reference_injector(state, id_tokens, 1.0)
    rotated = lambda index, img: right((index + 1) % 4, img)  # noqa: E731
    assert rel_err(port, twin.run_bfl(tw, inputs, rotated)) > 1e-2
