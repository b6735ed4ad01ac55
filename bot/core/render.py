"""Replies about jobs: receipts, progress lines and finished results (pure functions).

A finished job's note (the worker's summary: scores, quality notes) is the second line of its
result reply, done or failed. A refused job's reply shows its preview result (the faces found,
numbered) and, for a several-faces refusal, one button per face: built from the job's stored
:class:`~storage.schemas.Refusal`, never from the wording of its message.
"""

from __future__ import annotations

from collections.abc import Sequence

from bot.core import actions
from bot.core.messages import MAX_TEXT, Attachment, Button, ButtonStyle, Reply, ReplyKind
from storage.records import IdentitySummary, JobRecord, ResultRecord
from storage.schemas import FaceMode, FaceParams, JobKind, JobState, ResultKind

MAX_FACE_BUTTONS = 10
MAX_VARY_BUTTONS = 10
BAR = 10


def plural(n: int, word: str) -> str:
    """``1 face``, ``2 faces``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def receipt(job_id: int, kind: JobKind, position: int) -> Reply:
    """The instant answer to a queued job."""
    return Reply(
        text=f"Job #{job_id} ({kind.value}) queued — position {position} in the queue.",
        buttons=(Button("Cancel", actions.cancel(job_id)),),
        kind=ReplyKind.RECEIPT,
        job_id=job_id,
    )


def progress(job: JobRecord) -> Reply:
    """A running job's progress line (edits the receipt)."""
    head = f"Job #{job.id} ({job.kind.value})"
    if job.progress_total <= 0:
        text = f"{head} started."
    else:
        done = round(BAR * job.progress_step / job.progress_total)
        bar = "▓" * done + "░" * (BAR - done)
        text = f"{head} running: step {job.progress_step}/{job.progress_total} {bar}"
    return Reply(
        text=text,
        buttons=(Button("Cancel", actions.cancel(job.id)),),
        kind=ReplyKind.PROGRESS,
        job_id=job.id,
    )


def result(
    job: JobRecord,
    results: Sequence[ResultRecord],
    *,
    identity: IdentitySummary | None = None,
) -> Reply:
    """The reply delivering a finished job: images and scores, or the reason it failed (with
    a refused job's preview among ``results``)."""
    if job.state is JobState.CANCELLED:
        return _reply(job, f"Job #{job.id} was cancelled.")
    if job.state is JobState.FAILED:
        return _failed(job, [r for r in results if r.kind is ResultKind.PREVIEW])
    if isinstance(job.params, FaceParams):
        return _face_done(job, job.params, results, identity)
    images = [r for r in results if r.kind is ResultKind.IMAGE]
    grids = [r for r in results if r.kind is ResultKind.GRID]
    if job.kind is JobKind.COMPARE:
        return _compare_done(job, images, grids)
    return _images_done(job, images)


def _reply(
    job: JobRecord,
    text: str,
    files: Sequence[Attachment] = (),
    buttons: Sequence[Button] = (),
) -> Reply:
    return Reply(
        text=with_note(text, job.note)[:MAX_TEXT],
        files=tuple(files),
        buttons=tuple(buttons),
        kind=ReplyKind.RESULT,
        job_id=job.id,
    )


def with_note(text: str, note: str | None) -> str:
    """``text`` with the job's note as its second line (kept when a long reply is cut)."""
    if not note or not note.strip():
        return text
    line = " ".join(note.split())
    line = line[0].upper() + line[1:] + ("" if line.endswith((".", "!", "?")) else ".")
    head, _, rest = text.partition("\n")
    return "\n".join(part for part in (head, line, rest) if part)


def faces_found(job: JobRecord) -> int | None:
    """How many faces a face job was refused for (several faces, none chosen); else None."""
    if job.kind is not JobKind.FACE or job.state is not JobState.FAILED or job.refusal is None:
        return None
    return job.refusal.face_choice


def _failed(job: JobRecord, previews: Sequence[ResultRecord]) -> Reply:
    message = job.error_user or "the job failed."
    text = f"Job #{job.id} failed: {message}"
    shown = previews if job.refusal is not None else ()  # not a failed job's progress preview
    name, what = f"job{job.id}-faces.png", "the faces found, numbered"
    files = [Attachment(name, r.png, what) for r in shown]
    found = faces_found(job)
    if found is None:
        return _reply(job, text, files)
    count = min(found, MAX_FACE_BUTTONS)
    buttons = [Button(f"Face {n}", actions.face_choice(job.id, n)) for n in range(1, count + 1)]
    return _reply(job, text, files, buttons)


def _face_done(
    job: JobRecord,
    params: FaceParams,
    results: Sequence[ResultRecord],
    identity: IdentitySummary | None,
) -> Reply:
    verb = "Saved face" if params.mode is FaceMode.ADD else "Added a photo to face"
    text = f"{verb} '{params.name}'."
    if identity is not None:
        photos = "photo" if identity.n_refs == 1 else "photos"
        default = ", your default face" if identity.is_default else ""
        text = f"{verb} '{identity.name}' ({identity.n_refs} {photos}{default})."
    files = [_image_file(job, r) for r in results]
    hint = f"Use it: /imagine a portrait --face {params.name}"
    return _reply(job, f"Job #{job.id}: {text} {hint}", files)


def _images_done(job: JobRecord, images: Sequence[ResultRecord]) -> Reply:
    if len(images) == 1:
        only = images[0]
        text = f"Job #{job.id} done: {_caption(only)}"
        buttons = [
            Button("Re-roll", actions.reroll(job.id)),
            Button("Vary", actions.vary(job.id, only.index)),
            Button("Use seed", actions.use_seed(job.id, only.index)),
            Button("Delete", actions.delete(job.id), ButtonStyle.DANGER),
        ]
        return _reply(job, text, [_image_file(job, only)], buttons)
    lines = [f"Job #{job.id} done: {len(images)} images."]
    lines += [f"{r.index + 1}. {_caption(r)}" for r in images]
    buttons = [Button("Re-roll", actions.reroll(job.id))]
    buttons += [
        Button(f"Vary {r.index + 1}", actions.vary(job.id, r.index))
        for r in images[:MAX_VARY_BUTTONS]
    ]
    buttons.append(Button("Delete", actions.delete(job.id), ButtonStyle.DANGER))
    return _reply(job, "\n".join(lines), [_image_file(job, r) for r in images], buttons)


def _compare_done(
    job: JobRecord, images: Sequence[ResultRecord], grids: Sequence[ResultRecord]
) -> Reply:
    scores = [r.identity_score for r in images if r.identity_score is not None]
    mean = ""  # the worker's note gives the mean with how many images had a face
    if scores and not job.note:
        mean = f" Mean likeness {sum(scores) / len(scores):.2f}."
    lines = [f"Job #{job.id} done: the face across {len(images)} prompts.{mean}"]
    lines += [f"{r.index + 1}. {_score(r)} — {_short(r.prompt or '')}" for r in images]
    files = [_image_file(job, g) for g in grids] or [_image_file(job, r) for r in images]
    buttons = [
        Button("Re-roll", actions.reroll(job.id)),
        Button("Delete", actions.delete(job.id), ButtonStyle.DANGER),
    ]
    return _reply(job, "\n".join(lines), files, buttons)


def _caption(r: ResultRecord) -> str:
    parts = [f"“{_short(r.prompt or '')}”"] if r.prompt else []
    if r.seed is not None:
        parts.append(f"seed {r.seed}")
    if r.identity_score is not None:
        parts.append(f"likeness {r.identity_score:.2f}")
    return " · ".join(parts)


def _score(r: ResultRecord) -> str:
    return "likeness n/a" if r.identity_score is None else f"likeness {r.identity_score:.2f}"


def _short(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _image_file(job: JobRecord, r: ResultRecord) -> Attachment:
    """A result as a file; generated unless it is a face job's thumbnail (a crop of a photo)."""
    tag = "grid" if r.kind is ResultKind.GRID else str(r.index + 1)
    generated = job.kind is not JobKind.FACE and r.kind is not ResultKind.PREVIEW
    return Attachment(f"job{job.id}-{tag}.png", r.png, _short(r.prompt or "", 200), generated)
