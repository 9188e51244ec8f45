"""The console's schedules page: next runs in local time, runs with outcome, the actions."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime

import time_machine

from mailer.db import db
from mailer.models import Role, Schedule, ScheduleRun
from mailer.services import users
from mailer.tasks.schedules import fire_schedules
from tests.helpers.web import form_fields, post_form


def login(client, role: Role, email: str) -> None:
    users.create_user(db.session, email, "a long enough password", role)
    db.session.commit()
    resp = post_form(client, "/admin/login", email=email, password="a long enough password")
    assert resp.status_code == 302


def text_of(resp) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", resp.get_data(as_text=True))))


def test_add_a_schedule_and_see_its_next_runs_in_local_time(client, make_email):
    with time_machine.travel(datetime(2027, 3, 20, 12, tzinfo=UTC), tick=False):
        login(client, Role.OPS, make_email("ops"))
        index = client.get("/admin/schedules")
        assert index.status_code == 200 and "No schedules yet" in text_of(index)
        assert 'href="/admin/schedules"' in index.get_data(as_text=True)  # in the menu

        bad = post_form(client, "/admin/schedules/new", name="Weekly", cron="0 7 * *",
                        timezone="Europe/Berlin")
        assert bad.status_code == 400 and "neither five cron fields" in text_of(bad)
        assert 'value="Weekly"' in bad.get_data(as_text=True)  # the form keeps what was typed
        assert db.session.query(Schedule).count() == 0

        made = post_form(client, "/admin/schedules/new", name="Weekly", cron="sun 02:30",
                         timezone="Europe/Berlin", sections="news", latest_n="6")
        assert made.status_code == 302
        page = client.get(made.headers["Location"])
        text = text_of(page)
        assert "Schedule 'Weekly' added." in text
        assert "Sundays at 02:30, Europe/Berlin" in text and "weekly readers of news" in text
        # 28 March 2027: 02:30 does not exist in Berlin; the run moves to 03:00 CEST.
        assert "Sun 2027-03-21 02:30 CET" in text and "Sun 2027-03-28 03:00 CEST" in text
        assert "Sun 2027-04-04 02:30 CEST" in text

        listing = text_of(client.get("/admin/schedules"))
        assert "Weekly" in listing and "Sun 2027-03-21 02:30 CET" in listing


def test_runs_show_their_outcome_and_actions_work(app, client, make_email):
    email = make_email("admin")
    with time_machine.travel(datetime(2027, 5, 1, tzinfo=UTC), tick=False):
        login(client, Role.ADMIN, email)
        post_form(client, "/admin/schedules/new", name="Daily", cron="daily 06:30",
                  timezone="America/New_York")
    sid = db.session.query(Schedule).one().id
    # The scheduler was down from 1 May (before the first period) until 7 hours after the
    # fourth: all four are missed, the last because it is beyond the 6-hour grace period.
    with time_machine.travel(datetime(2027, 5, 4, 17, 30, tzinfo=UTC), tick=False):
        with app.app_context():
            assert fire_schedules() == {"missed": 4}
        post_form(client, "/admin/login", email=email, password="a long enough password")
        page = client.get(f"/admin/schedules/{sid}")
        text = text_of(page)
        assert "4 runs, newest first." in text
        assert text.count("missed") >= 4
        assert "Tue 2027-05-04 06:30 EDT" in text and "beyond the grace period of 6 h" in text
        assert "only the latest period (Tue 2027-05-04 06:30 EDT) is made up" in text
        overview = text_of(client.get("/admin/schedules"))
        assert "Recent runs" in overview and "Sun 2027-05-02 06:30 EDT" in overview

        token = form_fields(page.get_data(as_text=True))["csrf_token"]
        resp = client.post(f"/admin/schedules/{sid}/pause", data={"csrf_token": token},
                           follow_redirects=True)
        assert "Schedule 'Daily' paused." in text_of(resp)
        assert "None while the schedule is paused" in text_of(resp)
        resp = client.post(f"/admin/schedules/{sid}/pause", data={"csrf_token": token},
                           follow_redirects=True)
        assert "must be active to become paused" in text_of(resp)
        assert client.post(f"/admin/schedules/{sid}/resume").status_code == 400  # no CSRF token
        resp = client.post(f"/admin/schedules/{sid}/resume", data={"csrf_token": token},
                           follow_redirects=True)
        assert "Schedule 'Daily' resumed." in text_of(resp)

        resp = client.post(f"/admin/schedules/{sid}/delete", data={"csrf_token": token},
                           follow_redirects=True)
        assert "Schedule 'Daily' deleted" in text_of(resp)
        assert client.get(f"/admin/schedules/{sid}").status_code == 404
    db.session.expire_all()
    assert db.session.query(Schedule).count() == 0 and db.session.query(ScheduleRun).count() == 0


def test_editors_may_not_manage_schedules(client, make_email):
    login(client, Role.EDITOR, make_email("editor"))
    assert client.get("/admin/schedules").status_code == 403
    assert 'href="/admin/schedules"' not in client.get("/admin/").get_data(as_text=True)


def test_run_now_from_the_console(client, make_email):
    with time_machine.travel(datetime(2027, 6, 1, 9, 15, tzinfo=UTC), tick=False):
        login(client, Role.OPS, make_email("ops"))
        made = post_form(client, "/admin/schedules/new", name="Weekly", cron="mon 07:00",
                         timezone="UTC")
        page = client.get(made.headers["Location"])
        token = form_fields(page.get_data(as_text=True))["csrf_token"]
        resp = client.post(made.headers["Location"] + "/run-now", data={"csrf_token": token},
                           follow_redirects=True)
        text = text_of(resp)
        assert "Skipped: Nothing new since 2027-05-25 09:15 UTC" in text
        assert "Started by hand" not in text  # the digest's skip reason replaces it
        assert "1 run, newest first." in text and "Tue 2027-06-01 09:15 UTC" in text
        again = client.post(made.headers["Location"] + "/run-now", data={"csrf_token": token},
                            follow_redirects=True)
        assert "already fired this minute" in text_of(again)
