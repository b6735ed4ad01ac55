"""Compare jobs: the built-in prompt set, identity scores, the grid (tiny preset, both DBs)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from worker_helpers import (
    astronaut_face_png,
    drain,
    job,
    make_user,
    one_thread_engine,
    outputs,
    png_size,
    png_text,
    save_astronaut,
    small,
)

from engine.codec import AI_TAG_KEY
from engine.compare import ASPECTS, DEFAULT_PROMPTS, default_prompts
from engine.grid import CELL, compare_grid, mean_label, mean_score, reference_tile
from engine.images import decode_image
from engine.presets import TINY_NOTICE
from engine.scoring import IdentityScore
from storage import embeddings, jobs
from storage.schemas import CompareParams, JobState, ResultKind

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def engine():
    yield from one_thread_engine()


def test_built_in_prompts_vary_every_aspect() -> None:
    assert len(DEFAULT_PROMPTS) >= 8
    assert len(set(default_prompts())) == len(DEFAULT_PROMPTS)
    for aspect in ASPECTS:
        values = {getattr(p, aspect) for p in DEFAULT_PROMPTS}
        assert len(values) >= 3, f"the built-in set hardly varies {aspect}: {values}"
    assert all(len(p) <= 1000 for p in default_prompts())  # within the default prompt limit


async def test_compare_with_the_built_in_set_scores_every_image_and_draws_a_grid(
    db, engine
) -> None:
    owner = await make_user(db)
    face = await save_astronaut(db, owner)
    queued = await jobs.enqueue(db, owner, CompareParams(identity_id=face.id, settings=small(1)))
    await drain(db, engine)
    done = await job(db, queued.job_id)
    n = len(DEFAULT_PROMPTS)
    assert (done.state, done.progress_step, done.progress_total) == (JobState.DONE, n, n)
    found = await outputs(db, owner, queued.job_id)
    images = [r for r in found if r.kind is ResultKind.IMAGE]
    [grid] = [r for r in found if r.kind is ResultKind.GRID]
    assert [r.prompt for r in images] == default_prompts()
    assert [r.seed for r in images] == list(range(7, 7 + n))
    # Tiny outputs are noise: no face in them, so no score — and the grid says so.
    assert all(r.identity_score is None for r in images)
    assert all(png_text(r.png)["identity_score"] == "no face" for r in images)
    meta = png_text(grid.png)
    assert (grid.index, grid.identity_score, meta[AI_TAG_KEY]) == (0, None, "true")
    assert meta["weights"] == engine.fingerprint and meta["kind"] == "compare grid"
    assert json.loads(meta["scores"]) == [None] * n
    assert json.loads(meta["prompts"]) == default_prompts()
    assert "n/a" in meta["mean_score"] and meta["notice"] == TINY_NOTICE
    assert done.note == f"{meta['mean_score']}; {TINY_NOTICE}"  # the summary the user reads
    width, height = png_size(grid.png)
    assert width == 4 * CELL and height > 3 * CELL  # 11 tiles in 4 columns, captions, footer
    _assert_reference_tile(grid.png, face.thumbnail)


def _assert_reference_tile(grid_png: bytes, thumbnail_png: bytes | None) -> None:
    """The grid's first tile is the saved face thumbnail, centred in its cell, unscaled."""
    assert thumbnail_png is not None
    grid = np.asarray(decode_image(grid_png))
    thumb = np.asarray(decode_image(thumbnail_png))
    off = (CELL - thumb.shape[0]) // 2
    np.testing.assert_array_equal(
        grid[off : off + thumb.shape[0], off : off + thumb.shape[1]], thumb
    )


async def test_compare_with_user_prompts(db, engine) -> None:
    owner = await make_user(db)
    face = await save_astronaut(db, owner)
    prompts = ["a chef in a kitchen", "a pilot in a cockpit"]
    params = CompareParams(identity_id=face.id, prompts=prompts, settings=small(1, seed=3))
    queued = await jobs.enqueue(db, owner, params)
    await drain(db, engine)
    found = await outputs(db, owner, queued.job_id)
    assert [(r.kind, r.index, r.prompt) for r in found] == [
        (ResultKind.GRID, 0, None),
        (ResultKind.IMAGE, 0, prompts[0]),
        (ResultKind.IMAGE, 1, prompts[1]),
    ]
    assert png_size(found[0].png)[0] == 2 * CELL  # reference + 2 outputs: 2 columns


def test_a_real_face_scores_and_the_grid_shows_its_mean(engine) -> None:
    """Scoring on a real photo: the reference face itself scores ~1, noise has no score."""
    photo = decode_image(astronaut_face_png())
    from worker_helpers import astronaut_identity

    arcface = embeddings.unpack(astronaut_identity()[0]).arcface
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8))
    scores = [engine.score(photo, arcface), engine.score(noise, arcface)]
    assert scores[0].similarity is not None and scores[0].similarity > 0.99
    assert scores[1] == IdentityScore(None, 0, "no face found in the output")
    assert mean_score(scores) == scores[0].similarity
    assert mean_label(scores) == f"mean likeness {scores[0].similarity:.2f} (1 of 2 with a face)"
    grid = compare_grid(reference_tile(None), [photo, noise], scores, footer=["a note"])
    assert grid.size[0] == 2 * CELL and grid.size[1] > 2 * CELL
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    assert mean_label([]) == "mean likeness: n/a (no face found in any output)"


def test_grid_needs_one_score_per_output() -> None:
    with pytest.raises(ValueError, match="one score per output"):
        compare_grid(reference_tile(None), [reference_tile(None)], [])
