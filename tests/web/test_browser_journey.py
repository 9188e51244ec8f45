"""The reader's journey in headless Chromium: subscribe, confirm from the mail, leave."""

from __future__ import annotations

import re
import time

import pytest
from sqlalchemy import select

from mailer.db import db
from mailer.models import Subscriber, SubscriberStatus
from tests.helpers.web import link_with

pytestmark = pytest.mark.browser


def status_of(email: str):
    db.session.expire_all()
    return db.session.scalar(select(Subscriber.status).where(Subscriber.email == email))


def test_reader_subscribes_confirms_and_unsubscribes(app, live_server, page, smtp, worker, make_email):
    email = make_email()
    page.goto(f"{live_server}/subscribe")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Name").fill("Ada Reader")
    page.get_by_label("Daily").check()
    page.get_by_label("Sport").check()
    page.get_by_role("button", name="Subscribe").click()
    page.get_by_role("heading", name="Almost done: check your inbox").wait_for()
    assert status_of(email) == SubscriberStatus.PENDING

    confirm_url = link_with(smtp.wait_for(email, match="/confirm/")[0], "/confirm/")
    page.goto(confirm_url)
    assert status_of(email) == SubscriberStatus.PENDING  # opening the link confirms nothing
    page.get_by_role("button", name="Yes, subscribe me").click()
    page.get_by_role("heading", name="You are subscribed").wait_for()
    assert status_of(email) == SubscriberStatus.ACTIVE

    (welcome,) = smtp.wait_for(email, match="preferences")
    unsubscribe_url = re.search(r"<(http[^>]+)>", welcome.message["List-Unsubscribe"]).group(1)
    page.goto(unsubscribe_url)
    page.get_by_role("button", name="Unsubscribe").click()
    page.get_by_role("heading", name="You are unsubscribed").wait_for()
    assert page.get_by_role("status").inner_text() == "You will not receive The Daily Test any more."
    assert status_of(email) == SubscriberStatus.UNSUBSCRIBED


def test_form_errors_are_shown_next_to_the_form_and_keep_the_input(app, live_server, page):
    page.goto(f"{live_server}/subscribe")
    page.get_by_label("Email address").fill("reader@@example.com")
    page.get_by_label("Name").fill("Ada")
    page.get_by_role("button", name="Subscribe").click()
    alert = page.get_by_role("alert")
    assert "does not look like an email address" in alert.inner_text()
    assert page.get_by_label("Name").input_value() == "Ada"
    assert db.session.scalar(select(Subscriber)) is None


def test_signup_page_is_usable_on_a_phone(app, live_server, browser):
    context = browser.new_context(viewport={"width": 375, "height": 740})
    page = context.new_page()
    try:
        page.goto(f"{live_server}/subscribe")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, "the page scrolls sideways on a 375 px screen"
        button = page.get_by_role("button", name="Subscribe").bounding_box()
        assert button["x"] >= 0 and button["x"] + button["width"] <= 375
    finally:
        context.close()


def test_a_confirmation_link_from_before_an_unsubscribe_changes_nothing(
    app, live_server, page, smtp, worker, make_email
):
    """The reader confirms, leaves, then presses the old mail's button again: nothing happens
    but a page saying the link was used, with a way to sign up again."""
    email = make_email()
    page.goto(f"{live_server}/subscribe")
    page.get_by_label("Email address").fill(email)
    page.get_by_role("button", name="Subscribe").click()
    page.get_by_role("heading", name="Almost done: check your inbox").wait_for()
    confirm_url = link_with(smtp.wait_for(email, match="/confirm/")[0], "/confirm/")
    assert email not in confirm_url

    stale = page.context.new_page()  # the old mail's page, left open in another tab
    stale.goto(confirm_url)
    page.goto(confirm_url)
    page.get_by_role("button", name="Yes, subscribe me").click()
    page.get_by_role("heading", name="You are subscribed").wait_for()
    (welcome,) = smtp.wait_for(email, match="preferences")
    unsubscribe_url = re.search(r"<(http[^>]+)>", welcome.message["List-Unsubscribe"]).group(1)
    page.goto(unsubscribe_url)
    page.get_by_role("button", name="Unsubscribe").click()
    page.get_by_role("heading", name="You are unsubscribed").wait_for()
    page.goto(unsubscribe_url)
    page.get_by_role("heading", name="You are already unsubscribed").wait_for()
    assert page.get_by_role("button", name="Unsubscribe").count() == 0

    stale.get_by_role("button", name="Yes, subscribe me").click()
    stale.get_by_role("heading", name="This link has been used").wait_for()
    assert stale.get_by_role("button", name="Sign up again").is_visible()
    page.goto(confirm_url)
    page.get_by_role("heading", name="This link has been used").wait_for()
    assert status_of(email) == SubscriberStatus.UNSUBSCRIBED
    time.sleep(1)
    assert len(smtp.to(email, match="preferences")) == 1, "no second welcome"
