"""PuLID hooks under regional `torch.compile` of the FLUX blocks (tiny twin, CPU).

The backend is aot_eager: the full dynamo + AOT-autograd capture with the hooks inside, but no
inductor code generation (about 35 s on two CPU cores, too slow for the suite).
"""

from __future__ import annotations

import pytest
import torch
from pulid_support import attached_twin, rel_err

try:
    from .reference import twin
except ImportError:
    from reference import twin

BACKEND = "aot_eager"


@pytest.fixture(scope="module")
def compiled():
    """A fresh twin with eager reference outputs computed before its blocks are compiled."""
    tw, state, adapter = attached_twin()
    inputs = twin.flux_inputs()
    with torch.no_grad():
        ids = adapter.encoder(*twin.id_inputs())
        eager = {"plain": tw.transformer(**inputs).sample}
        for weight in (1.0, 2.0):
            with adapter.identity(ids, weight):
                eager[weight] = tw.transformer(**inputs).sample
    for block in [*tw.transformer.transformer_blocks, *tw.transformer.single_transformer_blocks]:
        block.compile(backend=BACKEND)
    yield tw, state, adapter, inputs, ids, eager
    torch._dynamo.reset()


def _run(tw: twin.Twin, inputs) -> torch.Tensor:
    with torch.no_grad():
        return tw.transformer(**inputs).sample


def test_compiled_blocks_with_injection(compiled) -> None:
    tw, state, adapter, inputs, ids, eager = compiled
    assert rel_err(_run(tw, inputs), eager["plain"]) <= 1e-6
    with adapter.identity(ids, 1.0) as injection:
        with_id = _run(tw, inputs)
        with torch.compiler.set_stance("fail_on_recompile"):
            injection.set(ids, 2.0)  # a new weight must not recompile
            doubled = _run(tw, inputs)
        injection.active = False
        switched_off = _run(tw, inputs)
    assert rel_err(with_id, eager[1.0]) <= 1e-6
    assert (
        rel_err(with_id, twin.run_bfl(tw, inputs, twin.reference_injector(state, ids, 1.0))) <= 1e-5
    )
    assert rel_err(doubled, eager[2.0]) <= 1e-6
    assert rel_err(switched_off, eager["plain"]) <= 1e-6
    assert rel_err(_run(tw, inputs), eager["plain"]) <= 1e-6  # hooks gone after the context


def test_compiled_blocks_reenter_and_detach(compiled) -> None:
    tw, _, adapter, inputs, ids, eager = compiled
    with adapter.identity(ids, 2.0):
        assert rel_err(_run(tw, inputs), eager[2.0]) <= 1e-6
    with adapter.identity(ids, 1.0):
        adapter.detach()
        assert rel_err(_run(tw, inputs), eager["plain"]) <= 1e-6
