"""The Telegram adapter's pure parts: callback data, keyboards, albums, press plans, uploads."""

from __future__ import annotations

import datetime as dt
import io
import logging

import pytest
from PIL import Image
from telegram import Chat, Document, Message, PhotoSize

from bot.core import actions
from bot.core.errors import BadInput
from bot.core.messages import Attachment, Button, ButtonStyle, Reply, ReplyKind, error_reply
from bot.telegram import keyboards, presses
from bot.telegram.handlers import addressed_to_me, telegram_admins
from bot.telegram.redact import RedactToken, redact_token
from bot.telegram.replies import (
    AI_MARK,
    CAPTION_LIMIT,
    Target,
    albums,
    caption,
    fit,
    fits_caption,
    is_photo,
)
from bot.telegram.uploads import (
    TELEGRAM_DOWNLOAD_CAP,
    Need,
    Upload,
    check_upload,
    find_upload,
    need_of,
)
from storage.schemas import Delivery

KEY = keyboards.signing_key("123:abc")
BIG_JOB = 10**17  # an action id of about 20 characters


def test_callback_data_fits_64_bytes_and_round_trips() -> None:
    ids = [*range(2_000_000_000, 2_000_000_010), 2_000_000_020, 2_000_000_021]
    data = keyboards.callback_data(actions.delete(BIG_JOB), KEY, -100123, ids)
    assert len(data.encode()) <= 64
    action, back = keyboards.parse_callback_data(data, KEY, -100123)
    assert action == actions.delete(BIG_JOB)
    assert back == ids


def test_runs_that_do_not_fit_are_dropped_not_truncated() -> None:
    scattered = list(range(10**9, 10**9 + 40, 2))  # 20 runs of one id each
    data = keyboards.callback_data(actions.delete(BIG_JOB), KEY, 5, scattered)
    assert len(data.encode()) <= 64
    _, back = keyboards.parse_callback_data(data, KEY, 5)
    assert back and back == scattered[: len(back)]


def test_tags_bind_ids_to_the_chat_and_key() -> None:
    data = keyboards.callback_data("rm:7", KEY, 5, [100, 101])
    assert keyboards.parse_callback_data(data, KEY, 6) == ("rm:7", [])
    other = keyboards.signing_key("456:def")
    assert keyboards.parse_callback_data(data, other, 5) == ("rm:7", [])
    assert keyboards.parse_callback_data("rm:7", KEY, 5) == ("rm:7", [])
    assert keyboards.parse_callback_data("rm:7|zz+999|tag", KEY, 5) == ("rm:7", [])


def test_keyboard_rows_put_danger_last_and_ids_only_on_delete() -> None:
    buttons = [Button(f"Vary {i}", actions.vary(3, i)) for i in range(1, 7)]
    buttons += [Button("Delete", actions.delete(3), ButtonStyle.DANGER)]
    markup = keyboards.markup(buttons, key=KEY, chat_id=1, media=[10, 11])
    assert markup is not None
    rows = markup.inline_keyboard
    assert [len(r) for r in rows] == [5, 1, 1]
    assert rows[-1][0].callback_data.startswith("rm:3|")
    assert rows[0][0].callback_data == "va:3:1"
    assert keyboards.markup([], key=KEY, chat_id=1) is None


@pytest.mark.parametrize("count", range(1, 32))
def test_albums_are_even_and_two_to_ten(count: int) -> None:
    sizes = albums(count)
    assert sum(sizes) == count
    assert all(2 <= s <= 10 for s in sizes) or sizes == [1]
    assert max(sizes) - min(sizes) <= 1


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, format="PNG")
    return buf.getvalue()


def test_photos_telegram_would_refuse_go_as_documents() -> None:
    assert is_photo(Attachment("a.png", _png(64, 48)))
    assert not is_photo(Attachment("strip.png", _png(2100, 100)))  # ratio over 20
    assert not is_photo(Attachment("me.safetensors", b"\0" * 10))
    assert not is_photo(Attachment("broken.png", b"not a png"))


def test_fit_never_empty_and_within_the_limit() -> None:
    assert fit("", 10) == "…"
    assert fit("x" * 20, 10) == "x" * 9 + "…"


def test_generated_images_carry_the_ai_mark_in_every_caption() -> None:
    made = Attachment("job1-1.png", b"png", "a chef", generated=True)
    crop = Attachment("job2-1.png", b"png", "")  # a face thumbnail: a crop of a photo
    assert caption("Job #1 done: “a chef”", made) == f"Job #1 done: “a chef”\n{AI_MARK}"
    assert caption("", made) == AI_MARK and caption(" ", crop) is None
    assert caption("Saved face 'me'.", crop) == "Saved face 'me'."
    long = caption("x" * 2000, made)
    assert long is not None and len(long) == CAPTION_LIMIT and long.endswith("…\n" + AI_MARK)
    assert fits_caption("y" * (CAPTION_LIMIT - 1), crop)
    assert not fits_caption("y" * (CAPTION_LIMIT - 1), made)  # then the text goes on its own


def test_delivery_reference_round_trips_message_and_topic() -> None:
    target = Target.of_delivery(Delivery(platform="telegram", channel_id="-100", message_ref="7:3"))
    assert target == Target(-100, 7, 3)
    assert Target.of_delivery(Delivery(platform="telegram", channel_id="5")) == Target(5)


def test_press_plans() -> None:
    toast = Reply("Seed 5 is now your default.", ephemeral=True)
    receipt = Reply("Job #2 queued", kind=ReplyKind.RECEIPT, job_id=2)
    gone = Reply("Deleted job #1.", ephemeral=True, remove_source=True)
    assert presses.plan("rm:1", error_reply("not yours"), editable=True).alert
    assert presses.plan("us:1:0", toast, editable=True) == presses.PressPlan(answer=toast.text)
    assert presses.plan("rr:1", receipt, editable=False) == presses.PressPlan(post=True)
    assert presses.plan("rm:1", gone, editable=False) == presses.PressPlan(
        answer=gone.text, remove_source=True
    )
    assert presses.plan("cs:4:y", receipt, editable=True).replace_source
    assert presses.plan("cs:4:y", receipt, editable=False).post
    chosen = presses.plan("fc:9:2", receipt, editable=False)
    assert chosen.drop_keyboard and chosen.post


def test_which_commands_need_which_file() -> None:
    assert need_of("/face add me crop 1,2,3,4") is Need.IMAGE
    assert need_of("/face@Bot more me") is Need.IMAGE
    assert need_of("/face import") is Need.FACE_FILE
    assert need_of("/face list") is need_of("/imagine a cat") is need_of("hello") is Need.NOTHING


def test_upload_checks() -> None:
    photo = Upload("f", "photo.jpg", 1000, is_image=True, compressed=True)
    assert check_upload(photo, Need.IMAGE, 10_000) is photo
    with pytest.raises(BadInput, match="20.0 MB"):
        check_upload(Upload("f", "p.jpg", TELEGRAM_DOWNLOAD_CAP + 1, True, True), Need.IMAGE, 10**9)
    with pytest.raises(BadInput, match="safetensors"):
        check_upload(photo, Need.FACE_FILE, 10_000)


def test_the_largest_photo_size_or_the_replied_to_file_is_used() -> None:
    chat = Chat(1, "private")
    when = dt.datetime.now(dt.UTC)
    small, large = PhotoSize("s", "us", 90, 90, 10), PhotoSize("l", "ul", 800, 600, 9000)
    photo = Message(1, when, chat, photo=[large, small])
    found = find_upload(photo)
    assert found is not None and (found.file_id, found.compressed) == ("l", True)
    heic = Document("d", "ud", file_name="IMG_1.HEIC", mime_type="image/heic")
    reply = Message(
        3, when, chat, text="/face add me", reply_to_message=Message(2, when, chat, document=heic)
    )
    found = find_upload(reply)
    assert found is not None and found.is_image and not found.compressed
    notes = Message(4, when, chat, document=Document("t", "ut", file_name="notes.txt"))
    found = find_upload(notes)
    assert found is not None and not found.is_image
    assert find_upload(Message(5, when, chat, text="/face add me")) is None


def test_caption_commands_addressed_to_this_bot() -> None:
    assert addressed_to_me("/face add me", "PulidBot", private=False)
    assert addressed_to_me("/face@pulidbot add me", "PulidBot", private=False)
    assert not addressed_to_me("/face@OtherBot add me", "PulidBot", private=False)
    assert not addressed_to_me("/weather", "PulidBot", private=False)
    assert addressed_to_me("/weather", "PulidBot", private=True)


def test_admins_are_read_from_platform_ids() -> None:
    assert telegram_admins(["telegram:12", "discord:5", "telegram:x", "telegram:-7"]) == [12, -7]


def test_the_token_is_masked_in_any_logger_message_and_exception_in_any_case(
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = "123456:AbC-secret"
    redact = RedactToken(token)
    caplog.set_level(logging.INFO)
    redact.install()
    try:
        try:
            raise RuntimeError(f"GET /bot{token}/getMe: {token.lower()}")
        except RuntimeError:
            logging.getLogger("somewhere.else").exception("failed at %s", token.upper())
    finally:
        redact.uninstall()
    logging.getLogger("somewhere.else").info("after %s", token)  # the filter is gone again
    masked, after = caplog.text.split("INFO")
    assert masked.count("<token>") == 3 and "RuntimeError" in masked
    for variant in (token, token.lower(), token.upper()):
        assert variant not in masked
    assert token in after


def test_redact_token_ignores_case_and_an_empty_token() -> None:
    assert redact_token("Broken near 123456:abc-DEF", "123456:ABC-def") == "Broken near <token>"
    assert redact_token("nothing here", "") == "nothing here"
