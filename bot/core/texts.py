"""User-facing help and consent texts (the same on every platform)."""

from __future__ import annotations

from storage.config import LimitSettings, StorageSettings

CONSENT = """\
Before saving a face, please confirm:
• You are this person, or you have their permission to use their face.
• The photo is turned into a face embedding and a small thumbnail, stored on this bot's host \
and visible only to you. The photo itself is {photos}.
• Images are made by a model and are tagged "AI-generated". Do not use them to deceive, \
harass or impersonate anyone.
• /forget erases all your faces, jobs and images at any time."""

SUMMARY = """\
Commands:
/face add NAME IMAGE [crop x,y,w,h] [face N] — save a face (first time: consent)
/face more NAME IMAGE — add another photo of that face
/face list | show NAME | default NAME | delete NAME | export NAME | import FILE [NAME]
/imagine PROMPT [--face NAME] [--ar 3:4 --seed 7 …] — one image of your face
/batch [NAME] PROMPTS — one image per line (at most {max_batch})
/compare [NAME] [PROMPTS] — your face across prompts, one grid with identity scores
  (NAME: a first line naming one of your saved faces, or --face NAME; else your default)
/jobs — your queue · /cancel ID · /settings [--flags] · /forget · /help TOPIC
Topics: face, imagine, params, batch, compare, settings, forget"""

TOPICS = {
    "face": """\
/face add NAME IMAGE — save the face in IMAGE as NAME (letters, digits, - and _).
  crop x,y,w,h — choose the face inside this box (pixels, percent, or fractions 0–1)
  face N — choose face number N (faces count left to right)
  With several faces and no choice, the bot shows them numbered with a button per face.
/face more NAME IMAGE — add a photo of the same person; photos are fused.
/face list · /face show NAME · /face default NAME · /face delete NAME
/face export NAME — download the face as a .safetensors file
/face import FILE [NAME] — load a face exported from this bot (same models only)""",
    "imagine": """\
/imagine PROMPT — one image of your default face. Choose another with --face NAME.
Add parameters at the end, e.g. /imagine a chef in Paris --ar 3:4 --seed 7. See /help params.
Buttons under an image: Re-roll (new seed), Vary (same prompt, nearby seed),
Use seed (make its seed your default), Delete (the job and its images; yours only).""",
    "params": """\
--ar W:H  aspect ratio (sizes are multiples of 16, at most {max_pixels} pixels)
--size WxH  exact size, multiples of 16
--seed N|random  --steps N (1–{max_steps})  --guidance X (1–10)
--id X  identity weight 0–3 (1 default; higher = more likeness, less freedom)
--start N  step where the identity starts (0–4 = stronger likeness)
--cfg X  true CFG scale (1 = off; >1 uses the negative prompt, twice as slow)
--no "TEXT"  negative prompt (with --cfg above 1)
--face NAME  which saved face to use""",
    "batch": """\
/batch [NAME] — then one prompt per line (or prompts separated by |), at most {max_batch}.
The first line is the face only when it is the name of one of your saved faces (or write
--face NAME); otherwise it is a prompt too, and your default face is used.
The face is encoded once; parameters (--ar, --steps…) apply to every prompt.""",
    "compare": """\
/compare [NAME] — your face across a built-in set of diverse prompts; or give your own
prompts on the following lines (at most {max_compare}). NAME is the face only when it is one
of your saved faces (or write --face NAME); otherwise it is a prompt and your default is used.
The answer is one grid: the reference face, every image, and its identity score (cosine
similarity of face embeddings).""",
    "settings": """\
/settings — show your defaults. /settings --ar 3:4 --steps 20 --id 1.2 — save defaults.
/settings --seed random — unpin the seed. /settings reset — back to the host's defaults.""",
    "forget": """\
/forget — erase every face, job and image of yours on this bot (asks for confirmation).""",
}


def help_text(topic: str | None, limits: LimitSettings) -> str:
    """The summary, or one topic's text, with this host's limits filled in."""
    values = {
        "max_batch": limits.max_batch_prompts,
        "max_compare": limits.max_compare_prompts,
        "max_pixels": limits.max_pixels,
        "max_steps": limits.max_steps,
    }
    key = (topic or "").strip().lstrip("/").lower()
    if key in ("", "help"):
        return SUMMARY.format(**values)
    if key not in TOPICS:
        return f"No help on {topic!r}.\n" + SUMMARY.format(**values)
    return TOPICS[key].format(**values)


def consent_text(storage: StorageSettings) -> str:
    if storage.keep_source_photos:
        return CONSENT.format(photos="kept")
    days = f"{storage.result_retention_days:g}"
    photos = (
        "not kept once the face is saved (until then it waits for your answer here; "
        f"Decline, /forget or {days} days erase it)"
    )
    return CONSENT.format(photos=photos)
