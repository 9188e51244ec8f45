"""The look editor: saving a look, its refusals (contrast, non-images, SVG, a 20 MB upload),
the live preview, the logo served under its hash, and the look on the public pages."""

from __future__ import annotations

import io
import re

import pytest
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from mailer.db import db
from mailer.models import Newsletter, Role
from tests.helpers.console import login, text_of, token
from tests.services.test_looks import gif, png

# These tests make every newsletter they use, the first one too.
pytestmark = pytest.mark.usefixtures("no_newsletters")

LOOK = "/admin/newsletters/daily/look"


def _newsletter() -> Newsletter:
    nl = Newsletter(slug="daily", name="The Daily Test")
    db.session.add(nl)
    db.session.commit()
    return nl


def _reload() -> Newsletter:
    db.session.remove()
    return db.session.query(Newsletter).filter_by(slug="daily").one()


def _save(client, *, logo=None, **fields):
    data = {"csrf_token": token(client, LOOK), "masthead_title": "", "accent_color": "#1d4ed8",
            "header_font": "georgia", "footer_md": "", "logo_url": "", **fields}
    if logo is not None:
        data["logo"] = FileStorage(io.BytesIO(logo[0]), logo[1])
    # Encoded here, in memory: the test client would spool a large body to a file it
    # never closes.
    boundary, body = encode_multipart(data)
    return client.post(LOOK, data=body,
                       content_type=f"multipart/form-data; boundary={boundary}")


def test_an_editor_saves_a_look_with_an_uploaded_logo(app, client):
    rt = app.extensions["mailer"]
    nl = _newsletter()
    login(client, Role.EDITOR, "editor@daily.example")
    page = client.get(LOOK)
    assert page.status_code == 200 and "Look of The Daily Test" in text_of(page)
    # The newsletter's page leads to it.
    assert f'href="{LOOK}"' in client.get("/admin/newsletters/daily").get_data(as_text=True)

    logo = png(40, 20)
    resp = _save(client, logo=(logo, "brand.png"), accent_color="#0F766E",
                 header_font="trebuchet", masthead_title="Morning Brief",
                 footer_md="Made in **Berlin**.")
    assert resp.status_code == 302
    nl = _reload()
    assert (nl.accent_color, nl.header_font, nl.masthead_title) == ("#0f766e", "trebuchet",
                                                                     "Morning Brief")
    assert re.fullmatch(r"[0-9a-f]{16}\.png", nl.logo_file)
    editor_page = client.get(LOOK).get_data(as_text=True)
    assert "The look of The Daily Test is saved" in text_of(editor_page)
    assert f'src="/logos/{nl.logo_file}"' in editor_page  # the current logo, by path

    served = client.get(f"/logos/{nl.logo_file}")
    assert served.status_code == 200 and served.data == logo
    assert served.mimetype == "image/png"
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    assert "max-age=31536000" in served.headers["Cache-Control"]
    assert client.get("/logos/0123456789abcdef.png").status_code == 404
    assert client.get("/logos/..%2Fsecret_key").status_code == 404

    # The public pages wear it: the logo by path (same origin), the accent and font by a
    # stylesheet of our own (the CSP allows no inline styles).
    public = client.get("/subscribe").get_data(as_text=True)
    assert f'src="/logos/{nl.logo_file}"' in public and "Morning Brief" in public
    assert "Made in <strong>Berlin</strong>." in public
    css_url = re.search(r'href="(/look/[^"]+\.css)"', public).group(1)
    assert css_url == "/look/0f766e/trebuchet.css"
    css = client.get(css_url)
    assert "--accent: #0f766e" in css.get_data(as_text=True) and css.mimetype == "text/css"
    assert client.get("/look/0f766e;x/trebuchet.css").status_code == 404
    assert client.get("/look/0f766e/comic.css").status_code == 404
    assert rt.settings.logo_max_bytes == 1024 * 1024


def test_a_low_contrast_accent_is_refused_and_nothing_changes(client):
    nl = _newsletter()
    login(client, Role.EDITOR, "editor@daily.example")
    resp = _save(client, accent_color="#ffcc00", masthead_title="Changed")
    assert resp.status_code == 400
    page = text_of(resp)
    assert "#ffcc00 has a contrast of 1.5:1 against white; links and buttons need at least 4.5:1" in page
    assert 'value="Changed"' in resp.get_data(as_text=True)  # what was typed stays
    nl = _reload()
    assert (nl.accent_color, nl.masthead_title) == ("#1d4ed8", None)


def test_non_images_svg_and_huge_uploads_are_refused_with_a_clear_message(client):
    nl = _newsletter()
    login(client, Role.EDITOR, "editor@daily.example")
    resp = _save(client, logo=(b"name,email\nada,ada@example.com\n", "logo.png"))
    assert resp.status_code == 400 and "The logo is not an image" in text_of(resp)
    resp = _save(client, logo=(b'<svg xmlns="http://www.w3.org/2000/svg"/>', "logo.svg"))
    assert resp.status_code == 400 and "SVG logos are not accepted" in text_of(resp)
    resp = _save(client, logo=(gif(), "logo.png"))
    assert resp.status_code == 400 and "named .png but it is a GIF" in text_of(resp)
    huge = png() + b"\x00" * (20 * 1024 * 1024)
    resp = _save(client, logo=(huge, "photo.png"))
    assert resp.status_code == 413
    assert "The logo is 20.0 MB; the largest accepted is 1.0 MB." in text_of(resp)
    nl = _reload()
    assert nl.logo_file is None


def test_the_preview_follows_the_typed_look_in_a_sandbox(client):
    _newsletter()
    login(client, Role.EDITOR, "editor@daily.example")
    resp = client.get(LOOK + "/preview.html", query_string={
        "accent_color": "#7c2d12", "header_font": "verdana", "masthead_title": "Typed Title",
        "footer_md": "A *typed* footer", "logo_url": "https://cdn.daily.example/l.png"})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert "Typed Title" in html and "#7c2d12" in html and "Verdana" in html
    assert 'src="https://cdn.daily.example/l.png"' in html and "A <em>typed</em> footer" in html
    assert resp.headers["Content-Security-Policy"].startswith("sandbox")
    refused = client.get(LOOK + "/preview.html", query_string={
        "accent_color": "#eeeeee", "header_font": "verdana"})
    assert "Not accepted: #eeeeee has a contrast of 1.1:1" in text_of(refused)


def test_only_editors_edit_looks(client):
    _newsletter()
    login(client, Role.OPS, "ops@daily.example")
    assert client.get(LOOK).status_code == 403
    assert client.get("/admin/newsletters/nope/look").status_code in (403, 404)


def test_every_public_page_wears_the_first_newsletters_look(client):
    nl = _newsletter()
    nl.accent_color, nl.header_font, nl.masthead_title = "#7c2d12", "verdana", "Daily Brief"
    db.session.commit()
    for path in ("/subscribe", "/archive", "/confirm/not-a-token", "/preferences/not-a-token",
                 "/unsubscribe/not-a-token"):
        page = client.get(path).get_data(as_text=True)
        assert 'href="/look/7c2d12/verdana.css"' in page, path
        assert "Daily Brief" in text_of(page), path


def test_an_external_logo_is_allowed_by_the_public_pages_csp(client):
    nl = _newsletter()
    nl.logo_url = "https://cdn.daily.example/brand.png"
    db.session.commit()
    resp = client.get("/subscribe")
    assert 'src="https://cdn.daily.example/brand.png"' in resp.get_data(as_text=True)
    assert "img-src 'self' data: https://cdn.daily.example;" in resp.headers["Content-Security-Policy"]
    other = client.get("/archive")
    assert "cdn.daily.example" in other.headers["Content-Security-Policy"]


def test_the_confirmation_mail_wears_the_first_newsletters_look(client, smtp, worker, make_email):
    nl = _newsletter()
    nl.accent_color, nl.masthead_title = "#7c2d12", "The Daily Brief"
    nl.logo_url, nl.footer_md = "https://cdn.daily.example/brand.png", "From the *newsroom*."
    db.session.commit()
    email = make_email()
    assert client.post("/api/v1/subscribe", json={"email": email}).status_code == 202
    (mail,) = smtp.wait_for(email, 1, timeout=45)
    assert "background:#7c2d12" in mail.html  # the button
    assert 'src="https://cdn.daily.example/brand.png"' in mail.html
    assert "The Daily Brief" in mail.html and "From the <em>newsroom</em>." in mail.html
    assert "/confirm/" in mail.text


def test_a_newsletters_unsubscribe_pages_wear_its_look(app, client, make_email):
    from mailer.runtime import runtime
    from tests.helpers.web import local
    from tests.web.test_newsletter_links import reader_of_two

    with app.app_context():
        uid, first, sport = reader_of_two(make_email())
        letter = db.session.get(Newsletter, sport)
        letter.accent_color, letter.masthead_title = "#7c2d12", "Sport Letter Masthead"
        db.session.commit()
        url = local(runtime().links.unsubscribe(uid, sport))
    page = client.get(url).get_data(as_text=True)
    assert 'href="/look/7c2d12/georgia.css"' in page and "Sport Letter Masthead" in page
    done = app.test_client().post(url, data={"List-Unsubscribe": "One-Click"})
    assert "Sport Letter Masthead" in done.get_data(as_text=True)


# --- logo files no look shows any more ------------------------------------------------------


def _logo_path(app, name: str):
    from mailer.services import looks

    return looks.logo_dir(app.extensions["mailer"].settings) / name


def test_a_replaced_or_removed_logo_file_is_deleted_after_the_save(app, client):
    _newsletter()
    login(client, Role.EDITOR, "editor@daily.example")
    first, second = png(41, 21, "#123456"), png(42, 22, "#123456")
    assert _save(client, logo=(first, "first.png")).status_code == 302
    first_name = _reload().logo_file
    assert _logo_path(app, first_name).is_file()

    # Replaced by an upload: the old file goes, the new one is served.
    assert _save(client, logo=(second, "second.png")).status_code == 302
    second_name = _reload().logo_file
    assert second_name != first_name
    assert not _logo_path(app, first_name).exists()
    assert client.get(f"/logos/{first_name}").status_code == 404
    assert client.get(f"/logos/{second_name}").data == second

    # A refused save changes nothing and deletes nothing.
    refused = _save(client, accent_color="#ffff00", remove_logo="on")
    assert refused.status_code == 400
    assert _reload().logo_file == second_name and _logo_path(app, second_name).is_file()

    # Saved without touching the logo: it stays.
    assert _save(client, masthead_title="Still here").status_code == 302
    assert _logo_path(app, second_name).is_file()

    # Replaced by a logo URL: the upload goes too.
    assert _save(client, logo_url="https://cdn.daily.example/l.png").status_code == 302
    assert _reload().logo_file is None
    assert not _logo_path(app, second_name).exists()

    # Removed outright.
    assert _save(client, logo=(first, "first.png")).status_code == 302
    assert _logo_path(app, first_name).is_file()
    assert _save(client, remove_logo="on").status_code == 302
    assert _reload().logo_file is None and not _logo_path(app, first_name).exists()


def test_a_logo_another_look_shows_is_kept(app, client):
    """The same image uploaded for two newsletters is one file; and a sent issue's frozen
    look shows its logo by URL, in the archive and in the mail its readers have."""
    from mailer.models import Issue, IssueStatus
    from mailer.services import looks

    rt = app.extensions["mailer"]
    _newsletter()
    other = Newsletter(slug="evening", name="The Evening")
    db.session.add(other)
    db.session.commit()
    login(client, Role.EDITOR, "editor@daily.example")
    shared, own = png(43, 23, "#123456"), png(44, 24, "#123456")
    assert _save(client, logo=(shared, "shared.png")).status_code == 302
    name = _reload().logo_file
    evening = db.session.query(Newsletter).filter_by(slug="evening").one()
    evening.logo_file = looks.store_logo(rt.settings, shared, "same.png")
    db.session.commit()
    assert evening.logo_file == name

    assert _save(client, logo=(own, "own.png")).status_code == 302
    assert _logo_path(app, name).is_file()  # the evening newsletter still shows it

    # The evening's own issue was sent with it, then the evening's look lost it: kept.
    evening = db.session.query(Newsletter).filter_by(slug="evening").one()
    issue = Issue(subject="Sent with the shared logo", status=IssueStatus.FINISHED,
                  newsletter_id=evening.id, look=looks.look_of(evening, rt.settings).to_json())
    db.session.add(issue)
    db.session.commit()
    issue_id = issue.id
    assert client.post("/admin/newsletters/evening/look", data={
        "csrf_token": token(client, "/admin/newsletters/evening/look"),
        "accent_color": "#1d4ed8", "header_font": "georgia", "remove_logo": "on",
    }).status_code == 302
    assert _logo_path(app, name).is_file()
    assert f"/logos/{name}" in client.get(f"/archive/{issue_id}").get_data(as_text=True)
    assert client.get(f"/logos/{name}").data == shared

    # Once no issue shows it either, the next change that drops a reference deletes it.
    db.session.remove()
    db.session.query(Issue).filter_by(id=issue_id).delete()
    db.session.commit()
    assert looks.forget_logos(db.session, rt.settings, [name]) == [name]
    assert not _logo_path(app, name).exists()


def test_a_logo_file_that_cannot_be_deleted_is_logged_not_an_error_page(
        app, client, monkeypatch, caplog):
    import os
    from pathlib import Path

    _newsletter()
    login(client, Role.EDITOR, "editor@daily.example")
    assert _save(client, logo=(png(45, 25, "#123456"), "a.png")).status_code == 302
    name = _reload().logo_file
    real_replace = os.replace

    def refuse(src, dst, *args, **kwargs):  # the deletion's first step: moving it aside
        if Path(src).name == name:
            raise PermissionError(13, "Permission denied", str(src))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", refuse)
    with caplog.at_level("WARNING", logger="mailer.services.looks"):
        resp = _save(client, remove_logo="on")
    assert resp.status_code == 302
    assert "is saved" in text_of(client.get(LOOK))
    assert _reload().logo_file is None  # the change is committed all the same
    assert _logo_path(app, name).is_file()
    assert f"could not delete the logo file {name}" in caplog.text


def test_removing_a_newsletter_deletes_its_logo_file(app, client, make_email):
    from mailer.services import looks

    rt = app.extensions["mailer"]
    _newsletter()
    # (The last newsletter cannot be removed: a spare one stays.)
    db.session.add_all([Newsletter(slug="evening", name="The Evening"),
                        Newsletter(slug="spare", name="Spare")])
    db.session.commit()
    gone = looks.store_logo(rt.settings, png(46, 26, "#123456"), "gone.png")
    shared = looks.store_logo(rt.settings, png(47, 27, "#123456"), "shared.png")
    daily = db.session.query(Newsletter).filter_by(slug="daily").one()
    daily.logo_file = gone
    db.session.commit()
    login(client, Role.OPS, make_email("ops"))
    from tests.helpers.console import post

    assert post(client, "/admin/newsletters/daily/remove").status_code == 302
    assert db.session.query(Newsletter).filter_by(slug="daily").count() == 0
    assert not _logo_path(app, gone).exists()

    # The evening's logo is another newsletter's too, until that one is removed.
    db.session.add(Newsletter(slug="third", name="Third", logo_file=shared))
    evening = db.session.query(Newsletter).filter_by(slug="evening").one()
    evening.logo_file = shared
    db.session.commit()
    assert post(client, "/admin/newsletters/evening/remove").status_code == 302
    assert _logo_path(app, shared).is_file()
    assert post(client, "/admin/newsletters/third/remove").status_code == 302
    assert not _logo_path(app, shared).exists()
