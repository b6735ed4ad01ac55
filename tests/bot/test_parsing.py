"""Table tests of command parsing: valid and invalid inputs, and the one-line errors."""

from __future__ import annotations

import pytest

from bot.core import parsing
from bot.core.errors import BadInput
from bot.core.limits import build_settings, parse_overrides, size_for_ratio
from storage.config import LimitSettings

LIMITS = LimitSettings()


@pytest.mark.parametrize(
    ("text", "name", "rest"),
    [
        ("/imagine a cat", "imagine", "a cat"),
        ("  /Face add me  ", "face", "add me"),
        ("/imagine@pulid_bot a cat --ar 3:4", "imagine", "a cat --ar 3:4"),
        ("/jobs", "jobs", ""),
        ("/batch me\none\ntwo", "batch", "me\none\ntwo"),
    ],
)
def test_split_command(text: str, name: str, rest: str) -> None:
    assert parsing.split_command(text) == (name, rest)


@pytest.mark.parametrize("text", ["imagine a cat", "", "/ imagine", "/123"])
def test_split_command_rejects_non_commands(text: str) -> None:
    with pytest.raises(BadInput, match="start with /"):
        parsing.split_command(text)


@pytest.mark.parametrize(
    ("text", "prompt", "values"),
    [
        ("a cat", "a cat", {}),
        ("a cat --ar 3:4 --seed 7", "a cat", {"ar": "3:4", "seed": "7"}),
        (
            'portrait --steps 28 --id 1.1 --start 2 --cfg 3.5 --no "text, blur"',
            "portrait",
            {"steps": "28", "id": "1.1", "start": "2", "cfg": "3.5", "no": "text, blur"},
        ),
        ("a cat —ar 1:1", "a cat", {"ar": "1:1"}),
        ("a cat --AR 1:1 --iw 0.8", "a cat", {"ar": "1:1", "id": "0.8"}),
        ("a well-known man -- smiling", "a well-known man -- smiling", {}),
        ("x--ar 1:1", "x--ar 1:1", {}),
        ("one --seed 3\ntwo\nthree --steps 4", "one\ntwo\nthree", {"seed": "3", "steps": "4"}),
        ("a cat --no “blurry face”", "a cat", {"no": "blurry face"}),
        ("--face bob a cat", "", {"face": "bob a cat"}),
    ],
)
def test_extract_flags(text: str, prompt: str, values: dict[str, str]) -> None:
    flags = parsing.extract_flags(text)
    assert flags.text == prompt
    assert dict(flags.values) == values


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("a cat --foo 1", r"unknown parameter --foo \(known: --ar"),
        ("a cat --seed 1 --seed 2", "--seed is given twice"),
        ("a cat --ar 1:1 --aspect 2:3", "--aspect is given twice"),
        ("a cat --seed", "--seed needs a value"),
        ("a cat --seed --steps 3", "--seed needs a value"),
    ],
)
def test_extract_flags_errors(text: str, error: str) -> None:
    with pytest.raises(BadInput, match=error):
        parsing.extract_flags(text)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"ar": "3:4"}, {"ar": (3, 4)}),
        ({"ar": "16/9"}, {"ar": (16, 9)}),
        ({"size": "512x768"}, {"size": (512, 768)}),
        ({"seed": "7"}, {"seed": 7}),
        ({"seed": "random"}, {"seed": None}),
        ({"seed": "4294967295"}, {"seed": 4294967295}),
        ({"steps": "50", "start": "0"}, {"steps": 50, "start": 0}),
        ({"id": "1.1", "cfg": "3.5", "guidance": "4"}, {"id": 1.1, "cfg": 3.5, "guidance": 4.0}),
        ({"no": "text"}, {"no": "text"}),
        ({"face": "bob"}, {}),
    ],
)
def test_parse_overrides(values: dict[str, str], expected: dict[str, object]) -> None:
    assert parse_overrides(values, LIMITS) == expected


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"ar": "3-4"}, r"--ar 3-4: expected an aspect ratio like 3:4"),
        ({"ar": "0:4"}, "--ar 0:4: expected an aspect ratio"),
        ({"size": "1000x1000"}, r"multiples of 16 \(try 1008x1008\)"),
        ({"size": "big"}, "--size big: expected width x height"),
        ({"seed": "-1"}, "--seed -1: expected a whole number from 0 to 4294967295"),
        ({"seed": "4294967296"}, "--seed 4294967296"),
        ({"seed": "7 a cat"}, "--seed 7 a cat: expected a whole number"),
        ({"steps": "0"}, "--steps 0: expected a whole number from 1 to 50"),
        ({"steps": "51"}, "--steps 51"),
        ({"steps": "2.5"}, "--steps 2.5"),
        ({"id": "x"}, "--id: 'x' is not a number"),
        ({"id": "3.5"}, "--id 3.5: expected a number from 0 to 3"),
        ({"id": "nan"}, "--id: 'nan' is not a finite number"),
        ({"cfg": "0.5"}, "--cfg 0.5: expected a number from 1 to 10"),
        ({"guidance": "11"}, "--guidance 11"),
        ({"start": "51"}, "--start 51"),
        ({"no": "x" * 1001}, "--no: at most 1000 characters"),
    ],
)
def test_parse_overrides_errors(values: dict[str, str], error: str) -> None:
    with pytest.raises(BadInput, match=error):
        parse_overrides(values, LIMITS)


def test_max_steps_comes_from_limits() -> None:
    with pytest.raises(BadInput, match="from 1 to 8"):
        parse_overrides({"steps": "9"}, LimitSettings(max_steps=8))


def test_the_negative_prompt_length_comes_from_limits() -> None:
    short = LimitSettings(max_prompt_chars=20)
    assert parse_overrides({"no": "x" * 20}, short) == {"no": "x" * 20}
    with pytest.raises(BadInput, match="--no: at most 20 characters"):
        parse_overrides({"no": "x" * 21}, short)
    longer = LimitSettings(max_prompt_chars=2000)
    assert parse_overrides({"no": "x" * 1500}, longer) == {"no": "x" * 1500}


@pytest.mark.parametrize(
    ("text", "box"),
    [
        ("10,20,100,200", (10, 20, 100, 200, False)),
        ("0.1, 0.2, 0.5, 0.5", (0.1, 0.2, 0.5, 0.5, True)),
        ("10%,20%,50%,50%", (0.1, 0.2, 0.5, 0.5, True)),
        ("0,0,1,1", (0, 0, 1, 1, True)),
    ],
)
def test_parse_crop(text: str, box: tuple[float, float, float, float, bool]) -> None:
    crop = parsing.parse_crop(text)
    assert (crop.x, crop.y, crop.w, crop.h, crop.relative) == pytest.approx(box)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("1,2,3", "expected four numbers"),
        ("a,b,c,d", "'a' is not a number"),
        ("-1,0,10,10", "x and y must be ≥ 0"),
        ("0,0,0,10", "width and height > 0"),
        ("0.5,0.5,0.6,0.2", "reaches outside the image"),
        ("10%,0%,95%,50%", "reaches outside the image"),
    ],
)
def test_parse_crop_errors(text: str, error: str) -> None:
    with pytest.raises(BadInput, match=error):
        parsing.parse_crop(text)


@pytest.mark.parametrize("name", ["me", "Bob_2", "a-b", "x" * 32])
def test_check_name_accepts(name: str) -> None:
    assert parsing.check_name(name) == name


@pytest.mark.parametrize("name", ["", "two words", "x" * 33, "émile", "a/b"])
def test_check_name_rejects(name: str) -> None:
    with pytest.raises(BadInput, match="must be 1–32 letters"):
        parsing.check_name(name)


@pytest.mark.parametrize(
    ("text", "prompts"),
    [
        ("one\ntwo\n\nthree ", ["one", "two", "three"]),
        ("one | two|three", ["one", "two", "three"]),
        ("one | two\nthree", ["one | two", "three"]),
        ("   ", []),
    ],
)
def test_split_prompts(text: str, prompts: list[str]) -> None:
    assert parsing.split_prompts(text) == prompts


@pytest.mark.parametrize(("text", "job"), [("12", 12), ("#7", 7), (" 3 ", 3)])
def test_parse_job_id(text: str, job: int) -> None:
    assert parsing.parse_job_id(text) == job


@pytest.mark.parametrize("text", ["", "x", "-1", "1.5"])
def test_parse_job_id_rejects(text: str) -> None:
    with pytest.raises(BadInput, match="is not a job id"):
        parsing.parse_job_id(text)


@pytest.mark.parametrize(("text", "number"), [("1", 1), ("12", 12)])
def test_parse_face_number(text: str, number: int) -> None:
    assert parsing.parse_face_number(text) == number


@pytest.mark.parametrize("text", ["0", "x", "-2", "100"])
def test_parse_face_number_rejects(text: str) -> None:
    with pytest.raises(BadInput, match="expected a face number"):
        parsing.parse_face_number(text)


def test_split_args_quotes_and_errors() -> None:
    assert parsing.split_args('add me "my photo.jpg" face 2') == [
        "add",
        "me",
        "my photo.jpg",
        "face",
        "2",
    ]
    with pytest.raises(BadInput, match="cannot read the arguments"):
        parsing.split_args('add me "unclosed')


# -- sizes and merged settings -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratio", "max_pixels"),
    [((1, 1), 1536**2), ((3, 4), 1536**2), ((16, 9), 1536**2), ((4, 1), 1536**2), ((2, 3), 512**2)],
)
def test_size_for_ratio_is_multiple_of_16_under_cap(
    ratio: tuple[int, int], max_pixels: int
) -> None:
    w, h = size_for_ratio(*ratio, max_pixels)
    assert w % 16 == 0 and h % 16 == 0
    assert w * h <= max_pixels
    assert w / h == pytest.approx(ratio[0] / ratio[1], rel=0.08)


def test_size_for_ratio_default_area_and_extremes() -> None:
    assert size_for_ratio(1, 1, 1536**2) == (1024, 1024)
    assert size_for_ratio(3, 4, 1536**2) == (880, 1184)
    assert size_for_ratio(1, 1, 512**2) == (512, 512)
    with pytest.raises(BadInput, match="--ar 1:10 is too far from square"):
        size_for_ratio(1, 10, 1536**2)


def test_build_settings_layers() -> None:
    saved = {"ar": (1, 1), "steps": 20, "seed": 5}
    gs = build_settings(saved, {}, LIMITS)
    assert (gs.width, gs.height, gs.steps, gs.seed) == (1024, 1024, 20, 5)
    gs = build_settings(saved, {"size": (512, 768), "seed": None, "id": 1.3}, LIMITS)
    assert (gs.width, gs.height, gs.steps, gs.seed, gs.id_weight) == (512, 768, 20, None, 1.3)
    gs = build_settings({}, {}, LIMITS)
    assert (gs.width, gs.height, gs.steps, gs.seed) == (896, 1152, 28, None)


def test_build_settings_respects_small_caps() -> None:
    limits = LimitSettings(max_pixels=512 * 512, max_steps=8)
    gs = build_settings({}, {}, limits)
    assert gs.width * gs.height <= 512 * 512 and gs.steps == 8
    with pytest.raises(BadInput, match="over this host's limit of 262144 pixels"):
        build_settings({}, {"size": (1024, 1024)}, limits)


@pytest.mark.parametrize(
    ("inline", "error"),
    [
        ({"start": 28}, "--start 28 must be below --steps 28"),
        ({"steps": 4, "start": 4}, "--start 4 must be below --steps 4"),
        ({"size": (128, 256)}, "each side must be 256–2048"),
    ],
)
def test_build_settings_errors(inline: dict[str, object], error: str) -> None:
    with pytest.raises(BadInput, match=error):
        build_settings({}, inline, LIMITS)
