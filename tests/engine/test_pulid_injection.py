"""PuLID hooks: where they inject, what they leave alone, batching, masks, switching, bf16."""

from __future__ import annotations

import copy

import pytest
import torch
from pulid_support import attach, attached_twin, rel_err

from engine.pulid import IdEntry

try:
    from .reference import pulid_math, twin
except ImportError:
    from reference import pulid_math, twin


@pytest.fixture(scope="module")
def setup():
    return attached_twin()


@pytest.fixture(scope="module")
def tokens(setup) -> torch.Tensor:
    """Two different identities, (2, 8, 64)."""
    with torch.no_grad():
        return setup[2].encoder(*twin.id_inputs(batch=2))


def _run(tw: twin.Twin, inputs) -> torch.Tensor:
    with torch.no_grad():
        return tw.transformer(**inputs).sample


def _all_blocks(tw: twin.Twin):
    double = [("double", i, b) for i, b in enumerate(tw.transformer.transformer_blocks)]
    return double + [
        ("single", j, b) for j, b in enumerate(tw.transformer.single_transformer_blocks)
    ]


def _spy(store: dict, key: tuple[str, int]):
    def hook(module, args, kwargs, output):
        store[key] = (output[0].clone(), output[1].clone())

    return hook


def _spy_all(tw: twin.Twin, store: dict) -> list:
    return [
        b.register_forward_hook(_spy(store, (k, i)), with_kwargs=True)
        for k, i, b in _all_blocks(tw)
    ]


def _hook_count(tw: twin.Twin) -> int:
    return sum(len(b._forward_hooks) for *_, b in _all_blocks(tw))


# ---------------------------------------------------------------------------- (f) placement
def test_text_untouched_and_delta_exact_at_every_injection_point(setup, tokens) -> None:
    tw, state, adapter = setup
    ids, weight = tokens[:1], 1.5
    before, after = {}, {}
    handles = _spy_all(tw, before)  # registered first: sees the block output before PuLID
    with adapter.identity(ids, weight):
        handles += _spy_all(tw, after)  # registered after PuLID's hooks: sees its result
        _run(tw, twin.flux_inputs())
    for h in handles:
        h.remove()
    hooked = {(kind, i): k for kind, i, k in adapter.hooked_blocks}
    assert hooked == {("double", 0): 0, ("double", 2): 1, ("single", 0): 2, ("single", 4): 3}
    for key, (txt, img) in before.items():
        assert torch.equal(after[key][0], txt), f"text tokens changed at {key}"
        if key not in hooked:
            assert torch.equal(after[key][1], img), f"unexpected injection at {key}"
            continue
        ca = pulid_math.cross_attention(state, hooked[key], ids, img, twin.CA_HEADS)
        assert rel_err(after[key][1] - img, weight * ca) <= 1e-5, key


def test_hooks_exist_only_inside_the_context(setup, tokens) -> None:
    tw, _, adapter = setup
    inputs = twin.flux_inputs()
    plain = _run(tw, inputs)
    assert _hook_count(tw) == 0
    with adapter.identity(tokens[:1]):
        assert _hook_count(tw) == 4
        assert not torch.equal(_run(tw, inputs), plain)
    assert _hook_count(tw) == 0
    assert torch.equal(_run(tw, inputs), plain)


def test_hooks_removed_when_the_forward_fails(setup, tokens) -> None:
    tw, _, adapter = setup
    error = "id tokens batch 2 must be 1 or the image batch 3"
    with pytest.raises(ValueError, match=error), adapter.identity(tokens):
        _run(tw, twin.flux_inputs(batch=3))
    assert _hook_count(tw) == 0
    with adapter.identity(tokens[:1]):  # usable again
        assert _hook_count(tw) == 4


def test_nested_identity_is_refused(setup, tokens) -> None:
    _, _, adapter = setup
    refused = pytest.raises(RuntimeError, match="already active")
    with adapter.identity(tokens[:1]), refused, adapter.identity(tokens[:1]):
        pass


def test_detach_removes_hooks_and_restores_plain_output(tokens) -> None:
    tw, _, adapter = attached_twin()
    inputs = twin.flux_inputs()
    plain = _run(tw, inputs)
    with adapter.identity(tokens[:1]):
        adapter.detach()
        assert _hook_count(tw) == 0
        detached = _run(tw, inputs)
    assert torch.equal(detached, plain)
    with pytest.raises(RuntimeError, match="detached"), adapter.identity(tokens[:1]):
        pass


# ---------------------------------------------------------------------------- switching
def test_per_step_switch_without_reentering(setup, tokens) -> None:
    tw, _, adapter = setup
    inputs = twin.flux_inputs()
    plain = _run(tw, inputs)
    with adapter.identity(tokens[1:], 0.8):
        reference_b = _run(tw, inputs)
    with adapter.identity(None) as injection:
        assert torch.equal(_run(tw, inputs), plain)
        injection.set(tokens[:1], 1.0)
        with_a = _run(tw, inputs)
        injection.active = False
        assert torch.equal(_run(tw, inputs), plain)
        injection.set(tokens[1:], 0.8)
        assert torch.equal(_run(tw, inputs), reference_b)
        injection.clear()
        assert torch.equal(_run(tw, inputs), plain)
    assert rel_err(with_a, plain) > 1e-2


def test_prepared_entries_swap_without_copies(setup, tokens) -> None:
    tw, _, adapter = setup
    inputs = twin.flux_inputs()
    with adapter.identity(tokens[1:], 0.8):
        reference_b = _run(tw, inputs)
    with adapter.identity(None) as injection:
        a, b = injection.prepare([(tokens[:1], 1.0)]), injection.prepare([(tokens[1:], 0.8)])
        injection.use(b)
        assert injection.active and injection.entries is b
        assert torch.equal(_run(tw, inputs), reference_b)
        injection.use(a)
        assert injection.entries[0] is a[0]  # the same tensors at every pass, no new copies
        injection.use(())
        assert not injection.active
    with pytest.raises(ValueError, match="B, T, D"):
        injection.prepare([(tokens[0], 1.0)])


# ---------------------------------------------------------------------------- batching
def test_single_id_broadcasts_over_image_batch(setup, tokens) -> None:
    tw, state, adapter = setup
    inputs = twin.flux_inputs(batch=3)
    with adapter.identity(tokens[:1], 1.0):
        port = _run(tw, inputs)
    ref = twin.run_bfl(tw, inputs, twin.reference_injector(state, tokens[:1], 1.0))
    assert port.shape[0] == 3
    assert rel_err(port, ref) <= 1e-5


def test_id_batch_pairs_with_image_batch(setup, tokens) -> None:
    """True CFG stacks [cond; uncond]: ID b goes with image b."""
    tw, state, adapter = setup
    inputs = twin.flux_inputs(batch=1)
    stacked = {
        k: torch.cat([v, v]) if k not in ("img_ids", "txt_ids") else v for k, v in inputs.items()
    }
    with adapter.identity(tokens, 1.0):
        port = _run(tw, stacked)
    ref = twin.run_bfl(tw, stacked, twin.reference_injector(state, tokens, 1.0))
    assert rel_err(port, ref) <= 1e-5
    for b in range(2):
        with adapter.identity(tokens[b : b + 1], 1.0):
            alone = _run(tw, inputs)
        assert rel_err(port[b : b + 1], alone) <= 1e-5
    assert rel_err(port[0], port[1]) > 1e-2


# ---------------------------------------------------------------------------- masks, several IDs
def test_token_mask_limits_the_identity(setup, tokens) -> None:
    tw, _, adapter = setup
    inputs = twin.flux_inputs()
    mask = torch.zeros(1, 16)
    mask[:, :8] = 1.0
    before, after = {}, {}
    handles = _spy_all(tw, before)
    with adapter.identity(tokens[:1], 1.0, mask=mask):
        handles += _spy_all(tw, after)
        _run(tw, inputs)
    for h in handles:
        h.remove()
    img_before, img_after = before[("double", 0)][1], after[("double", 0)][1]
    assert torch.equal(img_after[:, 8:], img_before[:, 8:])
    assert not torch.equal(img_after[:, :8], img_before[:, :8])
    with adapter.identity(tokens[:1], 1.0):
        unmasked = _run(tw, inputs)
    with adapter.identity(tokens[:1], 1.0, mask=torch.ones(1, 16, 1)):
        assert torch.equal(_run(tw, inputs), unmasked)


def test_several_identities_add_deltas_from_the_same_image(setup, tokens) -> None:
    tw, state, adapter = setup
    inputs = twin.flux_inputs()
    left = torch.zeros(1, 16, 1)
    left[:, :8] = 1.0
    entries = [(tokens[:1], 0.7, left), IdEntry(tokens[1:], 1.2, 1.0 - left)]
    with adapter.identity(entries):
        port = _run(tw, inputs)

    def inject(index: int, img: torch.Tensor) -> torch.Tensor:
        deltas = [
            w * pulid_math.cross_attention(state, index, t, img, twin.CA_HEADS) * m
            for t, w, m in ((tokens[:1], 0.7, left), (tokens[1:], 1.2, 1.0 - left))
        ]
        return deltas[0] + deltas[1]

    with torch.no_grad():
        ref = twin.run_mixed(tw.transformer, inputs, inject)
    assert rel_err(port, ref) <= 1e-5


def test_mask_must_fit_the_image_tokens(setup, tokens) -> None:
    tw, _, adapter = setup
    error = r"token mask \(1, 9, 1\) does not fit the image tokens \(1, 16\)"
    with pytest.raises(ValueError, match=error), adapter.identity(tokens[:1], mask=torch.ones(9)):
        _run(tw, twin.flux_inputs())
    with pytest.raises(ValueError, match="token mask must be"):
        adapter.identity(tokens[:1], mask=torch.ones(1, 16, 2)).__enter__()


# ---------------------------------------------------------------------------- bf16
def _bf16(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    skip = ("img_ids", "txt_ids")
    return {k: v if k in skip else v.to(torch.bfloat16) for k, v in inputs.items()}


def test_bf16_matches_bf16_oracle(setup) -> None:
    tw, state, _ = setup
    tr16 = copy.deepcopy(tw.transformer).to(torch.bfloat16)
    adapter = attach(tr16, state)
    assert adapter.pulid_ca[0].to_q.weight.dtype == torch.bfloat16
    state16 = {k: v.to(torch.bfloat16) for k, v in state.items()}
    id_cond, vit = twin.id_inputs()
    id_cond, vit = id_cond.to(torch.bfloat16), [v.to(torch.bfloat16) for v in vit]
    with torch.no_grad():
        ids = adapter.encoder(id_cond, vit)
    assert rel_err(ids, pulid_math.idformer(state16, id_cond, vit, twin.ENC_HEADS)) <= 1e-2
    twin16 = twin.Twin(tw.params, {k: v.to(torch.bfloat16) for k, v in tw.bfl.items()}, tr16)
    inputs = _bf16(twin.flux_inputs())
    with adapter.identity(ids, 1.0):
        port = _run(twin16, inputs)
    inject = twin.reference_injector(state16, ids, 1.0)
    assert port.dtype == torch.bfloat16
    assert rel_err(port, twin.run_bfl(twin16, inputs, inject)) <= 1e-2
    with torch.no_grad():
        assert rel_err(port, twin.run_mixed(tr16, inputs, inject)) <= 1e-2
