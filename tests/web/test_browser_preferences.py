"""The preferences page in headless Chromium: a reader of two newsletters switches one off
and joins one they did not have on a desktop screen, and the page fits a 375 px phone."""

from __future__ import annotations

import pytest

from mailer.db import db
from mailer.models import Frequency, Newsletter
from mailer.runtime import runtime
from mailer.services import newsletters
from mailer.services import subscriptions as subs
from tests.helpers.app import ARTIFACTS
from tests.web.test_newsletter_links import reader_of_two, state

pytestmark = pytest.mark.browser


def not_yet_held() -> None:
    """Two public newsletters the reader has not got (one with a long name and description,
    the widest thing the page shows), and a hidden one the page must never offer."""
    db.session.add_all([
        Newsletter(slug="morning", name="Morning Briefing", description="Before breakfast."),
        Newsletter(slug="weekend", name="The Long Weekend Read: Investigations and Essays",
                   description="Our reporters' longest pieces, collected every Saturday "
                               "morning for the slow hours of the weekend."),
        Newsletter(slug="insiders", name="Insiders", public=False),
    ])
    db.session.commit()


def fits(page, width: int, *buttons: str) -> None:
    scroll = page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, f"the page scrolls sideways on a {width} px screen"
    for name in buttons:
        box = page.get_by_role("button", name=name).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= width, name


def test_reader_switches_one_newsletter_off_on_a_desktop(app, live_server, page, make_email):
    email = make_email()
    with app.app_context():
        uid, _, sport = reader_of_two(email)
        not_yet_held()
        first = newsletters.first(db.session)
        url = runtime().links.preferences(uid, sport)
    page.goto(url)
    page.get_by_label("Receive Sport Letter").uncheck()
    page.get_by_role("group", name=f"How often: {first.name}").get_by_label("Daily").check()
    page.get_by_role("button", name="Save preferences").click()
    assert page.get_by_role("status").inner_text() == "Your preferences are saved."
    assert state(email) == ("active", {first.slug: "active", "sport": "unsubscribed"})
    assert not page.get_by_label("Receive Sport Letter").is_checked()
    db.session.expire_all()
    held = subs.subscription(db.session, subs.by_email(db.session, email), first.id)
    assert held.frequency == Frequency.DAILY

    # The newsletters the reader has not got, each with its button; the hidden one is not
    # there. Joining one starts it at once and lists it with the reader's own.
    page.get_by_role("heading", name="More newsletters").wait_for()
    assert page.get_by_text("Insiders").count() == 0
    fits(page, 1280, "Subscribe to Morning Briefing",
         "Subscribe to The Long Weekend Read: Investigations and Essays")
    page.get_by_role("button", name="Subscribe to Morning Briefing").click()
    assert page.get_by_role("status").inner_text() == "You are subscribed to Morning Briefing."
    assert state(email) == ("active", {first.slug: "active", "sport": "unsubscribed",
                                       "morning": "active"})
    assert page.get_by_label("Receive Morning Briefing").is_checked()
    assert page.get_by_role("button", name="Subscribe to Morning Briefing").count() == 0
    fits(page, 1280, "Save preferences", "Unsubscribe from everything",
         "Subscribe to The Long Weekend Read: Investigations and Essays")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "preferences-1280px.png"), full_page=True)


def test_preferences_page_is_usable_on_a_phone(app, live_server, browser, make_email):
    email = make_email()
    with app.app_context():
        uid, _, sport = reader_of_two(email)
        not_yet_held()
        url = runtime().links.preferences(uid, sport)
    context = browser.new_context(viewport={"width": 375, "height": 740})
    page = context.new_page()
    try:
        page.goto(url)
        fits(page, 375, "Save preferences", "Unsubscribe from everything",
             "Subscribe to Morning Briefing",
             "Subscribe to The Long Weekend Read: Investigations and Essays")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "preferences-375px.png"), full_page=True)
    finally:
        context.close()
