"""The dashboard: readers by status over time, last issues, queue, what comes next, warnings;
and the settings page."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from mailer.clock import utcnow
from mailer.config import VARIABLES
from mailer.db import db
from mailer.models import (
    BounceEvent,
    BounceKind,
    Delivery,
    DeliveryStatus,
    Feed,
    Issue,
    IssueStatus,
    Newsletter,
    Role,
    Subscriber,
    SubscriberEvent,
    SubscriberStatus,
)
from mailer.services import newsletters, reports, schedules
from mailer.web.admin.charts import bar_chart, count_ticks, line_chart, nice_max
from tests.helpers.app import make_app
from tests.helpers.console import add_readers, login, text_of

NOW = datetime(2027, 3, 31, 12, 0, tzinfo=UTC)


def day(d: int, hour: int = 9) -> datetime:
    return datetime(2027, 3, d, hour, tzinfo=UTC)


def reader(email, status, created, confirmed=None, **times) -> Subscriber:
    sub = Subscriber(email=email, status=status, created_at=created, confirmed_at=confirmed,
                     **times)
    db.session.add(sub)
    db.session.flush()
    return sub


def test_readers_by_status_over_time_from_their_timestamps_and_events(client):
    a = reader("a@example.com", SubscriberStatus.ACTIVE, day(2), day(2))
    reader("b@example.com", SubscriberStatus.UNSUBSCRIBED, day(10), day(11),
           unsubscribed_at=day(20))
    reader("c@example.com", SubscriberStatus.PENDING, day(25))
    d = reader("d@example.com", SubscriberStatus.BOUNCED, datetime(2027, 2, 1, tzinfo=UTC),
               datetime(2027, 2, 1, tzinfo=UTC), bounced_at=day(15))
    reader("e@example.com", SubscriberStatus.COMPLAINED, day(28), day(28), updated_at=day(30))
    db.session.add_all([
        SubscriberEvent(subscriber_id=a.id, at=day(2), kind="confirmed"),
        SubscriberEvent(subscriber_id=d.id, at=day(15), kind="bounced"),
        SubscriberEvent(subscriber_id=a.id, at=day(16), kind="preferences"),
    ])
    db.session.commit()

    h = reports.readers_over_time(db.session, 30, now=NOW)
    days = [x.day for x in h["days"]]
    assert len(days) == 30 and h["days"][0].isoformat() == "2027-03-02" and days[-1] == 31

    def at(d):
        i = days.index(d)
        return h["active"][i], h["pending"][i], h["gone"][i], h["joined"][i], h["left"][i]

    assert at(2) == (2, 0, 0, 1, 0)  # a joined; d active since February
    assert at(10) == (2, 1, 0, 0, 0)  # b signed up, not yet confirmed
    assert at(15) == (2, 0, 1, 0, 1)  # b confirmed on the 11th; d bounced
    assert at(16) == (2, 0, 1, 0, 0)  # a preferences change is neither joining nor leaving
    assert at(20) == (1, 0, 2, 0, 0)  # b left
    assert at(25) == (1, 1, 2, 0, 0)  # c is pending
    assert at(28) == (2, 1, 2, 0, 0)  # e arrived ...
    assert at(31) == (1, 1, 3, 0, 0)  # ... and complained on the 30th
    # The same pass over the readers counts them by status for the tiles.
    assert h["counts"] == {"pending": 1, "active": 1, "unsubscribed": 1, "bounced": 1,
                           "complained": 1}

    with time_machine.travel(NOW, tick=False):
        login(client, Role.EDITOR, "editor@daily.example")
        page = client.get("/admin/")
    html = page.get_data(as_text=True)
    assert '<svg class="chart wide"' in html and 'role="img"' in html
    assert "<title id=" in html and "Readers by status, last 30 days" in html
    text = text_of(page)
    assert "2027-03-15 2 0 1 0 1" in text and "2027-03-31 1 1 3 0 0" in text
    assert "No readers yet." not in text


def test_a_fresh_install_says_what_to_do_next(client):
    login(client, Role.ADMIN, "chief@daily.example")
    text = text_of(client.get("/admin/"))
    assert "No readers yet." in text and "import a CSV" in text
    assert "Nothing sent yet." in text and "Compose an issue with the button above" in text
    assert "Nothing is set to go out." in text and "Add a schedule" in text
    assert "Mail is not DKIM-signed" in text
    assert "No postal address is set" not in text
    assert "Tasks in the broker" in text and "unknown" not in text
    assert "0 webhook attempts; 0 confirmations waiting" in text


def test_missing_postal_address_is_a_warning(app, env):
    client = make_app(env, MAILER_POSTAL_ADDRESS="").test_client()
    login(client, Role.OPS, "ops@daily.example")
    text = text_of(client.get("/admin/"))
    assert "No postal address is set (MAILER_POSTAL_ADDRESS)" in text
    settings = text_of(client.get("/admin/settings"))
    assert "No postal address is set" in settings and "MAILER_POSTAL_ADDRESS (not set)" in settings


def reads(page) -> str:
    """The page's text as a reader sees it, links being part of their sentence."""
    return text_of(re.sub(r"</?a\b[^>]*>", "", page.get_data(as_text=True)))


def issue_with(counts: dict, *, started: datetime, status=IssueStatus.FINISHED,
               reason=None, newsletter_id: int | None = None) -> Issue:
    """An issue that went out, with deliveries in the given states (readers made for it)."""
    issue = Issue(subject=f"Issue of {started:%d %b}", status=status, started_at=started,
                  status_reason=reason)
    if newsletter_id is not None:
        issue.newsletter_id = newsletter_id
    db.session.add(issue)
    db.session.flush()
    n = 0
    for state, count in counts.items():
        ids = add_readers(count, prefix=f"i{issue.id}-{state}-")
        for sid in ids:
            n += 1
            db.session.add(Delivery(issue_id=issue.id, subscriber_id=sid, status=state,
                                    attempts=0 if state == DeliveryStatus.PENDING else 1))
    db.session.commit()
    return issue


def test_warnings_bounces_rising_paused_uncertain_and_broken_feeds(client):
    now = utcnow()
    issue_with({DeliveryStatus.SENT: 20}, started=now - timedelta(days=14))
    latest = issue_with({DeliveryStatus.SENT: 17, DeliveryStatus.FAILED_PERMANENT: 3},
                        started=now - timedelta(days=7))
    paused = issue_with({DeliveryStatus.SENT: 2, DeliveryStatus.PENDING: 5,
                         DeliveryStatus.UNCERTAIN: 1}, started=now - timedelta(hours=1),
                        status=IssueStatus.PAUSED, reason="Paused automatically: 451 busy")
    db.session.add(Feed(url="https://daily.example/feed", last_error="HTTP 500",
                        last_checked_at=now))
    db.session.commit()

    login(client, Role.OPS, "ops@daily.example")
    page = client.get("/admin/")
    text = reads(page)
    letter = newsletters.first(db.session).name
    assert ("The bounce rate is rising: 15.0% of the last issue's messages bounced "
            f"(issue {latest.id} of {letter}), against 0.0% before.") in text
    assert f"Issue {paused.id} of {letter} is paused: Paused automatically: 451 busy" in text
    assert f'href="/admin/issues/{paused.id}/sending">Open issue {paused.id}' in (
        page.get_data(as_text=True))
    assert (f"Issue {paused.id} of {letter}: 1 message(s) may or may not have been "
            "delivered") in text
    assert "The feed https://daily.example/feed cannot be read: HTTP 500" in text
    # The queue and the last issues with their counts.
    assert "Issues paused 1" in text and "Messages waiting 5" in text
    assert "Uncertain messages 1" in text
    row = f"Issue of {latest.started_at:%d %b} #{latest.id}"
    assert row in text and f"{row} " in text
    assert f"#{latest.id} {letter} {latest.started_at:%Y-%m-%d %H:%M} finished 17 0 3" in text


def test_warnings_about_issues_name_and_link_their_newsletter(client):
    """With several newsletters, "issue 7 is paused" leaves the operator guessing: each
    warning about an issue names its newsletter, linked to its page for editors and ops."""
    now = utcnow()
    evening = Newsletter(slug="evening", name="The Evening")
    db.session.add(evening)
    db.session.commit()
    first = newsletters.first(db.session)
    mine = issue_with({DeliveryStatus.SENT: 1}, started=now - timedelta(hours=2),
                      status=IssueStatus.PAUSED, reason="Paused by an operator.",
                      newsletter_id=first.id)
    theirs = issue_with({DeliveryStatus.SENT: 2, DeliveryStatus.UNCERTAIN: 1},
                        started=now - timedelta(hours=1), status=IssueStatus.PAUSED,
                        reason="Paused automatically: 451 busy", newsletter_id=evening.id)
    # The evening's complaints and hard bounces over the warning levels (no readers needed:
    # a rate is over what the issue sent).
    complained = add_readers(1, prefix="complained")[0]
    db.session.add_all([
        BounceEvent(key=f"c-{theirs.id}", subscriber_id=complained, issue_id=theirs.id,
                    kind=BounceKind.COMPLAINT, source="postmark"),
        BounceEvent(key=f"h-{theirs.id}", subscriber_id=complained, issue_id=theirs.id,
                    kind=BounceKind.HARD, source="postmark"),
    ])
    db.session.commit()

    login(client, Role.EDITOR, "editor@daily.example")
    page = client.get("/admin/")
    text, html = reads(page), page.get_data(as_text=True)
    assert f"Issue {mine.id} of {first.name} is paused: Paused by an operator." in text
    assert (f"Issue {theirs.id} of The Evening is paused: Paused automatically: 451 busy"
            in text)
    assert f"Issue {theirs.id} of The Evening: 1 message(s) may or may not" in text
    assert f"of the readers of issue {theirs.id} of The Evening reported it as spam" in text
    assert f"of the messages of issue {theirs.id} of The Evening bounced for good" in text
    # The name is a link to the newsletter's page, where the dashboard links the others.
    assert (f'Issue {theirs.id} of <a href="/admin/newsletters/evening">The Evening</a> is '
            "paused") in html
    assert (f'Issue {mine.id} of <a href="/admin/newsletters/{first.slug}">'
            f"{first.name}</a> is paused") in html
    warnings = html.split('id="warnings-h"', 1)[1].split("</section>", 1)[0]
    assert warnings.count('<a href="/admin/newsletters/evening">The Evening</a>') == 4


def test_each_newsletters_bounces_are_judged_against_its_own_issues(rt):
    """Newsletters differ in how clean their lists are: one at a steady 3% is not "rising"
    because another's issues bounced less, and the last issue of each is checked, not only
    the last one of all."""
    now = utcnow()
    evening = Newsletter(slug="evening", name="The Evening")
    db.session.add(evening)
    db.session.commit()
    morning = newsletters.first(db.session)
    for days in (21, 14):
        issue_with({DeliveryStatus.SENT: 20}, started=now - timedelta(days=days),
                   newsletter_id=morning.id)
    morning_last = issue_with({DeliveryStatus.SENT: 20}, started=now - timedelta(days=7),
                              newsletter_id=morning.id)
    steady = {DeliveryStatus.SENT: 97, DeliveryStatus.FAILED_PERMANENT: 3}
    issue_with(steady, started=now - timedelta(days=10), newsletter_id=evening.id)
    evening_last = issue_with(steady, started=now - timedelta(days=1), newsletter_id=evening.id)
    # One of the morning's last 20 messages bounced for good: 5%, over the 2% warning level.
    reader = add_readers(1, prefix="hard")[0]
    db.session.add(BounceEvent(key=f"h-{morning_last.id}", subscriber_id=reader,
                               issue_id=morning_last.id, kind=BounceKind.HARD,
                               source="postmark"))
    db.session.commit()

    shown = [w.message for w in reports.warnings(db.session, rt.settings)]
    assert not [m for m in shown if "rising" in m]
    assert (f"5.00% of the messages of issue {morning_last.id} of {morning.name} bounced for "
            "good (1 of 20)") in " ".join(shown)
    assert not [m for m in shown if f"issue {evening_last.id} " in m]
    groups = reports.last_issues_by_newsletter(db.session, per_newsletter=2)
    assert [[r["issue"].newsletter_id for r in g] for g in groups] == [
        [evening.id, evening.id], [morning.id, morning.id]]
    assert groups[1][0]["issue"].id == morning_last.id


def test_an_issues_bounces_are_the_refusals_it_tried_not_the_readers_who_had_left(client):
    issue = issue_with({DeliveryStatus.SENT: 3, DeliveryStatus.FAILED_PERMANENT: 2,
                        DeliveryStatus.PENDING: 1}, started=utcnow())
    # A reader who left before their turn: refused without being tried.
    db.session.add(Delivery(issue_id=issue.id, subscriber_id=add_readers(1, prefix="gone")[0],
                            status=DeliveryStatus.FAILED_PERMANENT, attempts=0))
    db.session.commit()
    counts = reports.issue_counts(db.session, [issue.id])[issue.id]
    assert (counts["total"], counts["sent"], counts["bounced"]) == (7, 3, 2)


def test_a_steady_bounce_rate_is_no_warning_but_a_high_one_is():
    rows = [{"sent": 97, "bounced": 3}] * 3
    assert reports.bounce_trend(rows) == (0.03, 0.03)
    high = [{"sent": 90, "bounced": 10}]
    assert reports.bounce_trend(high) == (0.1, None)
    assert reports.bounce_trend([{"sent": 5, "bounced": 1}]) is None  # too few to judge


def test_coming_up_lists_schedules_and_issues_set_to_a_time(client):
    with time_machine.travel(NOW, tick=False):
        schedules.create_schedule(db.session, name="Weekly", cron_text="mon 07:00",
                                  timezone="Europe/Berlin")
        db.session.add(Issue(subject="Set by hand", status=IssueStatus.SCHEDULED,
                             send_at=datetime(2027, 4, 2, 8, tzinfo=UTC)))
        db.session.commit()
        login(client, Role.OPS, "ops@daily.example")
        text = text_of(client.get("/admin/"))
    assert "Fri 2027-04-02 08:00 UTC — issue #" in text
    assert "Mon 2027-04-05 05:00 UTC — schedule Weekly" in text
    assert text.index("2027-04-02 08:00") < text.index("2027-04-05 05:00")
    assert "Issues set to a time 1" in text


def test_settings_are_shown_without_secrets(app, env):
    app = make_app(env, MAILER_REPORT_WEBHOOK="https://hooks:s3cret@example.com/report")
    client = app.test_client()  # the `app` fixture cleaned the database for it
    login(client, Role.OPS, "ops@daily.example")
    page = client.get("/admin/settings")
    text = text_of(page)
    assert "MAILER_FROM The Daily Test <news@daily.example>" in text
    assert "MAILER_SECRET_KEY set" in text and env["MAILER_SECRET_KEY"] not in text
    assert "s3cret" not in text and "https://hooks:•••@example.com/report" in text
    assert [v.name for v in VARIABLES if v.name not in text] == []
    editor = app.test_client()
    login(editor, Role.EDITOR, "editor@daily.example")
    assert editor.get("/admin/settings").status_code == 403


def test_charts_are_svg_with_a_title_description_and_round_axes():
    assert [nice_max(v) for v in (0, 1, 3, 7, 10, 11, 180, 2001)] == [1, 1, 5, 10, 10, 20, 200,
                                                                    5000]
    chart = str(line_chart("Readers <all>", "Per day", ["1 Mar", "2 Mar"],
                           [("Active", "s-active", [3, 4])]))
    assert chart.startswith('<svg class="chart wide"') and '<svg class="chart narrow"' in chart
    assert "<title id=" in chart
    assert "Readers &lt;all&gt;" in chart and "<desc id=" in chart and "polyline" in chart
    bars = str(bar_chart("Clicks", "Per article", [("A very long article title " * 3, 7, "s")]))
    assert "…" in bars and ">7</text>" in bars
    assert "<svg" in str(bar_chart("Nothing", "No bars", []))


def test_counts_get_whole_number_ticks():
    assert [count_ticks(v) for v in (0, 1, 2, 3, 7, 130)] == [
        [0, 1], [0, 1], [0, 1, 2], [0, 1, 2, 3], [0, 2, 4, 6, 8], [0, 50, 100, 150]]
    # Two readers at most: the axis reads 0, 1, 2 (it read 0, 0.5, 1, 1.5, 2).
    chart = str(line_chart("Readers", "Per day", ["1 Mar", "2 Mar"], [("Active", "s-a", [1, 2])]))
    labels = re.findall(r'class="axis" x="\d+" y="[\d.]+" text-anchor="end">([^<]+)</text>',
                        chart)
    assert labels and all(label.replace(",", "").isdigit() for label in labels), labels
    assert set(labels) == {"0", "1", "2"}


@pytest.mark.redis
def test_the_broker_line_counts_confirmations_waiting_on_their_list(app):
    """With Redis, signups leave their confirmations on a list for a drain: ops see them
    beside the tasks in each queue."""
    import dataclasses

    import redis

    from mailer.tasks.notices import CONFIRMATIONS
    from mailer.tasks.queues import broker_backlog

    settings = app.extensions["mailer.settings"]
    url = settings.redis_url.rsplit("/", 1)[0] + "/13"  # a database no worker reads
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        client.lpush(CONFIRMATIONS, b"1 2027-01-01T00:00:00", b"2 2027-01-01T00:00:00",
                     b"3 2027-01-01T00:00:00")
        client.lpush("send", b"{}")
        backlog = broker_backlog(dataclasses.replace(settings, redis_url=url))
        assert backlog == {"celery": 0, "send": 1, "hooks": 0, "confirmations": 3}
    finally:
        client.flushdb()
        client.close()
