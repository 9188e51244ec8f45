"""Branding, in headless Chromium: an editor uploads a logo and picks an accent colour; the
live preview, a test send and the public archive show them; a low-contrast colour, a 20 MB
upload and a file that is no image are refused with a clear message; a sent issue keeps its
old look in the archive after the look changes, its logo's file with it, while a replaced or
removed logo no issue was sent with is deleted. And a screenshot of two differently branded
digests side by side, kept in test-artifacts/two-branded-digests.png."""

from __future__ import annotations

import html as htmllib
from datetime import timedelta

import pytest
from playwright.sync_api import expect

from mailer.clock import utcnow
from mailer.db import db
from mailer.models import Issue, Newsletter, Role
from mailer.services import deliveries, digests, looks, render
from tests.helpers.app import ARTIFACTS
from tests.helpers.console import PASSWORD, add_user
from tests.helpers.digests import add_article
from tests.services.test_looks import png

# These tests make every newsletter they use, the first one too.
pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("no_newsletters")]

EDITOR = "editor@daily.example"
TEAL = "rgb(15, 118, 110)"  # #0f766e


def _log_in(page, base: str, path: str) -> None:
    page.goto(base + path)
    page.get_by_label("Email address").fill(EDITOR)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()


def _issue(rt, newsletter: Newsletter) -> int:
    now = utcnow()
    for i in range(3):
        add_article(db.session, f"Branded story {i}", now - timedelta(hours=i + 1))
    issue = digests.create_issue(db.session, rt.settings, rt.popularity, now=now, popular_m=0)
    issue.newsletter_id = newsletter.id
    db.session.commit()
    return issue.id


def _color(page_or_frame, selector: str) -> str:
    return page_or_frame.locator(selector).first.evaluate("e => getComputedStyle(e).color")


def test_an_editor_brands_a_newsletter_and_the_archive_keeps_what_readers_got(
        app, page, live_server, smtp, worker, tmp_path):
    rt = app.extensions["mailer"]
    daily = Newsletter(slug="daily", name="The Daily Test")
    db.session.add(daily)
    db.session.commit()
    add_user(Role.EDITOR, EDITOR)
    issue_id = _issue(rt, daily)
    look_path = "/admin/newsletters/daily/look"
    _log_in(page, live_server, look_path)
    page.wait_for_url("**" + look_path)

    # Refusals, each with its reason, nothing saved.
    not_image = tmp_path / "logo.png"
    not_image.write_bytes(b"name,email\nada,ada@example.com\n")
    page.get_by_label("Upload a logo").set_input_files(str(not_image))
    page.get_by_role("button", name="Save the look").click()
    assert "The logo is not an image: upload a PNG, JPEG or GIF file." in page.locator(
        "#look-error").inner_text()
    huge = tmp_path / "photo.png"
    huge.write_bytes(png(10, 10) + b"\0" * (20 * 1024 * 1024))
    page.get_by_label("Upload a logo").set_input_files(str(huge))
    page.get_by_role("button", name="Save the look").click()
    assert "The logo is 20.0 MB; the largest accepted is 1.0 MB." in page.locator(
        "#look-error").inner_text()
    # The page the refusal reloaded runs its script (deferred) before it is loaded: typing
    # sooner would go unheard.
    page.wait_for_load_state()
    page.get_by_label("Accent colour").fill("#ffcc00")
    # Said while typing, then refused by the server with the same figure.
    expect(page.locator("[data-contrast]")).to_contain_text("1.5:1, too light")
    page.get_by_role("button", name="Save the look").click()
    assert ("#ffcc00 has a contrast of 1.5:1 against white; links and buttons need at least "
            "4.5:1") in page.locator("#look-error").inner_text()

    # A logo and an accent colour, saved.
    logo = tmp_path / "brand.png"
    logo.write_bytes(png(120, 40, "#0f766e"))
    page.get_by_label("Upload a logo").set_input_files(str(logo))
    page.get_by_label("Accent colour").fill("#0f766e")
    page.get_by_label("Masthead title").fill("Morning Brief")
    page.get_by_label("Header font").select_option("trebuchet")
    page.get_by_label("Footer (Markdown)").fill("Made by the newsroom in **Berlin**.")
    page.get_by_role("button", name="Save the look").click()
    assert "The look of The Daily Test is saved" in page.locator("main").inner_text()
    db.session.expire_all()
    logo_name = db.session.get(Newsletter, daily.id).logo_file
    assert logo_name and logo_name.endswith(".png")

    # The preview: both widths show the logo and the accent, and follow what is typed.
    for frame_id in ("#look-preview-desktop", "#look-preview-phone"):
        frame = page.frame_locator(frame_id)
        assert logo_name in frame.locator(".masthead img").get_attribute("src")
        assert _color(frame, ".section-title") == TEAL
    page.get_by_label("Masthead title").fill("Morning Brief, typed live")
    for frame_id, widths in (("#look-preview-desktop", (600, 700)),
                             ("#look-preview-phone", (300, 375))):
        frame = page.frame_locator(frame_id)
        frame.get_by_text("Morning Brief, typed live").wait_for()
        width = frame.locator("body").evaluate("b => b.clientWidth")
        assert widths[0] <= width <= widths[1], (frame_id, width)
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator(".look-previews").scroll_into_view_if_needed()
    page.locator(".look-previews").screenshot(path=str(ARTIFACTS / "look-editor-preview.png"))
    page.get_by_label("Masthead title").fill("Morning Brief")

    # A test send from the composer, through the worker, carries the look. (Enter in the
    # address field: the composer moves the page to the last focused field after its load,
    # which can move the button away from under a click.)
    page.goto(f"{live_server}/admin/issues/{issue_id}")
    page.wait_for_load_state()
    page.get_by_label("Send the test to").fill("proof@daily.example")
    page.get_by_label("Send the test to").press("Enter")
    page.get_by_text("Test sent to proof@daily.example").wait_for()
    mail = smtp.wait_for("proof@daily.example")[0]
    assert mail.message["Subject"].startswith("[Test] ")
    assert f"{rt.settings.base_url}/logos/{logo_name}" in mail.html
    assert "#0f766e" in mail.html and "Morning Brief" in mail.html
    assert "Made by the newsroom in <strong>Berlin</strong>." in mail.html
    assert "Made by the newsroom in **Berlin**." in mail.text

    # The issue is sent (nobody to send to: it finishes at once); its archive page shows it.
    deliveries.start_send(db.session, issue_id, settings=rt.settings)
    db.session.commit()
    page.goto(f"{live_server}/archive/{issue_id}")
    logo_img = page.locator(".masthead-logo")
    assert logo_name in logo_img.get_attribute("src")
    assert logo_img.evaluate("i => i.complete && i.naturalWidth") == 120
    assert "Morning Brief" in page.locator(".masthead").inner_text()
    assert _color(page, ".mail-section") == TEAL

    # The look changes; the sent issue keeps what its readers got, new pages take the new one.
    page.goto(live_server + look_path)
    page.get_by_label("Accent colour").fill("#7c2d12")
    page.get_by_label("Masthead title").fill("The New Brief")
    page.get_by_label("Remove this logo").check()
    page.get_by_role("button", name="Save the look").click()
    assert "saved" in page.locator("main").inner_text()
    page.goto(f"{live_server}/archive/{issue_id}")
    assert "Morning Brief" in page.locator(".masthead").inner_text()
    assert _color(page, ".mail-section") == TEAL
    # Its logo's file too: the newsletter no longer shows it, the sent issue does.
    assert logo_name in page.locator(".masthead-logo").get_attribute("src")
    assert page.locator(".masthead-logo").evaluate("i => i.complete && i.naturalWidth") == 120
    assert (looks.logo_dir(rt.settings) / logo_name).is_file()
    page.goto(f"{live_server}/subscribe")
    assert "The New Brief" in page.locator(".masthead").inner_text()
    assert page.locator(".masthead-logo").count() == 0
    db.session.expire_all()
    assert db.session.get(Issue, issue_id).look is not None

    # A logo no issue was sent with: replaced, its file goes; removed, the next one goes.
    stored = []
    for shade in ("#7c2d12", "#1d4ed8"):
        upload = tmp_path / f"logo-{shade[1:]}.png"
        upload.write_bytes(png(90, 30, shade))
        page.goto(live_server + look_path)
        page.get_by_label("Upload a logo").set_input_files(str(upload))
        page.get_by_role("button", name="Save the look").click()
        assert "saved" in page.locator("main").inner_text()
        db.session.expire_all()
        stored.append(db.session.get(Newsletter, daily.id).logo_file)
        assert (looks.logo_dir(rt.settings) / stored[-1]).is_file()
    assert not (looks.logo_dir(rt.settings) / stored[0]).exists()
    page.get_by_label("Remove this logo").check()
    page.get_by_role("button", name="Save the look").click()
    assert "saved" in page.locator("main").inner_text()
    assert not (looks.logo_dir(rt.settings) / stored[1]).exists()
    assert (looks.logo_dir(rt.settings) / logo_name).is_file()


def test_two_differently_branded_digests_side_by_side(app, page, live_server):
    """Two newsletters' real issues of the same stories, each as its readers get it."""
    rt = app.extensions["mailer"]
    logo_name = looks.store_logo(rt.settings, png(160, 48, "#0f766e"), "brief.png")
    daily = Newsletter(slug="daily", name="The Morning Brief", accent_color="#0f766e",
                       header_font="georgia", logo_file=logo_name,
                       footer_md="The newsroom's **morning** letter.")
    sport = Newsletter(slug="sport", name="Sport Weekly", accent_color="#9a3412",
                       header_font="trebuchet", masthead_title="SPORT WEEKLY",
                       footer_md="Results, every Monday.")
    db.session.add_all([daily, sport])
    db.session.commit()
    now = utcnow()
    stories = ("The council approves the riverside park", "What the new timetable means",
               "Five places to eat outside this weekend")
    for i, title in enumerate(stories):
        add_article(db.session, title, now - timedelta(hours=i + 1),
                    summary="A few words on what happened, and why it matters to readers.")
    db.session.commit()
    frames = []
    for nl in (daily, sport):
        issue = digests.create_issue(db.session, rt.settings, rt.popularity, now=now,
                                     newsletter=nl, popular_m=0)
        db.session.commit()
        # What a reader gets (sample values in place of the reader's): the logo is served by
        # the running app, as it is to mail clients.
        _, html, _ = render.render_preview(db.session, issue, "", rt.settings)
        assert nl.accent_color in html
        frames.append(f'<iframe title="{htmllib.escape(nl.name)}" '
                      f'srcdoc="{htmllib.escape(html)}"></iframe>')
    assert live_server == rt.settings.base_url
    page.set_viewport_size({"width": 1320, "height": 1000})
    page.set_content(
        "<!DOCTYPE html><html><body style='margin:0;display:flex;gap:20px;padding:20px;"
        "background:#e4e4e7'>"
        + "".join(frames).replace("<iframe", "<iframe style='width:630px;height:960px;border:0'")
        + "</body></html>")
    first, second = page.frame_locator("iframe").nth(0), page.frame_locator("iframe").nth(1)
    assert _color(first, ".section-title") == TEAL
    assert _color(second, ".section-title") == "rgb(154, 52, 18)"
    logo = first.locator(".masthead img")
    logo.evaluate("i => i.complete || new Promise(r => i.addEventListener('load', r))")
    assert logo.evaluate("i => i.naturalWidth") == 160
    assert "SPORT WEEKLY" in second.locator(".masthead").inner_text()
    assert "Results, every Monday." in second.locator("body").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "two-branded-digests.png"), full_page=True)
    assert (ARTIFACTS / "two-branded-digests.png").stat().st_size > 10_000
