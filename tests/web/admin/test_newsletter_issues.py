"""The console's issues and schedules per newsletter: the composer and the schedule form pick
the newsletter when there are several, lists show it and filter by it."""

from __future__ import annotations

from datetime import timedelta

from mailer.clock import utcnow
from mailer.db import db
from mailer.models import Issue, IssueStatus, Newsletter, Role, Schedule
from mailer.services import newsletters
from tests.helpers.console import login, post, text_of
from tests.helpers.digests import add_article


def _two_letters() -> str:
    db.session.add(Newsletter(slug="sport", name="The Sport Letter", latest_n=2, popular_m=0))
    db.session.add(Newsletter(slug="gone", name="Gone Letter", archived_at=utcnow()))
    add_article(db.session, "Cup final tonight", utcnow() - timedelta(hours=1))
    db.session.commit()
    return newsletters.first(db.session).name


def test_the_composer_asks_which_newsletter_and_the_list_shows_and_filters_it(client):
    first = _two_letters()
    login(client, Role.EDITOR, "editor@daily.example")
    page = client.get("/admin/issues").get_data(as_text=True)
    # Several newsletters take new issues: the form asks, archived ones are not offered.
    assert '<select id="newsletter" name="newsletter" required>' in page
    assert "The Sport Letter" in page and ">Gone Letter<" not in page.split("Filter issues")[0]

    made = post(client, "/admin/issues/new", newsletter="sport")
    assert made.status_code == 302
    issue = db.session.query(Issue).one()
    assert issue.newsletter.slug == "sport" and issue.latest_n == 2
    composer = text_of(client.get(made.headers["Location"]))
    assert "The Sport Letter: for weekly readers" in composer
    assert "Readers see: The Sport Letter: Cup final tonight" in composer

    refused = post(client, "/admin/issues/new", newsletter="gone")
    assert refused.status_code == 409 and "archived" in text_of(refused)
    assert post(client, "/admin/issues/new", newsletter="").status_code == 302  # the first

    listed = text_of(client.get("/admin/issues"))
    assert "The Sport Letter" in listed and first in listed
    only = client.get("/admin/issues?newsletter=sport")
    rows = only.get_data(as_text=True).split("<tbody>")[1]
    assert f"#{issue.id}" in rows and rows.count("<tr>") == 1
    assert client.get("/admin/issues?newsletter=nope").status_code == 404


def test_one_newsletter_asks_nothing(client):
    login(client, Role.EDITOR, "editor@daily.example")
    page = client.get("/admin/issues").get_data(as_text=True)
    assert '<select id="newsletter"' not in page
    first = newsletters.first(db.session)
    assert f'<input type="hidden" name="newsletter" value="{first.slug}">' in page


def test_the_schedule_form_asks_which_newsletter_and_the_list_filters(client):
    _two_letters()
    login(client, Role.OPS, "ops@daily.example")
    form = client.get("/admin/schedules/new").get_data(as_text=True)
    assert '<select id="newsletter" name="newsletter" required>' in form
    made = post(client, "/admin/schedules/new", name="Sport Monday", cron="mon 07:00",
                timezone="Europe/Berlin", newsletter="sport")
    assert made.status_code == 302
    schedule = db.session.query(Schedule).one()
    assert schedule.newsletter.slug == "sport" and schedule.latest_n == 2
    assert "The Sport Letter" in text_of(client.get(made.headers["Location"]))
    refused = post(client, "/admin/schedules/new", name="Late", cron="mon 07:00",
                   timezone="UTC", newsletter="gone")
    assert refused.status_code == 400 and "archived" in text_of(refused)
    assert post(client, "/admin/schedules/new", name="Plain", cron="tue 07:00",
                timezone="UTC", newsletter="").status_code == 302

    listed = text_of(client.get("/admin/schedules"))
    assert "Sport Monday The Sport Letter" in listed
    only = text_of(client.get("/admin/schedules?newsletter=sport"))
    assert "Sport Monday" in only and "Plain" not in only
    assert client.get("/admin/schedules?newsletter=nope").status_code == 404


def test_the_dashboards_compose_button_asks_too_when_there_are_several(client):
    login(client, Role.EDITOR, "editor@daily.example")
    one = client.get("/admin/").get_data(as_text=True)
    first = newsletters.first(db.session)
    assert f'<input type="hidden" name="newsletter" value="{first.slug}">' in one
    _two_letters()
    several = client.get("/admin/").get_data(as_text=True)
    assert '<a class="button" href="/admin/issues#new-h">Compose a new issue</a>' in several
    assert f'name="newsletter" value="{first.slug}"' not in several


def test_the_dashboard_names_the_newsletter_of_each_issue_and_what_comes_next(client):
    first = _two_letters()
    sport = newsletters.by_slug(db.session, "sport")
    now = utcnow()
    cup = Issue(subject="Cup final", status=IssueStatus.FINISHED, newsletter_id=sport.id,
                started_at=now - timedelta(hours=2))
    daily = Issue(subject="Morning news", status=IssueStatus.FINISHED,
                  newsletter_id=newsletters.first(db.session).id,
                  started_at=now - timedelta(hours=1))
    later = Issue(subject="Match preview", status=IssueStatus.SCHEDULED, newsletter_id=sport.id,
                  send_at=now + timedelta(days=1))
    db.session.add_all([cup, daily, later])
    db.session.commit()
    login(client, Role.EDITOR, "editor@daily.example")
    text = text_of(client.get("/admin/"))
    last = text.split("Last issues")[1]
    assert f"Morning news #{daily.id} {first} {daily.started_at:%Y-%m-%d %H:%M}" in last
    assert f"Cup final #{cup.id} The Sport Letter {cup.started_at:%Y-%m-%d %H:%M}" in last
    assert f"issue #{later.id} · The Sport Letter" in text.split("Coming up")[1]


def test_the_newsletter_page_leads_ops_to_its_readers(client):
    _two_letters()
    login(client, Role.OPS, "ops@daily.example")
    page = client.get("/admin/newsletters/sport").get_data(as_text=True)
    assert '<a href="/admin/subscribers?newsletter=sport">Its readers</a>' in page
