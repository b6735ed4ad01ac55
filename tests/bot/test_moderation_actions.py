"""Moderation rules, button action ids and help texts (no storage needed)."""

from __future__ import annotations

import pytest

from bot.core import actions
from bot.core.actions import Action, Verb, parse_action
from bot.core.errors import BadInput, Blocked
from bot.core.messages import Caller
from bot.core.moderation import Moderation
from bot.core.texts import consent_text, help_text
from storage.config import ConfigError, LimitSettings, ModerationSettings, StorageSettings


@pytest.fixture
def moderation() -> Moderation:
    return Moderation(
        ModerationSettings(
            blocked_words=["gore", "Blood Bath"],
            blocked_patterns=[r"\bnud(e|ity)\b", r"kill\s+\w+"],
            admin_ids=["discord:42", " telegram:7 "],
        )
    )


@pytest.mark.parametrize(
    "prompt",
    ["a gore scene", "GORE", "ｇｏｒｅ in full width", "a BLOOD BATH at noon"],
)
def test_blocked_words_are_refused_and_named(moderation: Moderation, prompt: str) -> None:
    with pytest.raises(Blocked, match="blocked word '(gore|Blood Bath)'"):
        moderation.check_prompt(prompt)


@pytest.mark.parametrize("prompt", ["a nude statue", "kill   bill", "NUDITY"])
def test_blocked_patterns_are_refused(moderation: Moderation, prompt: str) -> None:
    with pytest.raises(Blocked, match="matches a blocked pattern"):
        moderation.check_prompt(prompt)


@pytest.mark.parametrize(
    "prompt", ["a gorgeous sunset", "a bloodbath-free picnic", "nudes", "a blood   bath"]
)
def test_allowed_prompts_pass(moderation: Moderation, prompt: str) -> None:
    moderation.check_prompt(prompt)  # whole words only: no error is the assertion


def test_batch_prompts_checked_each(moderation: Moderation) -> None:
    with pytest.raises(Blocked, match="'gore'"):
        moderation.check_prompts(["a cat", "more gore"])


def test_bad_pattern_fails_at_start_up() -> None:
    with pytest.raises(ConfigError, match="blocked_patterns"):
        Moderation(ModerationSettings(blocked_patterns=["(unclosed"]))


def test_admins(moderation: Moderation) -> None:
    assert moderation.is_admin(Caller("discord", "42"))
    assert moderation.is_admin(Caller("telegram", "7"))
    assert not moderation.is_admin(Caller("telegram", "42"))
    assert not moderation.is_admin(Caller("console", "local"))


@pytest.mark.parametrize(
    ("action_id", "action"),
    [
        (actions.reroll(12), Action(Verb.REROLL, job_id=12)),
        (actions.vary(12, 3), Action(Verb.VARY, job_id=12, index=3)),
        (actions.use_seed(5, 0), Action(Verb.USE_SEED, job_id=5, index=0)),
        (actions.delete(9), Action(Verb.DELETE, job_id=9)),
        (actions.cancel(9), Action(Verb.CANCEL, job_id=9)),
        (actions.face_choice(4, 2), Action(Verb.FACE_CHOICE, job_id=4, index=2)),
        (actions.consent(77, True), Action(Verb.CONSENT, user_id=77, yes=True)),
        (actions.consent(77, False), Action(Verb.CONSENT, user_id=77, yes=False)),
        (actions.forget(1, True), Action(Verb.FORGET, user_id=1, yes=True)),
    ],
)
def test_action_ids_round_trip(action_id: str, action: Action) -> None:
    assert parse_action(action_id) == action
    assert len(action_id.encode()) <= 64


def test_action_id_text() -> None:
    assert actions.reroll(12) == "rr:12"
    assert actions.vary(12, 3) == "va:12:3"
    assert actions.forget(5, True) == "fg:5:y"
    big = 10**17
    assert len(actions.face_choice(big, 99)) <= 40


@pytest.mark.parametrize(
    "action_id",
    ["", "rr", "rr:", "rr:x", "rr:1:2", "va:1", "cs:1:maybe", "zz:1", "rr:-1", "rr:1e3"],
)
def test_bad_action_ids(action_id: str) -> None:
    with pytest.raises(BadInput, match="unknown button action"):
        parse_action(action_id)


def test_help_texts_fill_in_limits() -> None:
    limits = LimitSettings(max_batch_prompts=3, max_steps=12)
    assert "at most 3" in help_text(None, limits)
    assert "(1–12)" in help_text("params", limits)
    assert help_text("/imagine", limits).startswith("/imagine PROMPT")
    assert help_text("nonsense", limits).startswith("No help on 'nonsense'")


def test_consent_text_says_whether_photos_are_kept() -> None:
    assert "not kept" in consent_text(StorageSettings())
    assert "is kept" in consent_text(StorageSettings(keep_source_photos=True))
