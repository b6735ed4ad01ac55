"""Shared by the pipeline tests: a spy on each transformer pass of the denoise loop.

(No tests here.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from engine.pipeline import FluxPulidPipeline, PromptEmbeds


@dataclass
class Pass:
    """One transformer call: which text, its timestep, the ID tokens CA module 0 received."""

    kind: str  # "pos" (the prompt) or "neg" (the negative prompt)
    timestep: float
    tokens: torch.Tensor | None = None


@contextlib.contextmanager
def spy_passes(pipe: FluxPulidPipeline, positive: PromptEmbeds) -> Iterator[list[Pass]]:
    """Record every transformer pass while the block runs (hooks removed afterwards)."""
    passes: list[Pass] = []

    def on_forward(_module, _args, kwargs) -> None:
        kind = "pos" if kwargs["encoder_hidden_states"] is positive.prompt_embeds else "neg"
        passes.append(Pass(kind, float(kwargs["timestep"].flatten()[0])))

    def on_ca(_module, args, _output) -> None:
        passes[-1].tokens = args[0].clone()

    handles = [pipe.transformer.register_forward_pre_hook(on_forward, with_kwargs=True)]
    if pipe.adapter is not None:
        handles.append(pipe.adapter.pulid_ca[0].register_forward_hook(on_ca))
    try:
        yield passes
    finally:
        for handle in handles:
            handle.remove()
