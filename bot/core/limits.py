"""Limits and defaults: image sizes from aspect ratios, prompt lengths and counts, settings merge.

Parameters come from three layers: the built-in defaults (the official app's), the user's saved
``/settings``, and inline ``--flags``. Each layer is a mapping of flag name → parsed value
(see :func:`bot.core.parsing.value_parsers`); :func:`build_settings` merges and validates them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from bot.core.errors import BadInput
from bot.core.parsing import value_parsers
from storage.config import LimitSettings
from storage.schemas import GenerationSettings

DEFAULT_SIZE = (896, 1152)
#: Aspect-ratio sizes aim at FLUX's native one megapixel.
TARGET_AREA = 1024 * 1024
DEFAULT_STEPS = 28
MIN_SIDE, MAX_SIDE = 256, 2048

#: Flags that map one-to-one onto a :class:`GenerationSettings` field.
FIELD_OF_FLAG = {
    "seed": "seed",
    "steps": "steps",
    "id": "id_weight",
    "start": "start_step",
    "cfg": "true_cfg",
    "guidance": "guidance",
    "no": "negative_prompt",
}


def parse_overrides(values: Mapping[str, str], limits: LimitSettings) -> dict[str, Any]:
    """Parse raw ``flag → text`` values (``face`` excluded) into typed values."""
    parsers = value_parsers(limits.max_steps, limits.max_prompt_chars)
    return {name: parsers[name](text) for name, text in values.items() if name != "face"}


def size_for_ratio(rw: int, rh: int, max_pixels: int) -> tuple[int, int]:
    """A multiple-of-16 size near ``rw:rh`` of about one megapixel, under the pixel cap."""
    area = min(TARGET_AREA, max_pixels)
    w = math.sqrt(area * rw / rh)
    w16, h16 = _round16(w), _round16(area / w)
    while w16 * h16 > max_pixels:
        if w16 >= h16:
            w16 -= 16
        else:
            h16 -= 16
    if not (MIN_SIDE <= w16 <= MAX_SIDE and MIN_SIDE <= h16 <= MAX_SIDE):
        raise BadInput(
            f"--ar {rw}:{rh} is too far from square here (each side must be {MIN_SIDE}–{MAX_SIDE})"
        )
    return w16, h16


def _round16(x: float) -> int:
    return max(16, int(round(x / 16)) * 16)


def resolve_size(merged: Mapping[str, Any], limits: LimitSettings) -> tuple[int, int]:
    """Width and height from ``size``, ``ar`` or the default, checked against the pixel cap."""
    if "size" in merged:
        w, h = merged["size"]
        if not (MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE):
            raise BadInput(f"--size {w}x{h}: each side must be {MIN_SIDE}–{MAX_SIDE}")
        if w * h > limits.max_pixels:
            raise BadInput(
                f"--size {w}x{h} is over this host's limit of {limits.max_pixels} pixels"
            )
        return int(w), int(h)
    if "ar" in merged:
        rw, rh = merged["ar"]
        return size_for_ratio(int(rw), int(rh), limits.max_pixels)
    w, h = DEFAULT_SIZE
    return (w, h) if w * h <= limits.max_pixels else size_for_ratio(w, h, limits.max_pixels)


def build_settings(
    saved: Mapping[str, Any], inline: Mapping[str, Any], limits: LimitSettings
) -> GenerationSettings:
    """Merge defaults ← saved ← inline and validate the result."""
    merged = {k: v for k, v in saved.items() if k not in ("ar", "size") or not _sized(inline)}
    merged.update(inline)
    width, height = resolve_size(merged, limits)
    fields = {FIELD_OF_FLAG[k]: v for k, v in merged.items() if k in FIELD_OF_FLAG}
    fields.setdefault("steps", min(DEFAULT_STEPS, limits.max_steps))
    if fields.get("start_step", 0) >= fields["steps"]:
        raise BadInput(f"--start {fields['start_step']} must be below --steps {fields['steps']}")
    try:
        return GenerationSettings(width=width, height=height, **fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise BadInput(f"{err['loc'][0]}: {err['msg']}") from None


def _sized(values: Mapping[str, Any]) -> bool:
    return "ar" in values or "size" in values


def check_prompt(prompt: str, limits: LimitSettings, what: str = "prompt") -> str:
    """A non-empty prompt within the length limit."""
    prompt = prompt.strip()
    if not prompt:
        raise BadInput(f"the {what} is empty")
    if len(prompt) > limits.max_prompt_chars:
        raise BadInput(
            f"the {what} has {len(prompt)} characters; the limit is {limits.max_prompt_chars}"
        )
    return prompt


def check_prompt_count(prompts: list[str], maximum: int, command: str) -> list[str]:
    """Not more prompts than ``maximum``."""
    if len(prompts) > maximum:
        raise BadInput(f"/{command} takes at most {maximum} prompts (got {len(prompts)})")
    return prompts


def describe(gs: GenerationSettings) -> str:
    """A one-line summary of generation settings, as flags."""
    seed = "random" if gs.seed is None else str(gs.seed)
    return (
        f"--size {gs.width}x{gs.height} --steps {gs.steps} --id {gs.id_weight:g} "
        f"--start {gs.start_step} --cfg {gs.true_cfg:g} --guidance {gs.guidance:g} --seed {seed}"
    )


def saved_to_json(values: Mapping[str, Any]) -> dict[str, Any]:
    """Saved defaults as JSON-friendly values (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def saved_from_json(data: Mapping[str, Any]) -> dict[str, Any]:
    """Saved defaults read back (lists become tuples); unknown keys are dropped."""
    known = {*FIELD_OF_FLAG, "ar", "size"}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
