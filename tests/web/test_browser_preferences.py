"""The preferences page in headless Chromium: a reader of two newsletters switches one off
on a desktop screen, and the page fits a 375 px phone."""

from __future__ import annotations

import pytest

from mailer.db import db
from mailer.models import Frequency
from mailer.runtime import runtime
from mailer.services import newsletters
from mailer.services import subscriptions as subs
from tests.helpers.app import ARTIFACTS
from tests.web.test_newsletter_links import reader_of_two, state

pytestmark = pytest.mark.browser


def test_reader_switches_one_newsletter_off_on_a_desktop(app, live_server, page, make_email):
    email = make_email()
    with app.app_context():
        uid, _, sport = reader_of_two(email)
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


def test_preferences_page_is_usable_on_a_phone(app, live_server, browser, make_email):
    email = make_email()
    with app.app_context():
        uid, _, sport = reader_of_two(email)
        url = runtime().links.preferences(uid, sport)
    context = browser.new_context(viewport={"width": 375, "height": 740})
    page = context.new_page()
    try:
        page.goto(url)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, "the page scrolls sideways on a 375 px screen"
        for name in ("Save preferences", "Unsubscribe from everything"):
            box = page.get_by_role("button", name=name).bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= 375, name
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "preferences-375px.png"), full_page=True)
    finally:
        context.close()
