"""Composing digest issues over time: Latest, Most popular, no repeats, skips, sections, edits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from mailer.db import db
from mailer.errors import Conflict, NotFound
from mailer.feeds import parse_document
from mailer.models import Article, Frequency, Issue, IssueItem, IssueStatus, ItemSection, Schedule
from mailer.services import articles, digests, issue_edits, newsletters, render
from tests.helpers.digests import BROWSER_UA, add_article, digest_app, mark_sent
from tests.helpers.feeds import FEEDS


def at(day: int, hour: int = 12, month: int = 11) -> datetime:
    return datetime(2017, month, day, hour, tzinfo=UTC)


def ingest(*names: str) -> dict[str, Article]:
    """Real feeds from tests/fixtures/feeds, through the articles service; by title."""
    for name in names:
        articles.ingest(db.session, parse_document((FEEDS / name).read_bytes()), source=name)
    db.session.commit()
    return {a.title: a for a in db.session.scalars(select(Article))}


def views(rt, article: Article, count: int, when: datetime) -> None:
    """`count` different readers view the article's page on that day."""
    for n in range(count):
        visitor = f"visitor-{article.id}-{n}-{BROWSER_UA[:8]}"
        assert rt.popularity.record_view(db.session, article.id, visitor, when)
    db.session.commit()


def items(issue: Issue, section: ItemSection | None = None) -> list[str]:
    rows = db.session.scalars(
        select(IssueItem)
        .where(IssueItem.issue_id == issue.id, IssueItem.excluded.is_(False))
        .order_by(IssueItem.section, IssueItem.position)
    )
    return [i.article.title for i in rows if section is None or i.section == section]


def create(rt, now: datetime, **kw) -> Issue:
    with time_machine.travel(now, tick=False):
        issue = digests.create_issue(db.session, rt.settings, rt.popularity, now=now, **kw)
        db.session.commit()
    return issue


DESCENT = "Hands-on: Garmin’s New Descent MK1 Diving Watch"
EPSON = "Epson’s New ProSense Running & Triathlon GPS watches: Everything you ever wanted to know"
CAVE = "The 4th Annual DCR Cave Open House–December 2nd, 2017"
REVIEW = "Week in Review–Nov 5th, 2017"
RANDOM = "5 Random Things I Did This Weekend"
WATCH = "Apple Watch Series 3: Sport & Fitness In-Depth Review"
POWER = "The Power Meters Buyer’s Guide–2017 Edition"
SALE = (
    "Huge Fall Sale: 20% of All Trainers & Most Power Meters, $100 off Fenix 5, GoPro Hero6 deal!"
)
INSTAGRAM = "Instagram hits 400 million users"
MIRROR = "Complete mirror of this blog"


def test_issues_over_weeks_never_repeat_an_article_and_skip_when_nothing_is_new(app):
    rt = app.extensions["mailer"]
    by_title = ingest("dcrainmaker.xml", "manton.rss")
    # Readers liked two older posts and one of this week's.
    views(rt, by_title[INSTAGRAM], 5, at(4))
    views(rt, by_title[MIRROR], 3, at(4))
    views(rt, by_title[REVIEW], 4, at(5, 20))

    first = create(rt, at(5, 21), latest_n=3, popular_m=2)
    assert first.status == IssueStatus.DRAFT
    assert (first.window_start, first.window_end) == (at(5, 21) - timedelta(days=7), at(5, 21))
    assert items(first, ItemSection.LATEST) == [REVIEW, CAVE, EPSON]  # newest first, N = 3
    assert items(first, ItemSection.POPULAR) == [INSTAGRAM, MIRROR]  # REVIEW is in Latest
    mark_sent(db.session, first, at(5, 22))
    db.session.commit()

    # A week later the older Descent post is read a lot; so are posts the readers already got.
    views(rt, by_title[DESCENT], 2, at(8))
    views(rt, by_title[INSTAGRAM], 9, at(8))
    views(rt, by_title[REVIEW], 9, at(8))
    second = create(rt, at(9), latest_n=3, popular_m=2)
    assert second.window_start == at(5, 21)  # since the last sent issue of this audience
    assert items(second, ItemSection.LATEST) == [SALE, POWER, WATCH]
    assert items(second, ItemSection.POPULAR) == [DESCENT]  # nothing else unsent is ranked
    assert not set(items(first)) & set(items(second))

    # An unsent draft does not count as sent: a second draft proposes the same articles.
    draft = create(rt, at(9, 13), latest_n=3, popular_m=2)
    assert items(draft) == items(second)
    mark_sent(db.session, second, at(9, 14))
    db.session.commit()

    # Nothing published since the last issue: the issue is recorded, skipped, with the reason.
    third = create(rt, at(10), latest_n=3, popular_m=2)
    assert third.status == IssueStatus.SKIPPED
    assert third.status_reason == (
        "Nothing new since 2017-11-09 12:00 UTC; at least 1 new article(s) needed."
    )
    assert not set(items(third)) & (set(items(first)) | set(items(second)))

    # Daily readers are another audience with their own history.
    daily = create(rt, at(9), latest_n=10, popular_m=0, audience_frequency=Frequency.DAILY)
    assert daily.status == IssueStatus.DRAFT and daily.window_start == at(2)
    assert items(daily) == [SALE, POWER, WATCH, RANDOM, REVIEW, CAVE]


def test_the_skip_threshold_is_the_newsletters(app, env):
    rt = digest_app(env).extensions["mailer"]
    newsletters.first(db.session).min_items = 3
    add_article(db.session, "One", at(5, 9))
    add_article(db.session, "Two", at(5, 10))
    db.session.commit()
    issue = create(rt, at(5), popular_m=0)
    assert issue.status == IssueStatus.SKIPPED and issue.min_items == 3
    assert issue.status_reason.startswith("Only 2 new article(s) since 2017-10-29 12:00 UTC")
    ok = create(rt, at(5), popular_m=0, min_items=2)
    assert ok.status == IssueStatus.DRAFT and items(ok) == ["Two", "One"]


def test_an_audience_of_sections_gets_only_those_sections(app, env):
    rt = digest_app(env).extensions["mailer"]
    by_title = ingest("dcrainmaker.xml")
    views(rt, by_title[DESCENT], 3, at(9))  # Garmin = sport
    views(rt, by_title[CAVE], 5, at(9))  # Blog = news
    issue = create(rt, at(9), audience_sections="sport", popular_m=3)
    assert issue.audience_sections == "sport"
    assert items(issue, ItemSection.LATEST) == [POWER, WATCH]
    assert items(issue, ItemSection.POPULAR) == [DESCENT]
    everyone = create(rt, at(9), popular_m=3, latest_n=2)
    assert items(everyone, ItemSection.POPULAR) == [CAVE, DESCENT]
    # Sent to the sport readers: the readers of all sections may still get those articles.
    mark_sent(db.session, issue, at(9, 13))
    db.session.commit()
    again = create(rt, at(9, 14), popular_m=3, latest_n=2)
    assert items(again, ItemSection.LATEST) == [SALE, POWER]


def test_pinned_items_stay_and_excluded_ones_stay_out_when_recomposing(app):
    rt = app.extensions["mailer"]
    a = add_article(db.session, "Alpha", at(5, 8))
    b = add_article(db.session, "Bravo", at(5, 9))
    old = add_article(db.session, "Old but gold", at(1, 9, 10))
    db.session.commit()
    issue = create(rt, at(5), popular_m=0)
    assert items(issue) == ["Bravo", "Alpha"]

    issue_edits.exclude(db.session, issue.id, b.id)
    issue_edits.pin(db.session, issue.id, old.id, ItemSection.POPULAR)
    issue_edits.pin(db.session, issue.id, a.id)
    db.session.commit()
    assert items(issue) == ["Alpha", "Old but gold"]

    add_article(db.session, "Charlie", at(5, 15))
    db.session.commit()
    with time_machine.travel(at(5, 16), tick=False):
        digests.recompose(db.session, rt.settings, rt.popularity, issue.id, now=at(5, 16))
        db.session.commit()
    assert items(issue, ItemSection.LATEST) == ["Alpha", "Charlie"]
    assert items(issue, ItemSection.POPULAR) == ["Old but gold"]
    _subject, _html, text = render.render_preview(db.session, issue, "", rt.settings)
    assert "Bravo" not in text and "Charlie" in text and "Old but gold" in text

    # An exclusion can be undone, and done again.
    issue_edits.include(db.session, issue.id, b.id)
    db.session.commit()
    assert "Bravo" in items(issue)
    issue_edits.exclude(db.session, issue.id, b.id)
    db.session.commit()
    mark_sent(db.session, issue, at(5, 17))
    db.session.commit()
    # What was excluded was never sent: it may still come in a later issue.
    first = newsletters.first(db.session).id
    sent = digests.already_sent(db.session, first, Frequency.WEEKLY, "")
    assert {a.id, old.id} <= sent and b.id not in sent


def test_items_can_be_moved_within_and_across_sections(app):
    rt = app.extensions["mailer"]
    for n, name in enumerate(["A", "B", "C", "D"]):
        add_article(db.session, name, at(5, 8 + n))
    db.session.commit()
    issue = create(rt, at(5), popular_m=0)
    ids = {
        i.article.title: i.id
        for i in db.session.scalars(select(IssueItem).where(IssueItem.issue_id == issue.id))
    }
    assert items(issue) == ["D", "C", "B", "A"]
    issue_edits.move(db.session, issue.id, ids["A"], 0)
    issue_edits.move(db.session, issue.id, ids["C"], 99)
    db.session.commit()
    assert items(issue) == ["A", "D", "B", "C"]
    issue_edits.move(db.session, issue.id, ids["D"], 0, ItemSection.POPULAR)
    db.session.commit()
    assert items(issue, ItemSection.LATEST) == ["A", "B", "C"]
    assert items(issue, ItemSection.POPULAR) == ["D"]
    with pytest.raises(NotFound):
        issue_edits.move(db.session, issue.id, 10_000, 0)


def test_only_draft_and_scheduled_issues_can_be_edited(app):
    rt = app.extensions["mailer"]
    article = add_article(db.session, "Only story", at(5, 8))
    db.session.commit()
    issue = create(rt, at(5), popular_m=0)
    item_id = db.session.scalar(select(IssueItem.id).where(IssueItem.issue_id == issue.id))
    issue.status = IssueStatus.SCHEDULED
    db.session.commit()
    issue_edits.set_text(db.session, issue.id, subject="Scheduled, still editable")
    db.session.commit()
    mark_sent(db.session, issue, at(5, 9))
    db.session.commit()
    edits = [
        lambda: issue_edits.set_text(db.session, issue.id, subject="Too late"),
        lambda: issue_edits.pin(db.session, issue.id, article.id),
        lambda: issue_edits.exclude(db.session, issue.id, article.id),
        lambda: issue_edits.move(db.session, issue.id, item_id, 0),
        lambda: digests.recompose(db.session, rt.settings, rt.popularity, issue.id),
    ]
    for edit in edits:
        with pytest.raises(Conflict, match="only draft or scheduled issues can be edited"):
            edit()
        db.session.rollback()
    kept = db.session.get(Issue, issue.id)
    assert kept.subject == "Scheduled, still editable" and items(kept) == ["Only story"]
    with pytest.raises(NotFound):
        issue_edits.set_text(db.session, 999_999, subject="x")


def test_one_issue_per_schedule_and_period(app):
    rt = app.extensions["mailer"]
    add_article(db.session, "Story", at(5, 8))
    schedule = Schedule(name="weekly", cron="0 7 * * mon", timezone="Europe/Berlin")
    db.session.add(schedule)
    db.session.commit()
    first = create(rt, at(6, 6), schedule_id=schedule.id, period_start=at(6, 6))
    assert (first.schedule_id, first.period_start) == (schedule.id, at(6, 6))
    with pytest.raises(IntegrityError):
        digests.create_issue(
            db.session, rt.settings, rt.popularity, now=at(6, 6), schedule_id=schedule.id,
            period_start=at(6, 6),
        )
    db.session.rollback()
    assert db.session.scalar(select(func.count()).select_from(Issue)) == 1


def test_latest_pages_through_long_gaps(app, env, monkeypatch):
    rt = digest_app(env).extensions["mailer"]
    monkeypatch.setattr(digests, "PAGE", 3)  # a few rows per query, to cross page boundaries
    for n in range(10):
        add_article(db.session, f"Blog {n}", at(5, 1 + n), categories=["Blog"])
        add_article(
            db.session,
            f"Sale {n}",
            at(5, 1 + n),
            url=f"https://daily.example/sale-{n}",
            categories=["Sales"],
        )
    db.session.commit()
    issue = create(rt, at(5, 23), audience_sections="business", latest_n=4, popular_m=0)
    assert items(issue) == ["Sale 9", "Sale 8", "Sale 7", "Sale 6"]
    issue = create(rt, at(5, 23), audience_sections="business", latest_n=40, popular_m=0)
    assert len(items(issue)) == 10
