"""The compare job: one identity across a diverse prompt set, scored, with one grid image.

The built-in set varies one thing at a time against a plain portrait: pose, expression,
clothing, lighting, setting and art style, so the grid shows where the likeness holds and where
it drifts. The user may give their own prompts instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from PIL import Image

from engine import codec
from engine.grid import compare_grid, mean_label, mean_score, reference_tile
from engine.jobs_exec import (
    Generated,
    JobContext,
    JobOutcome,
    generate_images,
    image_results,
    join_notes,
)
from engine.scoring import IdentityScore
from storage.records import ResultData
from storage.schemas import CompareParams, ResultKind


@dataclass(frozen=True)
class ComparePrompt:
    """A built-in prompt and what it varies."""

    text: str
    pose: str
    expression: str
    clothing: str
    lighting: str
    setting: str
    style: str


ASPECTS = ("pose", "expression", "clothing", "lighting", "setting", "style")

DEFAULT_PROMPTS: tuple[ComparePrompt, ...] = (
    ComparePrompt(
        "close-up portrait photo of the person facing the camera, neutral expression, "
        "plain grey backdrop, soft studio lighting",
        "frontal", "neutral", "casual", "studio", "studio", "photo",
    ),
    ComparePrompt(
        "photo of the person in three-quarter view laughing, denim jacket, "
        "golden hour sunlight in a city park",
        "three-quarter", "laughing", "denim jacket", "golden hour", "park", "photo",
    ),
    ComparePrompt(
        "side profile photo of the person looking left, serious expression, black turtleneck, "
        "dramatic rim light on a dark background",
        "profile", "serious", "turtleneck", "rim light", "studio", "photo",
    ),
    ComparePrompt(
        "photo of the person in a tailored business suit smiling confidently in a modern office, "
        "daylight from large windows",
        "frontal", "smiling", "suit", "daylight", "office", "photo",
    ),
    ComparePrompt(
        "full-body photo of the person hiking on a snowy mountain trail, winter coat and scarf, "
        "overcast sky",
        "full body", "calm", "winter coat", "overcast", "mountains", "photo",
    ),
    ComparePrompt(
        "photo of the person sitting in a cosy cafe at night, surprised expression, knitted "
        "sweater, warm neon light",
        "seated", "surprised", "sweater", "neon", "cafe", "photo",
    ),
    ComparePrompt(
        "the person looking up over their shoulder on a rainy street, trench coat, "
        "black-and-white film photograph",
        "over the shoulder", "pensive", "trench coat", "street lights", "street", "film b&w",
    ),
    ComparePrompt(
        "oil painting of the person in renaissance clothing with a gentle smile, chiaroscuro "
        "candle light",
        "three-quarter", "gentle smile", "renaissance", "candle light", "interior", "oil painting",
    ),
    ComparePrompt(
        "anime illustration of the person in a school uniform under cherry blossoms, "
        "cheerful expression, spring sunlight",
        "frontal", "cheerful", "school uniform", "sunlight", "garden", "anime",
    ),
    ComparePrompt(
        "3d render of the person as an astronaut in a spacesuit on the moon, helmet visor up, "
        "determined look, harsh sunlight",
        "tilted up", "determined", "spacesuit", "harsh sun", "moon", "3d render",
    ),
)  # fmt: skip


def default_prompts() -> list[str]:
    """The built-in prompt texts."""
    return [p.text for p in DEFAULT_PROMPTS]


async def run_compare(ctx: JobContext) -> JobOutcome:
    """Images for every prompt, each scored; plus one grid of reference, outputs and mean."""
    params = ctx.job.params
    assert isinstance(params, CompareParams)
    run = await generate_images(ctx, list(params.prompts) or default_prompts(), score=True)
    scores = [s for s in run.scores if s is not None]
    grid = await ctx.compute(_grid_png, ctx, run, scores)
    mean = mean_score(scores)
    results = image_results(ctx, run)
    results.append(
        ResultData(0, grid, seed=run.params.seed, identity_score=mean, kind=ResultKind.GRID)
    )
    return JobOutcome(results, join_notes(mean_label(scores), ctx.engine.notice))


def _grid_png(ctx: JobContext, run: Generated, scores: list[IdentityScore]) -> bytes:
    footer = [ctx.engine.notice] if ctx.engine.notice else []
    reference: Image.Image = reference_tile(run.identity.thumbnail)
    grid = compare_grid(reference, run.images, scores, footer=footer)
    extra = ctx.extra_metadata() | {
        "kind": "compare grid",
        "face": run.identity.name,
        "prompts": json.dumps(run.prompts),
        "scores": json.dumps([s.similarity for s in scores]),
        "mean_score": mean_label(scores),
    }
    meta = codec.result_metadata(
        f"compare: {len(run.prompts)} prompts", run.params, ctx.engine.fingerprint, extra
    )
    return codec.png_with_metadata(grid, meta)
