"""The console in headless Chromium: an editor who never saw it sends a digest of the real
fixture feeds and watches it finish; roles, login and CSRF; every main page at desktop and
phone widths, with screenshots kept in test-artifacts/."""

from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from mailer.clock import utcnow
from mailer.db import db
from mailer.models import (
    Article,
    Click,
    Delivery,
    DeliveryStatus,
    Issue,
    IssueItem,
    IssueStatus,
    ItemSection,
    Role,
    SubscriberImport,
)
from mailer.services import after_commit, deliveries, digests, newsletters
from tests.helpers.app import ARTIFACTS
from tests.helpers.console import (  # noqa: F401 - a fixture, used by its name
    PASSWORD,
    add_readers,
    add_user,
    ingest_feeds,
    slow_console_fixture,
)
from tests.helpers.digests import BROWSER_UA
from tests.helpers.servers import wait_until

pytestmark = pytest.mark.browser


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"console-{name}.png"), full_page=True)


def log_in(page, base: str, email: str, path: str = "/admin/") -> None:
    page.goto(base + path)
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()


def latest_titles(issue_id: int) -> list[str]:
    db.session.expire_all()
    return [i.article.title for i in db.session.scalars(
        select(IssueItem).where(IssueItem.issue_id == issue_id,
                                IssueItem.section == ItemSection.LATEST,
                                IssueItem.excluded.is_(False))
        .order_by(IssueItem.position, IssueItem.id))]


def sent_count(issue_id: int) -> int:
    db.session.expire_all()
    return db.session.scalar(select(func.count()).select_from(Delivery).where(
        Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.SENT))


def field(page, name: str) -> str:
    return page.locator(f'[data-field="{name}"]').first.inner_text()


def test_an_editor_sends_a_digest_of_the_real_feeds_and_watches_it_finish(
        app, page, smtp, slow_console):
    console = slow_console
    ingest_feeds("dcrainmaker.xml")
    by_date = list(db.session.scalars(select(Article).order_by(Article.published_at.desc())))
    # The oldest post is outside the week Latest looks at; readers made it the most read.
    popular = by_date[-1]
    site = console.app.test_client()
    for n in range(4):
        seen = site.post("/api/v1/pageviews", json={"url": popular.url},
                         headers={"User-Agent": BROWSER_UA},
                         environ_base={"REMOTE_ADDR": f"10.9.0.{n}"})
        assert seen.status_code == 204
    readers = 40
    add_readers(readers, prefix="fan")
    add_user(Role.EDITOR, "editor@daily.example")

    # An anonymous visitor is sent to the login page, and back where they wanted to go.
    page.goto(console.url + "/admin/issues")
    assert "/admin/login" in page.url
    page.get_by_label("Email address").fill("editor@daily.example")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("heading", name="Issues", exact=True).wait_for()
    page.get_by_role("button", name="Compose a new issue").click()
    page.get_by_role("heading", name=re.compile(r"^Issue \d+")).wait_for()
    issue_id = int(page.url.rsplit("/", 1)[1].split("?")[0])
    latest = latest_titles(issue_id)
    assert latest == [a.title for a in by_date[: len(latest)]] and len(latest) >= 5
    assert page.get_by_role("link", name=popular.title).count() == 1  # in Most popular

    # Reorder with the keyboard: the arrow button, then Alt+Up; the focus stays on the item.
    first = latest[0]
    page.get_by_role("button", name=f"Move down: {first}").focus()
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert latest_titles(issue_id)[:2] == [latest[1], first]
    # The focus comes back to the button pressed, right after the page loaded.
    page.wait_for_function("label => document.activeElement.getAttribute('aria-label') === label",
                           arg=f"Move down: {first}", timeout=5000)
    with page.expect_navigation():
        page.keyboard.press("Alt+ArrowUp")
    assert latest_titles(issue_id)[:2] == [first, latest[1]]
    # And by dragging: the last Latest article onto the top of the list.
    last = latest[-1]
    items = page.locator('ol[data-section="latest"] > li')
    with page.expect_navigation():
        items.last.drag_to(items.first, target_position={"x": 20, "y": 3})
    page.get_by_role("heading", name=re.compile(r"^Issue \d+")).wait_for()
    assert latest_titles(issue_id)[0] == last
    with page.expect_navigation():
        page.get_by_role("button", name=f"Pin: {last}").click()
    with page.expect_navigation():
        page.get_by_role("button", name=f"Drop: {latest[1]}").click()
    assert latest[1] not in latest_titles(issue_id)

    page.get_by_label("Subject", exact=True).fill("Weekly: {{ top_story }}")
    page.get_by_role("textbox", name=re.compile("^Introduction")).fill(
        "Hello {{ name }}, here is **the week**.")
    page.get_by_role("button", name="Save text").click()
    page.get_by_text("Text saved.").wait_for()
    page.get_by_text(f"Readers see: Weekly: {last}").wait_for()

    # The preview: desktop, mobile (375 px) and text, in a sandboxed frame.
    frame = page.frame_locator("iframe.mail-preview")
    frame.get_by_text("Hello Reader, here is").wait_for()
    assert page.locator("iframe.mail-preview").get_attribute("sandbox") == (
        "allow-popups allow-popups-to-escape-sandbox")
    shot(page, "composer")
    page.get_by_role("link", name="Mobile", exact=True).click()
    page.frame_locator("iframe.mail-preview").get_by_text("Most popular").first.wait_for()
    assert page.locator("iframe.mail-preview").bounding_box()["width"] == 375
    page.get_by_role("link", name="Text", exact=True).click()
    text = page.locator("#preview-text").inner_text()
    assert "Hello Reader, here is **the week**." in text and "MOST POPULAR" in text.upper()
    assert popular.title in text

    # A test to the editor's own inbox, through the worker.
    page.get_by_label("Send the test to").fill("editor@daily.example")
    page.get_by_role("button", name="Send test").click()
    page.get_by_text("Test sent to editor@daily.example.").wait_for()
    (test,) = smtp.wait_for("editor@daily.example")
    assert test.message["Subject"] == f"[Test] Weekly: {last}"
    assert "Hello Reader" in test.text and latest[1] not in test.text

    # The confirmation says how many readers; then the send, watched live.
    page.wait_for_load_state()  # the jump to #test is over: nothing moves under the pointer
    page.get_by_role("link", name="Review and send…").first.click()
    page.get_by_role("heading", name=f"{readers} readers will get this issue").wait_for()
    shot(page, "send-confirm")
    page.get_by_role("button", name=f"Send now to {readers} readers").click()
    page.get_by_role("heading", name=f"Issue {issue_id}: Weekly: {last}").wait_for()
    page.wait_for_function("() => parseInt(document.querySelector('[data-field=done]')"
                           ".textContent) >= 5")
    page.get_by_role("button", name="Pause").click()
    page.locator("h2 [data-field=status_text]", has_text=re.compile("^Paused$")).wait_for()
    time.sleep(1.0)  # messages already on the wire are recorded
    held = sent_count(issue_id)
    time.sleep(1.5)
    assert sent_count(issue_id) == held < readers, "a paused issue went on sending"
    shot(page, "sending-paused")

    page.get_by_role("button", name="Resume").click()
    page.locator("h2 [data-field=status_text]", has_text=re.compile("^Sending$")).wait_for()
    assert re.fullmatch(r"[\d.]+ per second", field(page, "rate_text"))
    assert re.fullmatch(r"about \d+ (s|min)|working it out", field(page, "eta_text"))
    page.evaluate("window.notReloaded = true")
    page.wait_for_function(
        "() => document.querySelector('[data-field=status_text]').textContent === 'Finished'",
        timeout=60_000)
    assert field(page, "percent_text") == "100%"
    assert page.locator("progress").evaluate("p => p.value") == 100
    assert field(page, "count_sent") == str(readers)
    assert page.evaluate("window.notReloaded === true"), "the page reloaded to update"
    assert page.get_by_role("button", name="Pause").is_hidden()
    shot(page, "sending-finished")

    for n in range(readers):
        (mail,) = smtp.wait_for(f"fan{n}@example.com")
        assert mail.message["Subject"] == f"Weekly: {last}"
    page.get_by_role("link", name="Report").click()
    page.get_by_role("heading", name=f"Report: Weekly: {last}").wait_for()
    assert f"{readers}\nsent" in page.locator(".tiles").inner_text()
    shot(page, "report")


def test_roles_login_and_csrf_in_the_browser(app, live_server, page):
    add_user(Role.EDITOR, "editor@daily.example")
    page.goto(live_server + "/admin/subscribers")
    assert "/admin/login?next=" in page.url
    page.get_by_role("heading", name="Log in").wait_for()
    shot(page, "login")
    log_in(page, live_server, "editor@daily.example", "/admin/")
    page.get_by_role("heading", name="Dashboard").wait_for()
    nav = page.get_by_role("navigation", name="Console")
    assert nav.get_by_role("link", name="Issues").count() == 1
    assert nav.get_by_role("link", name="Users").count() == 0
    page.goto(live_server + "/admin/users")
    assert "You are not allowed to do that." in page.inner_text("body")

    # Keyboard: the first Tab reaches the skip link, which is visible and leads to the page.
    page.goto(live_server + "/admin/")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    assert skip.evaluate("el => el === document.activeElement")
    box = skip.bounding_box()
    assert box["x"] >= 0 and box["y"] >= 0
    assert skip.evaluate("el => getComputedStyle(el).outlineStyle") != "none"
    page.keyboard.press("Enter")
    assert page.evaluate("location.hash") == "#main"

    # A form whose CSRF token was removed is refused, and nothing is created.
    page.evaluate("document.querySelectorAll('input[name=csrf_token]')"
                  ".forEach(el => el.remove())")
    page.get_by_role("button", name="Compose a new issue").click()
    assert "The form expired or was sent from elsewhere" in page.inner_text("body")
    assert db.session.scalar(select(func.count()).select_from(Issue)) == 0


def seed_console(rt) -> dict:
    """Something on every page: readers with a history, a sent issue with clicks and a bounce,
    a draft, an import."""
    now = utcnow()
    add_readers(6, prefix="early", at=now - timedelta(days=20))
    add_readers(4, prefix="recent", at=now - timedelta(days=3), sections="sport")
    add_readers(2, prefix="gone", status="unsubscribed", at=now - timedelta(days=9))
    ingest_feeds("dcrainmaker.xml", "wirecutter.xml")
    sent = digests.create_issue(db.session, rt.settings, rt.popularity, now=now - timedelta(days=2), popular_m=0,
                                subject="Weekly: {{ top_story }}")
    deliveries.start_send(db.session, sent.id, settings=rt.settings)
    after_commit.take(db.session)  # no worker sends it: the rows are set as sent below
    rows = list(db.session.scalars(select(Delivery).where(Delivery.issue_id == sent.id)))
    for row in rows:
        row.status, row.attempts = DeliveryStatus.SENT, 1
    rows[-1].status, rows[-1].last_error = DeliveryStatus.FAILED_PERMANENT, "550 5.1.1 unknown"
    first_item = sent.items[0].id
    db.session.add_all([Click(issue_id=sent.id, item_id=first_item, delivery_id=r.id)
                        for r in rows[:4]])
    sent.status, sent.finished_at = IssueStatus.FINISHED, now - timedelta(days=2)
    draft = digests.create_issue(db.session, rt.settings, rt.popularity, now=now, min_items=0,
                                 intro="Good morning, {{ name }}!")
    db.session.add(SubscriberImport(filename="book-fair.csv", source="Book fair 2025",
                                    status="finished", total=120, done=120, added=117,
                                    existing=2, invalid=1, problems=[[14, "not an address"]]))
    db.session.commit()
    sub = db.session.scalar(select(Delivery.subscriber_id).where(Delivery.issue_id == sent.id))
    return {"sent": sent.id, "draft": draft.id, "reader": sub, "import": 1}


def watch_errors(page, origin: str) -> list:
    """Console errors about our own pages and files, and script errors, as they come."""
    errors = []

    def console(message):
        if message.type == "error" and (message.location.get("url") or "").startswith(origin):
            errors.append((page.url, message.text, message.location.get("url")))

    page.on("console", console)
    page.on("pageerror", lambda e: errors.append((page.url, str(e), None)))
    return errors


# Each shown chart: how wide it is against its card, and its smallest label in CSS pixels.
CHARTS = """() => [...document.querySelectorAll('svg.chart')]
  .filter(svg => svg.getBoundingClientRect().width > 0)
  .map(svg => {
    const card = svg.parentElement, style = getComputedStyle(card);
    const inner = card.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    const scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
    const fonts = [...svg.querySelectorAll('text')]
      .map(t => parseFloat(getComputedStyle(t).fontSize) * scale);
    return {fill: svg.getBoundingClientRect().width / inner, font: Math.min(...fonts)};
  })"""


UNLABELLED = """() => Array.from(document.querySelectorAll(
    'input:not([type=hidden]), select, textarea'))
  .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                && !el.getAttribute('aria-labelledby'))
  .map(el => el.name || el.id)"""


def test_every_main_page_at_desktop_and_phone_widths(app, live_server, browser):
    ids = seed_console(app.extensions["mailer"])
    add_user(Role.ADMIN, "chief@daily.example")
    import_id = db.session.scalar(select(SubscriberImport.id))
    for slug, name in (("morning-briefing", "The Morning Briefing"), ("sport", "Sport")):
        newsletters.create(db.session, {"slug": slug, "name": name,
                                        "description": "Five stories before breakfast."})
    db.session.commit()
    pages = {
        "dashboard": "/admin/",
        "issues": "/admin/issues",
        "composer-draft": f"/admin/issues/{ids['draft']}",
        "composer-text": f"/admin/issues/{ids['draft']}?preview=text",
        "send-confirm-draft": f"/admin/issues/{ids['draft']}/send",
        "sending-finished": f"/admin/issues/{ids['sent']}/sending",
        "report-sent": f"/admin/issues/{ids['sent']}/report",
        "subscribers": "/admin/subscribers",
        "subscriber": f"/admin/subscribers/{ids['reader']}",
        "import": "/admin/subscribers/import",
        "import-status": f"/admin/subscribers/imports/{import_id}",
        "suppressions": "/admin/subscribers/suppressions",
        "users": "/admin/users",
        "account": "/admin/account",
        "settings": "/admin/settings",
        "schedules": "/admin/schedules",
        "feeds": "/admin/feeds",
        "newsletters": "/admin/newsletters",
        "newsletter": "/admin/newsletters/morning-briefing",
        "look": "/admin/newsletters/morning-briefing/look",
        "subscribe": "/subscribe",
        "archive": "/archive",
        "archive-issue": f"/archive/{ids['sent']}",
    }
    for width, height in ((1280, 900), (375, 740)):
        context = browser.new_context(viewport={"width": width, "height": height})
        page = context.new_page()
        page.set_default_timeout(15000)
        # Errors of our own pages and files (the fixture feeds' article images live on hosts
        # this offline machine cannot reach; the favicon is ours and must load).
        errors = watch_errors(page, live_server)
        try:
            log_in(page, live_server, "chief@daily.example")
            page.get_by_role("heading", name="Dashboard").wait_for()
            for name, path in pages.items():
                resp = page.goto(live_server + path)
                assert resp.status == 200, (name, resp.status)
                assert page.evaluate(UNLABELLED) == [], f"{name}: inputs without a label"
                if name in ("dashboard", "report-sent"):
                    shown = page.evaluate(CHARTS)
                    assert shown, f"{name}: no chart shown at {width} px"
                    for chart in shown:
                        assert chart["fill"] > 0.97, f"{name}: chart narrower than its card"
                        assert chart["font"] >= 10, f"{name}: {chart['font']:.1f} px labels"
                if width == 375:
                    scroll = page.evaluate("document.documentElement.scrollWidth")
                    assert scroll <= 375, f"{name} scrolls sideways on a phone ({scroll} px)"
                    if name in ("dashboard", "composer-draft", "sending-finished", "subscribers"):
                        shot(page, f"{name}-phone")
                else:
                    shot(page, name)
            assert errors == [], errors
            icon = page.request.get(live_server + "/favicon.ico")
            assert icon.status == 200 and icon.headers["content-type"].startswith("image/svg+xml")
        finally:
            context.close()
    wait_until(lambda: (ARTIFACTS / "console-dashboard.png").exists(), 5, what="screenshots")
