"""Each newsletter's look: the checks (contrast, fonts, logos), the footer's sandbox, the look
in the rendered digest, and the look frozen into an issue when its send starts."""

from __future__ import annotations

import hashlib
import struct
import zlib
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import IntegrityError

from mailer.db import db
from mailer.errors import ValidationError
from mailer.mail.look import (
    FONTS,
    Look,
    check_accent,
    check_font,
    check_title,
    contrast_with_white,
    sniff_image,
)
from mailer.models import Issue, IssueStatus, Newsletter
from mailer.services import deliveries, digests, looks, render
from tests.helpers.digests import add_article

NOW = datetime(2026, 11, 16, 7, 0, tzinfo=UTC)


# --- images made byte by byte -------------------------------------------------------------


def png(width: int = 3, height: int = 2, color: str = "#ff0000") -> bytes:
    """A width x height PNG: a block of `color` with a white bar across its middle."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    fill, white = bytes.fromhex(color[1:]), b"\xff\xff\xff"

    def pixel(x: int, y: int) -> bytes:
        bar = height // 3 <= y < 2 * height // 3 and width // 8 <= x < width - width // 8
        return white if bar and height >= 6 else fill

    raw = b"".join(b"\x00" + b"".join(pixel(x, y) for x in range(width))
                   for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def gif(width: int = 4, height: int = 5) -> bytes:
    return (b"GIF89a" + struct.pack("<HH", width, height) + b"\x80\x00\x00"
            + b"\x00\x00\x00\xff\xff\xff" + b",\x00\x00\x00\x00" + struct.pack("<HH", width, height)
            + b"\x00\x02\x02D\x01\x00;")


def jpeg(width: int = 7, height: int = 6) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"


# --- the accent colour, the font, the title -----------------------------------------------


def test_contrast_is_wcag_relative_luminance_against_white():
    assert contrast_with_white("#000000") == pytest.approx(21.0)
    assert contrast_with_white("#ffffff") == pytest.approx(1.0)
    # The well-known threshold pair: #767676 passes AA (4.54:1), #777777 does not (4.48:1).
    assert contrast_with_white("#767676") == pytest.approx(4.54, abs=0.01)
    assert check_accent("#767676") == "#767676"
    assert check_accent(" #1D4ED8 ") == "#1d4ed8"
    assert check_accent("#000") == "#000000"


@pytest.mark.parametrize(("color", "shown"), [("#ffcc00", "1.5"), ("#777777", "4.4")])
def test_a_low_contrast_accent_is_refused_with_the_reason(color, shown):
    with pytest.raises(ValidationError) as e:
        check_accent(color)
    assert e.value.field == "accent_color"
    assert f"{color} has a contrast of {shown}:1 against white" in e.value.message
    assert "at least 4.5:1" in e.value.message


@pytest.mark.parametrize("raw", ["", "blue", "#12345", "#1234567", "1d4ed8", "#gggggg",
                                 "#1d4ed8;background:url(x)"])
def test_an_accent_that_is_no_hex_colour_is_refused(raw):
    with pytest.raises(ValidationError, match="hex colour"):
        check_accent(raw)


def test_fonts_come_from_the_short_list():
    for key in FONTS:
        assert check_font(key) == key
    assert "serif" in FONTS["georgia"][1] and "sans-serif" in FONTS["verdana"][1]
    with pytest.raises(ValidationError, match="Pick a header font from the list"):
        check_font("Comic Sans; color: red")


def test_masthead_title_is_one_line_of_at_most_200():
    assert check_title("  The Morning Brief ") == "The Morning Brief"
    assert check_title("") is None
    with pytest.raises(ValidationError, match="one line"):
        check_title("Morning\r\nBcc: x@example.com")
    with pytest.raises(ValidationError, match="at most 200"):
        check_title("x" * 201)


# --- logos ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "name", "kind", "size"), [
    (png(3, 2), "logo.png", "png", (3, 2)),
    (gif(4, 5), "logo.GIF", "gif", (4, 5)),
    (jpeg(7, 6), "logo.jpeg", "jpeg", (7, 6)),
    (jpeg(7, 6), "logo.jpg", "jpeg", (7, 6)),
    (png(1, 1), "", "png", (1, 1)),
])
def test_png_jpeg_and_gif_are_recognised_with_their_size(data, name, kind, size):
    image = sniff_image(data, name)
    assert (image.kind, (image.width, image.height)) == (kind, size)


@pytest.mark.parametrize(("data", "name", "message"), [
    (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "logo.svg",
     "SVG logos are not accepted"),
    (b'<?xml version="1.0"?><svg/>', "logo.png", "SVG logos are not accepted"),
    (png(), "logo.svg", "SVG logos are not accepted"),
    (b"name,email\nAda,ada@example.com\n", "readers.csv", "not an image"),
    (b"%PDF-1.7 ...", "logo.png", "not an image"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "logo.png", "header is damaged"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "logo.jpg", "header is damaged"),
    (png(5000, 10), "wide.png", "each side must be between 1 and 4000"),
    (png(0, 10), "zero.png", "each side must be between 1 and 4000"),
    (gif(), "logo.png", "named .png but it is a GIF"),
])
def test_anything_else_is_refused_with_a_clear_reason(data, name, message):
    with pytest.raises(ValidationError) as e:
        sniff_image(data, name)
    assert e.value.field == "logo" and message in e.value.message


def stored_name(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16] + ".png"


def test_a_logo_is_stored_under_its_content_hash(app):
    settings = app.extensions["mailer"].settings
    data = png(8, 8)
    name = looks.store_logo(settings, data, "Our Logo.png")
    assert name == stored_name(data)
    path, content_type = looks.logo_file(settings, name)
    assert path.read_bytes() == data and content_type == "image/png"
    assert looks.store_logo(settings, data, "again.png") == name  # same bytes, same name
    assert looks.store_logo(settings, gif(), "g.gif").endswith(".gif")
    for bad in ("../secret_key", "secret_key", name.upper(), name + ".png", "0" * 16 + ".svg"):
        assert looks.logo_file(settings, bad) is None


def test_a_logo_above_the_size_limit_is_refused(app):
    settings = app.extensions["mailer"].settings
    assert settings.logo_max_bytes == 1024 * 1024
    big = png() + b"\x00" * settings.logo_max_bytes
    with pytest.raises(ValidationError, match=r"The logo is 1\.0 MB; the largest accepted is 1\.0 MB"):
        looks.store_logo(settings, big, "big.png")
    assert not list(looks.logo_dir(settings).glob("*")) or all(
        p.stat().st_size <= settings.logo_max_bytes for p in looks.logo_dir(settings).iterdir())


@pytest.mark.parametrize(("raw", "message"), [
    ("http://cdn.example/logo.png", "must be an https:// address"),
    ("javascript:alert(1)", "must be an https:// address"),
    ("logo.png", "must be an https:// address"),
    ("https://cdn.example/logo.svg", "SVG logos are not accepted"),
    ("https://user:pw@cdn.example/logo.png", "plain https:// host"),
    ("https://cdn.example/a b.png", "not a valid address"),
    ("https://cdn.example:99999/logo.png", "not a valid address"),
])
def test_a_logo_url_must_be_plain_https(raw, message):
    with pytest.raises(ValidationError, match=message):
        looks.check_logo_url(raw)


def test_a_good_logo_url_is_kept():
    assert looks.check_logo_url(" https://cdn.example/logo.png ") == "https://cdn.example/logo.png"
    assert looks.check_logo_url("") is None


# --- the footer, sandboxed like the intro -------------------------------------------------


def test_the_footer_is_markdown_cleaned_like_the_intro():
    html, text = looks.footer(
        "**{{ list_name }}** is made in [Berlin](https://daily.example/about).\n\n"
        "<script>alert(1)</script> [x](javascript:alert(1))", "The Daily")
    assert "<strong>The Daily</strong>" in html
    assert 'href="https://daily.example/about"' in html
    assert "<script" not in html and "href=\"javascript" not in html
    assert "The Daily" in text and "<strong>" not in text


@pytest.mark.parametrize(("source", "message"), [
    ("{{ date }}", "footer cannot be rendered"),
    ("{% for %}", "footer has a template error"),
    ("{{ 'x' * 100000 }}", "footer is not allowed"),
    ("{{ ''.__class__.__mro__ }}", "footer"),
])
def test_the_footer_sandbox_refuses_what_the_intro_refuses(source, message):
    with pytest.raises(ValidationError, match=message):
        looks.footer(source, "The Daily")


# --- the look in the digest, frozen at the send -------------------------------------------


def _newsletter(**look) -> Newsletter:
    nl = Newsletter(slug="daily", name="The Daily Test", **look)
    db.session.add(nl)
    db.session.flush()
    return nl


def _issue(rt, newsletter: Newsletter) -> Issue:
    for i in range(2):
        add_article(db.session, f"Story number {i}", NOW - timedelta(hours=i + 1))
    issue = digests.create_issue(db.session, rt.settings, rt.popularity, now=NOW, popular_m=0)
    issue.newsletter_id = newsletter.id
    db.session.commit()
    return issue


def test_the_digest_wears_its_newsletters_look(app):
    rt = app.extensions["mailer"]
    nl = _newsletter(accent_color="#0f766e", header_font="verdana", masthead_title="Morning Brief",
                     logo_url="https://cdn.daily.example/brief.png",
                     footer_md="Made by the *newsroom* of {{ list_name }}.")
    issue = _issue(rt, nl)
    _, html, text = render.render_variant(db.session, issue, "", rt.settings)
    assert 'src="https://cdn.daily.example/brief.png"' in html
    assert "Morning Brief</a>" in html
    assert "color: #0f766e" in html or "color:#0f766e" in html
    assert "Verdana, Geneva" in html
    assert "Made by the <em>newsroom</em> of The Daily Test." in html
    assert text.startswith("Morning Brief - ")
    assert "Made by the *newsroom* of The Daily Test." in text
    assert "#b91c1c" not in html  # the old fixed red of section titles is the accent now


def test_a_sent_issue_keeps_the_look_frozen_when_its_send_started(app):
    rt = app.extensions["mailer"]
    nl = _newsletter(accent_color="#0f766e", masthead_title="Old Masthead",
                     footer_md="Old footer.")
    issue = _issue(rt, nl)
    assert issue.look is None
    deliveries.start_send(db.session, issue.id, settings=rt.settings)  # nobody to send to
    db.session.commit()
    frozen = Look.from_json(issue.look, looks.plain(rt.settings))
    assert (frozen.title, frozen.accent) == ("Old Masthead", "#0f766e")

    looks.update(db.session, rt.settings, nl, {
        "accent_color": "#7c2d12", "header_font": "system", "masthead_title": "New Masthead",
        "footer_md": "New footer.", "logo_url": ""})
    db.session.commit()
    db.session.expire_all()
    issue = db.session.get(Issue, issue.id)
    assert issue.status in (IssueStatus.SENDING, IssueStatus.FINISHED)

    view = render.public_view(db.session, issue, rt.settings)
    assert (view["look"].title, view["look"].accent) == ("Old Masthead", "#0f766e")
    assert view["look"].footer_html == "<p>Old footer.</p>\n"
    _, html, _ = render.render_variant(db.session, issue, "", rt.settings)
    assert "Old Masthead" in html and "#0f766e" in html and "New Masthead" not in html
    # What comes next takes the new look.
    html = render.render_look_sample(rt.settings, looks.look_of(nl, rt.settings), nl.name)
    assert "New Masthead" in html and "#7c2d12" in html and "Old Masthead" not in html


def test_a_frozen_look_is_checked_again_when_read(app):
    rt = app.extensions["mailer"]
    fallback = looks.plain(rt.settings)
    hostile = ('{"accent": "red;} body{display:none", "font": "x", "title": "T", '
               '"logo": "javascript:alert(1)", "footer_html": "<script>x</script><p>ok</p>"}')
    look = Look.from_json(hostile, fallback)
    assert look.accent == fallback.accent and look.font == fallback.font and look.logo is None
    nl = _newsletter()
    issue = _issue(rt, nl)
    issue.look = hostile
    assert looks.of_issue(db.session, issue, rt.settings).footer_html == "<p>ok</p>"
    assert Look.from_json("not json", fallback) == fallback


def test_an_update_with_one_bad_field_changes_nothing(app):
    rt = app.extensions["mailer"]
    nl = _newsletter(accent_color="#0f766e")
    with pytest.raises(ValidationError, match="contrast"):
        looks.update(db.session, rt.settings, nl, {
            "accent_color": "#ffcc00", "header_font": "system", "masthead_title": "X",
            "footer_md": "", "logo_url": ""}, logo=(png(), "logo.png"))
    assert (nl.accent_color, nl.masthead_title, nl.logo_file) == ("#0f766e", None, None)


def test_an_uploaded_logo_is_shown_at_its_size_within_the_box(app):
    from mailer.mail.look import shown_size

    assert shown_size(120, 40) == (120, 40)  # small logos are never scaled up
    assert shown_size(960, 160) == (240, 40)  # wide: limited by the width
    assert shown_size(100, 400) == (20, 80)  # tall: limited by the height
    rt = app.extensions["mailer"]
    nl = _newsletter(logo_file=looks.store_logo(rt.settings, png(600, 100), "wide.png"))
    issue = _issue(rt, nl)
    _, html, _ = render.render_variant(db.session, issue, "", rt.settings)
    assert f'src="{rt.settings.base_url}/logos/{nl.logo_file}"' in html
    assert 'width="240" height="40"' in html  # for mail clients that ignore CSS sizes
    look = looks.look_of(nl, rt.settings)
    assert Look.from_json(look.to_json(), looks.plain(rt.settings)) == look


# --- a logo file no look shows any more goes with the commit that dropped it --------------


FIELDS = {"accent_color": "#0f766e", "header_font": "system", "masthead_title": "",
          "footer_md": "", "logo_url": ""}


def test_a_replaced_logo_file_goes_with_the_commit_and_stays_after_a_rollback(app):
    """No caller calls forget_logos: the service that replaced the logo arranged it."""
    rt = app.extensions["mailer"]
    nl = _newsletter()
    first, second = png(51, 31, "#123456"), png(52, 32, "#123456")
    looks.update(db.session, rt.settings, nl, FIELDS, logo=(first, "first.png"))
    db.session.commit()
    old = looks.logo_dir(rt.settings) / nl.logo_file

    looks.update(db.session, rt.settings, nl, FIELDS, logo=(second, "second.png"))
    assert old.is_file()  # not before the commit
    db.session.rollback()
    assert old.is_file() and db.session.get(Newsletter, nl.id).logo_file == old.name

    with pytest.raises(RuntimeError), db.session.begin_nested():
        looks.update(db.session, rt.settings, nl, FIELDS, remove_logo=True)
        raise RuntimeError("the rest of the request failed")
    db.session.commit()
    assert old.is_file() and db.session.get(Newsletter, nl.id).logo_file == old.name

    looks.update(db.session, rt.settings, nl, FIELDS, logo=(second, "second.png"))
    assert old.is_file()
    db.session.commit()
    assert not old.exists()
    new = looks.logo_dir(rt.settings) / nl.logo_file
    assert new.is_file()

    looks.update(db.session, rt.settings, nl, dict(FIELDS, masthead_title="Same logo"))
    db.session.commit()
    assert new.is_file()
    looks.update(db.session, rt.settings, nl, dict(FIELDS, logo_url="https://cdn.x.example/l.png"))
    db.session.commit()
    assert nl.logo_file is None and not new.exists()


def test_a_logo_stored_by_a_save_that_does_not_commit_leaves_no_file(app):
    rt = app.extensions["mailer"]
    nl = _newsletter()
    db.session.commit()
    data = png(61, 41, "#2a4b6c")
    path = looks.logo_dir(rt.settings) / stored_name(data)
    assert not path.exists()

    looks.update(db.session, rt.settings, nl, FIELDS, logo=(data, "logo.png"))
    assert path.is_file()  # stored before the commit: the save may still go on
    db.session.rollback()  # a later step of the request failed
    assert not path.exists()
    assert db.session.get(Newsletter, nl.id).logo_file is None

    # The database refuses the rest of the save: the failed flush, then the rollback.
    looks.update(db.session, rt.settings, nl, FIELDS, logo=(data, "logo.png"))
    db.session.add(Newsletter(slug="daily", name="A second daily"))  # the slug is taken
    with pytest.raises(IntegrityError):
        db.session.flush()
    assert path.is_file()
    db.session.rollback()
    assert not path.exists()

    looks.update(db.session, rt.settings, nl, FIELDS, logo=(data, "logo.png"))
    db.session.commit()
    assert path.is_file() and db.session.get(Newsletter, nl.id).logo_file == path.name


def test_a_failed_save_keeps_a_logo_file_a_committed_look_shows(app):
    """Files are named by their content: the same image may be another look's logo."""
    rt = app.extensions["mailer"]
    data = png(62, 42, "#2a4b6c")
    other = _newsletter(logo_file=looks.store_logo(rt.settings, data, "theirs.png"))
    nl = Newsletter(slug="weekly", name="The Weekly")
    db.session.add(nl)
    db.session.commit()
    path = looks.logo_dir(rt.settings) / other.logo_file

    looks.update(db.session, rt.settings, nl, FIELDS, logo=(data, "same.png"))
    db.session.rollback()
    assert path.is_file()


def test_a_logo_stored_in_a_rolled_back_savepoint_goes_unless_the_outer_save_shows_it(app):
    """The savepoint's look is undone, but the transaction around it commits: the file is
    kept exactly when what that transaction committed shows it, and its fate is decided
    only once the transaction has ended (until then the outer work may still use it)."""
    rt = app.extensions["mailer"]
    nl = _newsletter()
    db.session.commit()
    data = png(63, 43, "#2a4b6c")
    path = looks.logo_dir(rt.settings) / stored_name(data)

    with pytest.raises(RuntimeError), db.session.begin_nested():
        looks.update(db.session, rt.settings, nl, FIELDS, logo=(data, "logo.png"))
        raise RuntimeError("the rest of the savepoint failed")
    assert path.is_file()  # the transaction goes on
    nl.masthead_title = "Another change that commits"
    db.session.commit()
    assert not path.exists()

    with pytest.raises(RuntimeError), db.session.begin_nested():
        looks.update(db.session, rt.settings, nl, FIELDS, logo=(data, "logo.png"))
        raise RuntimeError("the rest of the savepoint failed")
    nl.logo_file = path.name  # the outer work takes the same logo after all
    db.session.commit()
    assert path.is_file()

    # A savepoint released inside a transaction that then rolls back: nothing committed.
    fresh = png(64, 44, "#2a4b6c")
    fresh_path = looks.logo_dir(rt.settings) / stored_name(fresh)
    with db.session.begin_nested():
        looks.update(db.session, rt.settings, nl, FIELDS, logo=(fresh, "fresh.png"))
    assert fresh_path.is_file()
    db.session.rollback()
    assert not fresh_path.exists() and path.is_file()


def test_two_saves_of_the_same_image_at_once_one_failing_leave_the_committed_ones_file(app):
    """Two transactions upload the same image: the one that fails deletes the file, which no
    committed look shows yet, then the other commits a look that shows it."""
    import threading

    from sqlalchemy import event
    from sqlalchemy.orm import Session

    rt = app.extensions["mailer"]
    first = _newsletter()
    second = Newsletter(slug="weekly", name="The Weekly")
    db.session.add(second)
    db.session.commit()
    data = png(65, 45, "#2a4b6c")
    path = looks.logo_dir(rt.settings) / stored_name(data)

    looks.update(db.session, rt.settings, first, FIELDS, logo=(data, "logo.png"))
    stored, failed, errors = threading.Event(), threading.Event(), []

    def the_other_save():
        try:
            with Session(bind=db.engine) as session:
                # Its file is stored before its flush (on SQLite the flush then waits for
                # the first save's lock).
                event.listen(session, "before_flush", lambda *_: stored.set())
                looks.update(session, rt.settings, session.get(Newsletter, second.id),
                             FIELDS, logo=(data, "same.png"))
                failed.wait(30)
                session.commit()
        except Exception as e:  # noqa: BLE001 - the test reports it
            errors.append(e)
            stored.set()

    other = threading.Thread(target=the_other_save)
    other.start()
    try:
        assert stored.wait(30)
        db.session.rollback()  # the first save fails: its file is not shown by any commit
    finally:
        failed.set()
        other.join(60)
    assert not errors
    assert db.session.get(Newsletter, second.id).logo_file == path.name
    assert path.is_file()


def test_a_logo_file_being_deleted_as_a_look_showing_it_commits_stays(app):
    """forget_logos looks whether a committed look shows the file, then deletes it: a save
    of the same image committed in between (here while it looks at the issues' frozen
    looks, after the newsletters') keeps the file."""
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    rt = app.extensions["mailer"]
    nl_id = _newsletter().id
    db.session.commit()
    data = png(66, 46, "#2a4b6c")
    name = looks.store_logo(rt.settings, data, "logo.png")  # a failed save's, say
    queries = []

    def commit_the_other_save(_state):
        queries.append(_state.statement)
        if len(queries) == 2:
            with Session(bind=db.engine) as session:
                looks.update(session, rt.settings, session.get(Newsletter, nl_id), FIELDS,
                             logo=(data, "same.png"))
                session.commit()

    with Session(bind=db.engine) as deleting:
        event.listen(deleting, "do_orm_execute", commit_the_other_save)
        assert looks.forget_logos(deleting, rt.settings, [name]) == []
    assert db.session.get(Newsletter, nl_id).logo_file == name
    assert (looks.logo_dir(rt.settings) / name).is_file()
    assert not list(looks.logo_dir(rt.settings).glob(".forget-*"))  # put back, not copied


def test_a_newsletter_removed_by_the_service_alone_takes_its_logo_file_at_the_commit(app):
    from mailer.services import newsletters

    rt = app.extensions["mailer"]
    db.session.add(Newsletter(slug="spare", name="Spare"))  # the last one stays
    nl = _newsletter(logo_file=looks.store_logo(rt.settings, png(53, 33, "#123456"), "a.png"))
    db.session.commit()
    path = looks.logo_dir(rt.settings) / nl.logo_file

    newsletters.remove(db.session, nl, settings=rt.settings)
    db.session.rollback()
    assert path.is_file()

    nl = db.session.get(Newsletter, nl.id)
    newsletters.remove(db.session, nl, settings=rt.settings)
    assert path.is_file()
    db.session.commit()
    assert not path.exists()
