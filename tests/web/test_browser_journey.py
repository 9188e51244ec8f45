"""The reader's journey in headless Chromium: subscribe, confirm from the mail, leave."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from datetime import timedelta

import pytest
from sqlalchemy import select

from mailer.clock import utcnow
from mailer.db import db
from mailer.models import Article, Newsletter, Subscriber, SubscriberStatus
from mailer.services import newsletters
from mailer.services import subscriptions as subs
from tests.helpers.app import ARTIFACTS
from tests.helpers.delivery import wait_finished
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


LETTERS = {  # slug: (name, From, List-Id)
    "morning": ("Morning Briefing", "Morning Desk <morning@daily.example>",
                "morning.daily.example"),
    "sport": ("Sport Letter", "Sport Desk <sport@daily.example>", "sport.daily.example"),
    "politics": ("Politics Weekly", "Politics Desk <politics@daily.example>",
                 "politics.daily.example"),
}


def three_newsletters() -> None:
    """Three public newsletters, each with its own sender; the site's first newsletter is
    hidden, so /subscribe offers exactly these three."""
    newsletters.first(db.session).public = False
    for slug, (name, sender, list_id) in LETTERS.items():
        from_name, _, address = sender.partition(" <")
        db.session.add(Newsletter(slug=slug, name=name, description=f"About {name}.",
                                  from_name=from_name, from_address=address.rstrip(">"),
                                  list_id=list_id))
    db.session.commit()


def add_stories(label: str, ago: timedelta) -> None:
    """Two new stories, published `ago` (an issue takes those since its newsletter's last)."""
    at = utcnow() - ago
    for n in range(2):
        db.session.add(Article(title=f"{label} story {n}", url=f"https://daily.example/{label}-{n}",
                               summary="What happened.", published_at=at))
    db.session.commit()


def send_an_issue_of_each(runner) -> None:
    """Compose and send an issue of every newsletter with the command line's own commands;
    the real worker sends them."""
    issue_ids = []
    for slug in LETTERS:
        made = runner.invoke(["digest", "create", "--newsletter", slug, "--popular", "0",
                              "--min-items", "1", "--json"])
        assert made.exit_code == 0, made.output
        issue = json.loads(made.output)
        assert issue["status"] == "draft", issue
        issue_ids.append(issue["id"])
        sent = runner.invoke(["digest", "send", str(issue_ids[-1])])
        assert sent.exit_code == 0, sent.output
    for issue_id in issue_ids:
        assert wait_finished(issue_id) == "finished"


def issues_to(smtp, email: str) -> list:
    """The issues of the three newsletters a reader got (no transactional mail), by List-Id."""
    ours = {f'"{name}" <{list_id}>' for name, _, list_id in LETTERS.values()}
    return sorted((m for m in smtp.to(email) if m.message["List-Id"] in ours),
                  key=lambda m: m.message["List-Id"])


def test_reader_picks_two_of_three_newsletters_and_leaves_one_with_one_click(
    app, live_server, page, smtp, worker, runner, make_email
):
    rt = app.extensions["mailer"]
    three_newsletters()
    add_stories("first", timedelta(hours=1))
    email, other = make_email(), make_email("all-three")
    # Another reader of all three: each issue goes out to someone.
    subs.import_rows(db.session, [subs.ImportRow(line=1, email=other)], source="test",
                     known_sections=[], hasher=rt.email_hash, report=subs.ImportReport(),
                     newsletter_ids=[n.id for n in newsletters.offered(db.session)])
    db.session.commit()

    page.goto(f"{live_server}/subscribe")
    page.get_by_label("Email address").fill(email)
    boxes = page.locator('input[name="newsletters"]')
    assert boxes.count() == 3
    page.get_by_label("Morning Briefing").check()
    page.get_by_label("Sport Letter").check()
    page.screenshot(path=str(ARTIFACTS / "newsletters-journey-1-form.png"), full_page=True)
    page.get_by_role("button", name="Subscribe").click()
    page.get_by_role("heading", name="Almost done: check your inbox").wait_for()

    (mail,) = smtp.wait_for(email, match="/confirm/")
    for part in (mail.text, mail.html):
        assert "Morning Briefing" in part and "Sport Letter" in part
        assert "Politics Weekly" not in part
    page.goto(link_with(mail, "/confirm/"))
    page.get_by_role("button", name="Yes, subscribe me").click()
    page.get_by_role("heading", name="You are subscribed").wait_for()
    page.screenshot(path=str(ARTIFACTS / "newsletters-journey-2-confirmed.png"), full_page=True)

    send_an_issue_of_each(runner)
    assert len(issues_to(smtp, other)) == 3  # every issue went out
    got = issues_to(smtp, email)
    assert [(m.message["From"], m.message["List-Id"]) for m in got] == [
        (LETTERS[slug][1], f'"{LETTERS[slug][0]}" <{LETTERS[slug][2]}>')
        for slug in ("morning", "sport")
    ]
    assert len(smtp.to(email, match="/confirm/")) == 1, "one confirmation for both"

    # The mailbox provider's unsubscribe button: RFC 8058's POST to the message's
    # List-Unsubscribe address, without cookies.
    sport_mail = got[1].message
    assert sport_mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = re.search(r"<(https?://[^>]+)>", sport_mail["List-Unsubscribe"]).group(1)
    request = urllib.request.Request(url, data=b"List-Unsubscribe=One-Click", method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200

    time.sleep(1)  # the new stories are newer than the first issues
    add_stories("second", timedelta(0))
    send_an_issue_of_each(runner)
    assert len(issues_to(smtp, other)) == 6
    got = issues_to(smtp, email)
    assert [m.message["List-Id"] for m in got] == [
        '"Morning Briefing" <morning.daily.example>',
        '"Morning Briefing" <morning.daily.example>',
        '"Sport Letter" <sport.daily.example>',
    ]
    assert status_of(email) == SubscriberStatus.ACTIVE
    page.goto(rt.links.preferences(subs.by_email(db.session, email).uid))
    assert page.get_by_label("Receive Morning Briefing").is_checked()
    assert not page.get_by_label("Receive Sport Letter").is_checked()
