"""Issues and schedules per newsletter: each belongs to one, takes its digest defaults, and
"since the last issue" and "never repeat a story" look at that newsletter's issues only;
an archived newsletter takes no new issue or schedule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import select

from mailer.clock import utcnow
from mailer.db import db
from mailer.errors import Conflict, NotFound
from mailer.models import Issue, IssueItem, IssueStatus, Newsletter
from mailer.services import digests, newsletters, schedules
from tests.helpers.digests import add_article, mark_sent


def at(day: int, hour: int = 12) -> datetime:
    return datetime(2027, 3, day, hour, tzinfo=UTC)


def sport(**fields) -> Newsletter:
    letter = Newsletter(slug="sport", name="The Sport Letter", **fields)
    db.session.add(letter)
    db.session.commit()
    return letter


def create(rt, now: datetime, **kw) -> Issue:
    with time_machine.travel(now, tick=False):
        issue = digests.create_issue(db.session, rt.settings, rt.popularity, now=now, **kw)
        db.session.commit()
    return issue


def titles(issue: Issue) -> list[str]:
    rows = db.session.scalars(
        select(IssueItem).where(IssueItem.issue_id == issue.id)
        .order_by(IssueItem.section, IssueItem.position)
    )
    return [i.article.title for i in rows]


def test_each_newsletter_has_its_own_memory_and_window(app):
    rt = app.extensions["mailer"]
    other = sport()
    first = newsletters.first(db.session)
    for n in range(3):
        add_article(db.session, f"Story {n}", at(5, 8 + n))
    db.session.commit()

    # The first newsletter sends the three stories.
    morning = create(rt, at(5, 20), latest_n=5, popular_m=0)
    assert morning.newsletter_id == first.id
    assert titles(morning) == ["Story 2", "Story 1", "Story 0"]
    mark_sent(db.session, morning, at(5, 21))
    db.session.commit()

    # The sport letter never sent them: its first issue proposes the same stories and looks
    # back its own seven days, not from the other newsletter's last issue.
    letter = create(rt, at(6, 9), newsletter="sport", latest_n=5, popular_m=0)
    assert letter.newsletter_id == other.id and letter.status == IssueStatus.DRAFT
    assert letter.window_start == at(6, 9) - timedelta(days=7)
    assert titles(letter) == ["Story 2", "Story 1", "Story 0"]
    mark_sent(db.session, letter, at(6, 10))
    db.session.commit()

    # A new story: each newsletter proposes only what it has not sent, since its own last
    # issue; the first newsletter's next window starts where its own last one ended.
    add_article(db.session, "Story 3", at(6, 12))
    db.session.commit()
    again = create(rt, at(7), latest_n=5, popular_m=0)
    assert again.window_start == at(5, 20) and titles(again) == ["Story 3"]
    sport_again = create(rt, at(7), newsletter=other, latest_n=5, popular_m=0)
    assert sport_again.window_start == at(6, 9) and titles(sport_again) == ["Story 3"]

    # Recomposing keeps to the newsletter too.
    recomposed = digests.recompose(db.session, rt.settings, rt.popularity, sport_again.id,
                                   now=at(7, 13))
    assert recomposed.window_start == at(6, 9) and titles(recomposed) == ["Story 3"]
    db.session.commit()

    # Nothing new for the sport letter after it sent story 3; the first newsletter has it.
    mark_sent(db.session, sport_again, at(7, 14))
    db.session.commit()
    empty = create(rt, at(8), newsletter="sport", latest_n=5, popular_m=0)
    assert empty.status == IssueStatus.SKIPPED
    assert titles(create(rt, at(8), latest_n=5, popular_m=0)) == ["Story 3"]


def test_counts_not_given_are_the_newsletters(app):
    rt = app.extensions["mailer"]
    sport(latest_n=2, popular_m=0, min_items=3)
    for n in range(2):
        add_article(db.session, f"Match {n}", at(5, 8 + n))
    db.session.commit()
    issue = create(rt, at(5, 20), newsletter="sport")
    assert (issue.latest_n, issue.popular_m, issue.min_items) == (2, 0, 3)
    assert issue.status == IssueStatus.SKIPPED  # two new stories, three needed
    given = create(rt, at(5, 21), newsletter="sport", min_items=1)
    assert given.status == IssueStatus.DRAFT and given.min_items == 1

    with app.app_context():
        made = schedules.create_schedule(db.session, name="Sport weekly", cron_text="mon 07:00",
                                         newsletter="sport")
        assert (made.newsletter_id, made.latest_n, made.popular_m, made.min_items) == (
            newsletters.by_slug(db.session, "sport").id, 2, 0, 3)
        plain = schedules.create_schedule(db.session, name="Weekly", cron_text="mon 07:00")
        assert plain.newsletter_id == newsletters.first(db.session).id
        db.session.commit()


def test_an_archived_newsletter_takes_no_new_issue_or_schedule(app):
    rt = app.extensions["mailer"]
    sport(archived_at=utcnow())
    with pytest.raises(Conflict, match="archived"):
        create(rt, at(5), newsletter="sport")
    db.session.rollback()
    with pytest.raises(Conflict, match="archived"):
        schedules.create_schedule(db.session, name="Sport", cron_text="mon 07:00",
                                  newsletter="sport")
    db.session.rollback()
    with pytest.raises(NotFound):
        create(rt, at(5), newsletter="no-such-letter")
    db.session.rollback()
    assert db.session.scalar(select(Issue.id)) is None


def test_issues_and_schedules_show_and_filter_by_newsletter(app):
    rt = app.extensions["mailer"]
    other = sport()
    add_article(db.session, "Story", at(5, 8))
    db.session.commit()
    mine = create(rt, at(5, 20), min_items=0)
    theirs = create(rt, at(5, 20), newsletter=other, min_items=0)
    first = newsletters.first(db.session)
    assert digests.describe(db.session, theirs, rt.settings)["newsletter"] == "sport"
    assert digests.summary(db.session, mine)["newsletter"] == first.slug
    assert [i.id for i in digests.list_issues(db.session, newsletter_id=other.id)] == [theirs.id]
    assert [i.id for i in digests.list_issues(db.session, newsletter_id=first.id)] == [mine.id]
