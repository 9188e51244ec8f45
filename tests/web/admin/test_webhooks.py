"""The console's webhooks page: ops add an endpoint (the secret shown once), see its last
deliveries, test, redeliver, rotate, disable, enable and remove it; editors may not."""

from __future__ import annotations

import html
import re

import pytest

from mailer.db import db
from mailer.models import HookEndpoint, Role
from mailer.services import after_commit
from mailer.tasks.base import hand_over
from tests.helpers.console import login
from tests.helpers.web import form_fields


def text_of(resp) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", resp.get_data(as_text=True))))


def add(client, **fields):
    page = client.get("/admin/webhooks")
    return client.post("/admin/webhooks", data={**form_fields(page.get_data(as_text=True)),
                                                **fields})


@pytest.fixture
def handed(app):
    got = []
    after_commit.install(lambda intent: got.append(intent) or True)
    yield got
    after_commit.install(hand_over)


def test_ops_manage_an_endpoint_from_the_console(client, make_email, handed):
    login(client, Role.OPS, make_email("ops"))
    index = client.get("/admin/webhooks")
    assert index.status_code == 200 and "No endpoints yet" in text_of(index)
    assert 'href="/admin/webhooks"' in index.get_data(as_text=True)  # in the menu

    bad = add(client, url="ftp://crm.example/x", events=["subscriber.confirmed"],
              description="CRM")
    assert bad.status_code == 400 and "must start with https://" in text_of(bad)
    assert 'value="CRM"' in bad.get_data(as_text=True)  # the form keeps what was typed
    assert db.session.query(HookEndpoint).count() == 0

    added = add(client, url="http://127.0.0.1:9/hooks",
                events=["subscriber.confirmed", "issue.finished"], personal_data="on")
    assert added.status_code == 200
    endpoint = db.session.query(HookEndpoint).one()
    endpoint_id = endpoint.id
    assert endpoint.secret in text_of(added) and "shown this once" in text_of(added)
    assert endpoint.personal_data and endpoint.event_types == ["issue.finished",
                                                               "subscriber.confirmed"]
    page = client.get(f"/admin/webhooks/{endpoint.id}")
    assert endpoint.secret not in page.get_data(as_text=True)
    token = form_fields(page.get_data(as_text=True))["csrf_token"]

    def act(path: str):
        resp = client.post(f"/admin/webhooks/{endpoint_id}/{path}", data={"csrf_token": token})
        db.session.expire_all()
        return resp

    assert act("test").status_code == 302
    shown = text_of(client.get(f"/admin/webhooks/{endpoint_id}"))
    assert "Test event queued" in shown and "webhook.test" in shown and "Last 1 deliveries" in shown
    (intent,) = handed
    assert act(f"deliveries/{intent.args[0]}/redeliver").status_code == 302
    assert [i.args for i in handed] == [intent.args, intent.args]

    def current() -> HookEndpoint:
        db.session.expire_all()
        return db.session.get(HookEndpoint, endpoint_id)

    old = endpoint.secret
    rotated = act("rotate-secret")
    assert current().secret != old and current().secret in text_of(rotated)
    act("disable")
    assert not current().enabled
    assert "Disabled: Disabled by an operator." in text_of(client.get(f"/admin/webhooks/{endpoint_id}"))
    assert "disabled: enable it to test it" in text_of(
        client.get(act("test").headers["Location"]))
    act("enable")
    assert current().enabled
    assert act("delete").status_code == 302
    assert db.session.query(HookEndpoint).count() == 0
    assert client.get(f"/admin/webhooks/{endpoint_id}").status_code == 404


def test_a_disabled_endpoint_is_a_warning_on_the_page_and_the_dashboard(client, make_email):
    from datetime import UTC, datetime

    login(client, Role.OPS, make_email("ops"))
    db.session.add(HookEndpoint(url="https://crm.example/x", events=",issue.finished,",
                                secret="whsec_AAAA", enabled=False,
                                failing_since=datetime(2027, 1, 1, tzinfo=UTC),
                                disabled_reason="Disabled on 2027-01-04 after failing for 72 hours"))
    db.session.commit()
    assert "was disabled: Disabled on 2027-01-04" in text_of(client.get("/admin/webhooks"))
    dashboard = text_of(client.get("/admin/"))
    assert "The webhook endpoint https://crm.example/x was disabled: Disabled on 2027-01-04" in dashboard


def test_editors_may_not(client, make_email):
    login(client, Role.EDITOR, make_email("editor"))
    assert client.get("/admin/webhooks").status_code == 403


def test_an_issue_or_schedule_event_names_its_newsletter(client, make_email, handed):
    from datetime import UTC, datetime

    from mailer.models import Issue, IssueStatus, Newsletter, ScheduleRun
    from mailer.services import issue_states, schedules

    login(client, Role.OPS, make_email("ops"))
    endpoint = HookEndpoint(url="https://crm.example/x", secret="whsec_AAAA",
                            events=",issue.finished,schedule.run,subscriber.created,")
    sport = Newsletter(slug="sport", name="The Sport Letter")
    db.session.add_all([endpoint, sport])
    db.session.flush()
    issue = Issue(subject="Cup final", status=IssueStatus.SENDING, newsletter_id=sport.id)
    db.session.add(issue)
    db.session.flush()
    issue_states.transition(db.session, issue.id, issue_states.FINISH)
    schedule = schedules.create_schedule(db.session, name="Sport Monday", cron_text="mon 07:00",
                                         newsletter="sport")
    run = ScheduleRun(schedule_id=schedule.id, period_start=datetime(2027, 1, 4, 7, tzinfo=UTC),
                      status="skipped", reason="Nothing new to send.")
    db.session.add(run)
    db.session.flush()
    schedules.run_event(db.session, schedule, run)
    db.session.commit()

    shown = text_of(client.get(f"/admin/webhooks/{endpoint.id}"))
    assert f'issue.finished issue #{issue.id} “Cup final” · The Sport Letter' in shown
    assert 'schedule.run schedule “Sport Monday”, skipped · The Sport Letter' in shown


def test_the_deliveries_page_says_how_long_they_are_kept(app, env, make_email):
    from tests.helpers.app import make_app

    with app.app_context():
        db.session.add(HookEndpoint(url="https://crm.example/x", events=",issue.finished,",
                                    secret="whsec_AAAA"))
        db.session.commit()
        endpoint_id = db.session.query(HookEndpoint).one().id
    for keep, said in (("30", "Finished deliveries are kept 30 days after their last attempt"),
                       ("1", "Finished deliveries are kept 1 day after"),
                       ("0", "Deliveries are kept forever")):
        configured = make_app(env, MAILER_WEBHOOK_KEEP_DAYS=keep)
        client = configured.test_client()
        with configured.app_context():
            login(client, Role.OPS, make_email("ops"))
        assert said in text_of(client.get(f"/admin/webhooks/{endpoint_id}")), keep
