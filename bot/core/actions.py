"""Stateless button action ids: everything a press needs is in the id, so buttons survive restarts.

Grammar (each id is ASCII and at most 40 characters, inside Discord's 100 and Telegram's 64)::

    rr:<job>        re-roll: the same job again with fresh random seeds
    va:<job>:<i>    vary: image <i> of <job> again, same prompt and settings, a nearby seed
    us:<job>:<i>    use seed: make the seed of image <i> the presser's default
    rm:<job>        delete: the job and its images (the adapter removes the message)
    cx:<job>        cancel a queued or running job
    fc:<job>:<n>    face choice: redo face job <job> with face number <n>
    cs:<uid>:y|n    consent accept / decline, only for internal user <uid>
    fg:<uid>:y|n    /forget confirm / keep, only for internal user <uid>

Job buttons check at press time that the job belongs to the presser; consent and forget buttons
carry the internal id of the one user they are meant for.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from bot.core.errors import BadInput


class Verb(enum.StrEnum):
    REROLL = "rr"
    VARY = "va"
    USE_SEED = "us"
    DELETE = "rm"
    CANCEL = "cx"
    FACE_CHOICE = "fc"
    CONSENT = "cs"
    FORGET = "fg"


_JOB_ONLY = {Verb.REROLL, Verb.DELETE, Verb.CANCEL}
_JOB_INDEX = {Verb.VARY, Verb.USE_SEED, Verb.FACE_CHOICE}
_USER_YES = {Verb.CONSENT, Verb.FORGET}


@dataclass(frozen=True)
class Action:
    """A decoded action id: a verb and the job (with an index) or the user (with yes/no)."""

    verb: Verb
    job_id: int | None = None
    index: int | None = None
    user_id: int | None = None
    yes: bool = False

    def encode(self) -> str:
        """The compact action id for a button."""
        if self.verb in _JOB_ONLY:
            return f"{self.verb.value}:{self.job_id}"
        if self.verb in _JOB_INDEX:
            return f"{self.verb.value}:{self.job_id}:{self.index}"
        return f"{self.verb.value}:{self.user_id}:{'y' if self.yes else 'n'}"


def parse_action(action_id: str) -> Action:
    """Decode an action id; :class:`BadInput` if it is not one of ours."""
    verb_text, _, rest = action_id.partition(":")
    try:
        verb = Verb(verb_text)
        parts = rest.split(":")
        if verb in _JOB_ONLY and len(parts) == 1:
            return Action(verb, job_id=_id(parts[0]))
        if verb in _JOB_INDEX and len(parts) == 2:
            return Action(verb, job_id=_id(parts[0]), index=_id(parts[1]))
        if verb in _USER_YES and len(parts) == 2 and parts[1] in ("y", "n"):
            return Action(verb, user_id=_id(parts[0]), yes=parts[1] == "y")
    except ValueError:
        pass
    raise BadInput(f"unknown button action {action_id[:40]!r}")


def _id(text: str) -> int:
    if not text.isdigit() or len(text) > 18:
        raise ValueError(text)
    return int(text)


def reroll(job_id: int) -> str:
    return Action(Verb.REROLL, job_id=job_id).encode()


def vary(job_id: int, index: int) -> str:
    return Action(Verb.VARY, job_id=job_id, index=index).encode()


def use_seed(job_id: int, index: int) -> str:
    return Action(Verb.USE_SEED, job_id=job_id, index=index).encode()


def delete(job_id: int) -> str:
    return Action(Verb.DELETE, job_id=job_id).encode()


def cancel(job_id: int) -> str:
    return Action(Verb.CANCEL, job_id=job_id).encode()


def face_choice(job_id: int, number: int) -> str:
    return Action(Verb.FACE_CHOICE, job_id=job_id, index=number).encode()


def consent(user_id: int, yes: bool) -> str:
    return Action(Verb.CONSENT, user_id=user_id, yes=yes).encode()


def forget(user_id: int, yes: bool) -> str:
    return Action(Verb.FORGET, user_id=user_id, yes=yes).encode()
