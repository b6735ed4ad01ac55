"""The platform-neutral command core: every command of the bot, for every adapter.

Adapters (console, Discord, Telegram, web) are thin: they turn a platform event into one core
call, and the :class:`Reply` that comes back into one platform message. Rules, limits and
storage calls live here; no adapter holds any.

Calling the core
----------------
``core = await Core.open(settings)`` (``await core.close()`` at the end). Identify the sender
with a :class:`Caller` — ``Caller(platform, user_id, channel_id=None, message_ref=None,
display_name=None)``. Users are keyed by ``(platform, user_id)``; ``channel_id`` and
``message_ref`` are opaque strings stored with each job and handed back at delivery.

Typed calls (for slash commands with options) — each ``async`` and returning a ``Reply``::

    face_add(caller, name, image: Attachment, *, crop: str | CropBox | None = None,
             face: int | None = None, make_default: bool = False)
    face_more(caller, name, image, *, crop=None, face=None)
    face_list(caller); face_show(caller, name); face_default(caller, name)
    face_delete(caller, name); face_export(caller, name)
    face_import(caller, file: Attachment, name: str | None = None)
    imagine(caller, prompt, *, face: str | None = None)       # prompt may carry --flags
    batch(caller, prompts, *, face=None)                       # one per line, or "a | b"
    compare(caller, prompts="", *, face=None)                  # "" = the built-in set
    jobs(caller); cancel(caller, job_id: int | str); settings(caller, changes="")
    forget(caller); help(caller, topic=None); ban(caller, target); unban(caller, target)
    press(caller, action_id)                                   # every button of every adapter

Two calls return data, not replies, and never raise for the user's sake::

    face_names(caller, prefix="", limit=25) -> list[str]   # autocompletion: own faces only,
                                                           # creates no user
    remember_receipt(job_id, message_ref=None, *, extra=None) -> bool

Text platforms use ``Dispatcher(core).handle(caller, text, uploads=(), open_file=None)``, which
parses ``/command args`` (see ``/help``) and makes the same calls. No call raises for a user's
mistake and none waits for a generation: failures come back as ``ReplyKind.ERROR`` replies,
jobs as ``ReplyKind.RECEIPT`` replies within the command's own round trip.

Replies
-------
``Reply(text, files=(), buttons=(), ephemeral=False, kind=MESSAGE, job_id=None,
remove_source=False)``:

* ``files``: ``Attachment(name, data, description, generated=False)`` — PNG images,
  ``.safetensors`` exports. A batch can carry more files than one platform message allows
  (Discord: 10); split them. ``generated`` marks a model-made image: its PNG carries the
  "AI-generated" tag; where the platform re-encodes images (Telegram photos), say it in the
  caption.
* ``buttons``: ``Button(label, action_id, style)`` in display order (lay out at most five
  per row). When pressed, call ``core.press(presser, action_id)`` and send its reply.
* ``ephemeral``: show only to the caller where the platform can (Discord); else send normally.
* ``kind``: ``MESSAGE`` send it; ``RECEIPT`` send it and remember the sent message for
  ``job_id`` — in storage, with ``core.remember_receipt(job_id, extra={...})``, so that a
  restarted bot still finds it in the job's ``Delivery``; ``PROGRESS`` edit that message (or
  drop it); ``RESULT`` send a new message (as a reply to ``message_ref`` where possible);
  ``ERROR`` a one-line failure.
* ``remove_source``: the reply answers a button whose message should now be deleted
  (result "Delete", the ``/forget`` confirmation).

Action ids (stateless, so buttons keep working after a restart; at most 40 ASCII characters):
``rr:<job>`` re-roll (new seeds) · ``va:<job>:<i>`` vary image i (same prompt, nearby seed) ·
``us:<job>:<i>`` use image i's seed ·
``rm:<job>`` delete · ``cx:<job>`` cancel · ``fc:<job>:<n>`` choose face n of a group photo ·
``cs:<uid>:y|n`` consent · ``fg:<uid>:y|n`` confirm ``/forget``. Job buttons act only for the
job's owner; consent and forget buttons carry the internal id of the one user they are for.
See :mod:`bot.core.actions`.

Delivery
--------
Each adapter runs one :class:`Deliverer` for its platform::

    Deliverer(core.db, platform, send, *, progress=None, poll_seconds=1.0,
              progress_interval=3.0, max_backoff=600.0)
    await deliverer.run()   # until deliverer.stop(); deliverer.wake() polls at once

``send(delivery, reply)`` and ``progress(delivery, reply)`` are the adapter's async callbacks;
``delivery`` is the :class:`storage.schemas.Delivery` (platform, channel_id, message_ref,
extra) the job was queued with, plus what ``remember_receipt`` added. A job is marked
delivered only after ``send`` returned without raising; a raising ``send`` is retried with
backoff, and a restarted bot resumes every undelivered job. A ``send`` that raises
:class:`Undeliverable` (the chat is gone, the bot is blocked) ends the job's delivery: it is
marked delivered with one log line and never retried.
"""

from __future__ import annotations

from bot.core.actions import Action, Verb, parse_action
from bot.core.app import Core
from bot.core.delivery import Deliverer, SendFn, Undeliverable
from bot.core.dispatch import Dispatcher
from bot.core.errors import UserError
from bot.core.messages import Attachment, Button, ButtonStyle, Caller, Reply, ReplyKind

__all__ = [
    "Action",
    "Attachment",
    "Button",
    "ButtonStyle",
    "Caller",
    "Core",
    "Deliverer",
    "Dispatcher",
    "Reply",
    "ReplyKind",
    "SendFn",
    "Undeliverable",
    "UserError",
    "Verb",
    "parse_action",
]
