"""Parsing of command text: inline ``--flag value`` parameters, sizes, crop boxes, prompt lists.

Everything here is pure: text in, typed values out, :class:`BadInput` naming the bad part.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.core.errors import BadInput
from storage.schemas import IDENTITY_NAME_PATTERN, CropBox

#: ``--flag`` at the start of a line or after whitespace (phones turn ``--`` into a dash).
_FLAG = re.compile(r"(?:^|(?<=\s))(?:--|—|–)([A-Za-z][A-Za-z0-9_-]*)(?=\s|$)")
_QUOTES = {'"': '"', "'": "'", "“": "”", "«": "»"}
_NAME = re.compile(IDENTITY_NAME_PATTERN)
_COMMAND = re.compile(r"^/([A-Za-z_]+)(?:@\S+)?(?:\s+|$)")

ALIASES = {
    "ar": "ar",
    "aspect": "ar",
    "size": "size",
    "seed": "seed",
    "steps": "steps",
    "id": "id",
    "iw": "id",
    "start": "start",
    "cfg": "cfg",
    "guidance": "guidance",
    "g": "guidance",
    "no": "no",
    "face": "face",
}


@dataclass(frozen=True)
class Flags:
    """Inline parameters split off a text: the text without them, and each ``flag → value``."""

    text: str
    values: Mapping[str, str] = field(default_factory=dict)


def split_command(text: str) -> tuple[str, str]:
    """``"/imagine@bot a cat"`` → ``("imagine", "a cat")``; :class:`BadInput` if not a command."""
    stripped = text.strip()
    match = _COMMAND.match(stripped)
    if not match:
        raise BadInput("commands start with / — try /help")
    return match.group(1).lower(), stripped[match.end() :]


def extract_flags(text: str) -> Flags:
    """Split ``--flag value`` pairs off every line; a value runs to the next flag or line end."""
    lines: list[str] = []
    values: dict[str, str] = {}
    for line in text.split("\n"):
        matches = list(_FLAG.finditer(line))
        lines.append((line[: matches[0].start()] if matches else line).strip())
        for i, m in enumerate(matches):
            end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
            _add_flag(values, m.group(1).lower(), _unquote(line[m.end() : end].strip()))
    return Flags(text="\n".join(lines).strip(), values=values)


def _add_flag(values: dict[str, str], raw: str, value: str) -> None:
    name = ALIASES.get(raw)
    if name is None:
        known = ", ".join(f"--{k}" for k in dict.fromkeys(ALIASES.values()))
        raise BadInput(f"unknown parameter --{raw} (known: {known})")
    if name in values:
        raise BadInput(f"--{raw} is given twice")
    if not value:
        raise BadInput(f"--{raw} needs a value")
    values[name] = value


def _unquote(value: str) -> str:
    if len(value) >= 2 and _QUOTES.get(value[0]) == value[-1]:
        return value[1:-1].strip()
    return value


def split_args(text: str) -> list[str]:
    """Shell-like words (quotes keep spaces in paths and names)."""
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise BadInput(f"cannot read the arguments: {exc}") from None


def check_name(name: str) -> str:
    """A valid identity name, or :class:`BadInput`."""
    if not _NAME.match(name):
        raise BadInput(f"face name {name[:40]!r} must be 1–32 letters, digits, - or _")
    return name


def parse_crop(text: str) -> CropBox:
    """``x,y,w,h`` in pixels, in percent (``10%,…``) or in fractions (every value ≤ 1)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4:
        raise BadInput(f"crop {text!r}: expected four numbers x,y,w,h")
    percent = all(p.endswith("%") for p in parts)
    nums = [_number(p.rstrip("%") if percent else p, f"crop {text!r}") for p in parts]
    if percent:
        nums = [n / 100 for n in nums]
    relative = percent or all(n <= 1 for n in nums)
    if any(n < 0 for n in nums) or nums[2] <= 0 or nums[3] <= 0:
        raise BadInput(f"crop {text!r}: x and y must be ≥ 0, width and height > 0")
    if relative and (nums[0] + nums[2] > 1 or nums[1] + nums[3] > 1):
        raise BadInput(f"crop {text!r} reaches outside the image")
    return CropBox(x=nums[0], y=nums[1], w=nums[2], h=nums[3], relative=relative)


def parse_face_number(text: str) -> int:
    """A 1-based face number."""
    if not text.isdigit() or not 1 <= int(text) <= 99:
        raise BadInput(f"face {text!r}: expected a face number from 1 (faces count left to right)")
    return int(text)


def parse_job_id(text: str) -> int:
    """A job id as users type it: ``12`` or ``#12``."""
    digits = text.strip().lstrip("#")
    if not digits.isdigit() or len(digits) > 18:
        raise BadInput(f"{text!r} is not a job id (see /jobs)")
    return int(digits)


def split_prompts(text: str) -> list[str]:
    """One prompt per non-empty line; a single line may separate prompts with ``|``."""
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if len(lines) == 1:
        lines = [p.strip() for p in lines[0].split("|") if p.strip()]
    return lines


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadInput(f"{what}: {text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise BadInput(f"{what}: {text!r} is not a finite number")
    return value


# -- parameter values ---------------------------------------------------------------------------


def _int_in(flag: str, lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not re.fullmatch(r"\d+", text) or not lo <= int(text) <= hi:
            raise BadInput(f"--{flag} {text}: expected a whole number from {lo} to {hi}")
        return int(text)

    return parse


def _float_in(flag: str, lo: float, hi: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = _number(text, f"--{flag}")
        if not lo <= value <= hi:
            raise BadInput(f"--{flag} {text}: expected a number from {lo:g} to {hi:g}")
        return value

    return parse


def parse_ratio(text: str) -> tuple[int, int]:
    """``3:4`` → ``(3, 4)``."""
    m = re.fullmatch(r"(\d{1,4})\s*[:/x]\s*(\d{1,4})", text)
    if not m or int(m.group(1)) == 0 or int(m.group(2)) == 0:
        raise BadInput(f"--ar {text}: expected an aspect ratio like 3:4")
    return int(m.group(1)), int(m.group(2))


def parse_size(text: str) -> tuple[int, int]:
    """``896x1152`` → ``(896, 1152)``; both multiples of 16."""
    m = re.fullmatch(r"(\d{2,5})\s*[x×*]\s*(\d{2,5})", text.lower())
    if not m:
        raise BadInput(f"--size {text}: expected width x height, like 896x1152")
    w, h = int(m.group(1)), int(m.group(2))
    if w % 16 or h % 16:
        hint = f"{(w + 8) // 16 * 16}x{(h + 8) // 16 * 16}"
        raise BadInput(f"--size {text}: width and height must be multiples of 16 (try {hint})")
    return w, h


def parse_seed(text: str) -> int | None:
    """A seed, or ``None`` for ``random``."""
    if text.lower() == "random":
        return None
    return _int_in("seed", 0, 2**32 - 1)(text)


def negative_parser(max_chars: int) -> Callable[[str], str]:
    """The ``--no`` parser: a negative prompt of at most ``max_chars`` characters."""

    def parse(text: str) -> str:
        if len(text) > max_chars:
            raise BadInput(f"--no: at most {max_chars} characters (got {len(text)})")
        return text

    return parse


def value_parsers(max_steps: int, max_prompt_chars: int) -> dict[str, Callable[[str], Any]]:
    """Flag name → parser of its value (``face`` is handled by the caller); ``--steps`` and
    ``--no`` follow the deployment's limits."""
    return {
        "ar": parse_ratio,
        "size": parse_size,
        "seed": parse_seed,
        "steps": _int_in("steps", 1, max_steps),
        "id": _float_in("id", 0.0, 3.0),
        "start": _int_in("start", 0, 50),
        "cfg": _float_in("cfg", 1.0, 10.0),
        "guidance": _float_in("guidance", 1.0, 10.0),
        "no": negative_parser(max_prompt_chars),
    }
