"""Webhook deliveries through real worker processes to a real receiver that verifies every
signature with the `standardwebhooks` package: after the real actions, retried with the
same webhook-id, an endpoint that stays down disabled and ops told, a SIGKILLed worker's
attempt made again, thousands of signups each told once."""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from mailer.clock import utcnow
from mailer.db import db
from mailer.models import HookDelivery, HookEndpoint, HookEvent, HookStatus, Subscriber
from mailer.services import deliveries, hook_endpoints, hooks, newsletters
from tests.helpers.app import make_app
from tests.helpers.delivery import add_readers, make_renderer, new_issue, wait_finished
from tests.helpers.hooks import Receiver
from tests.helpers.servers import WorkerProcess, free_port, wait_until
from tests.helpers.web import form_fields, link_with, local, post_form, signup

OPS = "ops@daily.example"
# A short test clock: the retries' waits in seconds, and 2.9 s of failing disables.
RETRIES = (0.5, 0.5, 1.0, 1.0, 1.0, 1.0)
DISABLE_HOURS = 0.0008


@pytest.fixture(scope="module")
def hook_worker(base_env, tmp_path_factory):
    """A worker of its own on the webhooks' queue, with the short test clock."""
    env = {**base_env, "MAILER_WORKER_TICK": "off", "MAILER_OPS_EMAIL": OPS,
           "MAILER_WEBHOOK_RETRIES": ",".join(map(str, RETRIES)),
           "MAILER_WEBHOOK_DISABLE_HOURS": str(DISABLE_HOURS)}
    proc = WorkerProcess(env, tmp_path_factory.mktemp("hooks") / "worker.log",
                         args=["--pool", "prefork", "--concurrency", "2", "-Q", "hooks"]).start()
    yield proc
    proc.stop()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def add_endpoint(url: str, events="*", personal=True) -> tuple[int, str]:
    with db.transaction() as s:
        endpoint = hook_endpoints.create(s, url=url, events=events, personal_data=personal,
                                         allow_http=True, allow_private=True)
        return endpoint.id, endpoint.secret


def listen(receiver: Receiver, events="*", personal=True) -> int:
    endpoint_id, receiver.secret = add_endpoint(receiver.url, events, personal)
    return endpoint_id


def delivery_rows(endpoint_id: int) -> list[HookDelivery]:
    with db.transaction() as s:
        rows = list(s.scalars(select(HookDelivery).where(HookDelivery.endpoint_id == endpoint_id)
                              .order_by(HookDelivery.id)))
        s.expunge_all()
        return rows


def test_a_readers_journey_arrives_signed_event_by_event(
        client, smtp, worker, hook_worker, receiver, make_email):
    listen(receiver)
    email = make_email()
    assert signup(client, email, name="Ada Reader").status_code == 200
    (created,) = receiver.wait_for("subscriber.created")
    sub = created.data["subscriber"]
    assert (sub["email"], sub["name"], sub["status"]) == (email, "Ada Reader", "pending")

    (mail,) = smtp.wait_for(email)
    assert post_form(client, local(link_with(mail, "/confirm/"))).status_code == 200
    (confirmed,) = receiver.wait_for("subscriber.confirmed")
    assert confirmed.data["subscriber"] == {**sub, "status": "active"}

    from mailer.runtime import runtime

    with client.application.app_context():
        prefs = local(runtime().links.preferences(
            db.session.scalar(select(Subscriber.uid).where(Subscriber.email == email))))
    page = client.get(prefs)
    with client.application.app_context():
        n = newsletters.first(db.session).id
    client.post(prefs, data={**form_fields(page.get_data(as_text=True)), "action": "save",
                             "name": "Ada", f"on-{n}": "yes", f"frequency-{n}": "daily",
                             f"sections-{n}": ["sport"]})
    (updated,) = receiver.wait_for("subscriber.updated")
    assert updated.data["changed"] == ["name", "frequency", "sections"]
    assert updated.data["subscriber"]["frequency"] == "daily"

    welcome = [m for m in smtp.wait_for(email, 2) if "Welcome" in m.message["Subject"]][0]
    unsubscribe_url = welcome.message["List-Unsubscribe"].split("<", 1)[1].split(">")[0]
    fresh = client.application.test_client()
    fresh.post(local(unsubscribe_url), data={"List-Unsubscribe": "One-Click"})
    (left,) = receiver.wait_for("subscriber.unsubscribed")
    assert left.data["subscriber"]["status"] == "unsubscribed"
    assert left.data["how"] == "one-click"

    got = receiver.of_type("subscriber.created") + [confirmed, updated, left]
    assert len({g.msg_id for g in got}) == 4 and all(g.msg_id.startswith("msg_") for g in got)
    assert {g.data["subscriber"]["id"] for g in got} == {sub["id"]}
    assert abs(got[-1].timestamp - time.time()) < 60
    assert receiver.unverified == []


@pytest.mark.browser
def test_a_signup_in_the_browser_is_told(app, live_server, page, hook_worker, receiver,
                                         make_email):
    listen(receiver, "subscriber.created", personal=False)
    email = make_email()
    page.goto(f"{live_server}/subscribe")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Name").fill("Ada Reader")
    page.get_by_role("button", name="Subscribe").click()
    page.get_by_role("heading", name="Almost done: check your inbox").wait_for()
    (created,) = receiver.wait_for("subscriber.created")
    with db.transaction() as s:
        sub_id = s.scalar(select(Subscriber.id).where(Subscriber.email == email))
    # This endpoint did not opt in to personal data: the reader's id, not their address.
    assert created.data["subscriber"]["id"] == sub_id and "email" not in created.data["subscriber"]
    assert email not in json.dumps(created.body) and receiver.unverified == []


def test_a_send_and_a_schedule_run_are_told(app, runner, smtp, worker, hook_worker, receiver):
    listen(receiver, "issue.sending,issue.finished,issue.skipped,schedule.run", personal=False)
    add_readers(3)
    issue_id = new_issue()
    with db.transaction() as s:
        deliveries.start_send(s, issue_id, settings=app.extensions["mailer.settings"],
                              render=make_renderer())
    assert wait_finished(issue_id) == "finished"
    (sending,) = receiver.wait_for("issue.sending")
    # The last batch finished the issue on its own connection, with no commit hook: its
    # event waits for the tick's sweep (every MAILER_TICK_SECONDS), run here.
    with db.transaction() as s:
        assert hooks.sweep(s)["handed_out"] == 1
    (finished,) = receiver.wait_for("issue.finished")
    assert sending.data["issue"]["id"] == finished.data["issue"]["id"] == issue_id
    assert finished.data["issue"]["status"] == "finished"

    added = runner.invoke(["schedule", "add", "--name", "Weekly", "--cron", "mon 07:00"])
    schedule_id = int(added.stdout.splitlines()[-1])
    assert runner.invoke(["schedule", "run-now", str(schedule_id)]).exit_code == 0
    (run,) = receiver.wait_for("schedule.run")
    (skipped,) = receiver.wait_for("issue.skipped")
    assert run.data["schedule"]["id"] == schedule_id and run.data["run"]["status"] == "skipped"
    assert run.data["run"]["issue_id"] == skipped.data["issue"]["id"]
    assert skipped.data["reason"].startswith("Nothing new")
    assert receiver.unverified == []


@pytest.mark.alone  # the time is the point: other tests' load would stretch it
def test_a_burst_of_deliveries_is_not_paced_by_the_brokers_poll(app, hook_worker, receiver):
    """Sixty deliveries committed at once go out as fast as the worker's two processes send
    them. On the embedded broker, kombu's poll waited a whole second whenever both
    processes were busy, which paced a burst at about two a second (28 s for these); on
    Redis there is no poll. 15 s is about three times what the embedded pass needs."""
    listen(receiver, "schedule.run", personal=False)
    with db.transaction() as s:
        endpoint_ids = hooks.endpoints_for(s, "schedule.run")
        for n in range(60):
            hooks.emit(s, "schedule.run", {"schedule": {"id": n}}, endpoint_ids=endpoint_ids)
    committed = time.monotonic()
    got = receiver.wait_for("schedule.run", 60, timeout=60)
    took = time.monotonic() - committed
    assert sorted(g.data["schedule"]["id"] for g in got) == list(range(60))
    assert took < 15, f"60 deliveries took {took:.1f} s"


def test_an_endpoint_answering_500_twice_gets_the_same_id_a_third_time(
        app, hook_worker, receiver, make_email, client):
    endpoint_id = listen(receiver, "subscriber.created")
    receiver.answers = [500, 500]
    signup(client, make_email())
    (ok,) = receiver.wait_for("subscriber.created")
    tries = list(receiver.got)
    assert [t.answered for t in tries] == [500, 500, 200]
    assert {t.msg_id for t in tries} == {ok.msg_id}
    # The waits of the schedule (0.5 s, 0.5 s), give or take a worker's start.
    gaps = [b.at - a.at for a, b in zip(tries, tries[1:], strict=False)]
    assert all(g >= 0.45 for g in gaps), gaps
    # (The receiver has answered; the worker records the outcome right after.)
    wait_until(lambda: delivery_rows(endpoint_id)[0].status == HookStatus.DELIVERED, 10,
               what="the delivery recorded")
    (row,) = delivery_rows(endpoint_id)
    assert (row.status, row.attempts, row.response_status) == (HookStatus.DELIVERED, 3, 200)
    assert row.response_excerpt == "answered 200" and row.latency_ms is not None
    with db.transaction() as s:
        assert s.get(HookEndpoint, endpoint_id).failing_since is None


def test_an_endpoint_that_stays_down_is_retried_then_disabled_and_ops_are_told(
        app, smtp, hook_worker, make_email, client):
    dead = f"http://127.0.0.1:{free_port()}/hooks"  # nothing listens there
    endpoint_id, _ = add_endpoint(dead, "subscriber.created")
    signup(client, make_email())

    def disabled():
        with db.transaction() as s:
            return not s.get(HookEndpoint, endpoint_id).enabled

    wait_until(disabled, 30, what="the endpoint disabled")
    (notice,) = smtp.wait_for(OPS)
    assert "webhook endpoint disabled" in notice.message["Subject"] and dead in notice.text
    (row,) = delivery_rows(endpoint_id)
    # Attempts at about 0, 0.5, 1.0, 2.0, 3.0 s (later when the embedded broker polls): the
    # one that finds it failing for DISABLE_HOURS (2.9 s) or more disables it, with retries
    # of the schedule still left.
    assert 2 <= row.attempts < len(RETRIES) + 1 and row.status == HookStatus.PENDING
    assert row.last_attempt_at - row.created_at >= timedelta(hours=DISABLE_HOURS)
    attempts = row.attempts
    assert "ConnectError" in row.error
    with db.transaction() as s:
        endpoint = s.get(HookEndpoint, endpoint_id)
        assert endpoint.disabled_reason.startswith("Disabled on ")
    time.sleep(1.5)  # its next retry was due by now: a disabled endpoint gets no attempt
    assert delivery_rows(endpoint_id)[0].attempts == attempts
    # Enabled again (it answers now), what waited goes out at the next sweep.
    with Receiver() as r:
        with db.transaction() as s:
            endpoint = s.get(HookEndpoint, endpoint_id)
            endpoint.url, r.secret = r.url, endpoint.secret
            hook_endpoints.set_enabled(s, endpoint_id, True)
        with db.transaction() as s:
            hooks.sweep(s)
        r.wait_for("subscriber.created")
    wait_until(lambda: delivery_rows(endpoint_id)[0].status == HookStatus.DELIVERED, 10,
               what="the delivery recorded")


def test_a_worker_killed_mid_delivery_loses_nothing(app, hook_worker, receiver, make_email,
                                                     client):
    endpoint_id = listen(receiver, "subscriber.created")
    receiver.hang = 30  # the receiver has the request; the worker waits for its answer
    signup(client, make_email())
    wait_until(lambda: receiver.got, 30, what="the first attempt")
    hook_worker.kill()  # SIGKILL, mid-attempt
    hook_worker.stop()  # (only closes its log now)
    (row,) = delivery_rows(endpoint_id)
    assert row.status == HookStatus.SENDING
    receiver.hang = 0
    hook_worker.start()
    with db.transaction() as s:  # the tick's sweep, once the attempt's lease ran out
        assert hooks.sweep(s, now=utcnow() + hooks.LEASE + timedelta(seconds=1))["released"] == 1
    wait_until(lambda: delivery_rows(endpoint_id)[0].status == HookStatus.DELIVERED, 30,
               what="the delivery made again")
    first, again = receiver.got
    assert first.msg_id == again.msg_id and first.body == again.body
    assert delivery_rows(endpoint_id)[0].attempts == 2


# 5,000 on PostgreSQL; the embedded broker (SQLite, polled) hands tasks out about ten times
# slower, so the embedded pass tells 500.
SIGNUPS = {"postgres": 5000, "sqlite": 500}




@pytest.mark.slow
@pytest.mark.timeout(900)
def test_thousands_of_signups_give_one_created_event_each(base_env, db_kind, hook_worker,
                                                          receiver):
    count = int(os.environ.get("MAILER_TEST_HOOK_SIGNUPS", SIGNUPS[db_kind]))
    application = make_app(base_env, MAILER_SIGNUP_LIMIT_IP="1000000 per minute",
                           MAILER_SIGNUP_LIMIT_ADDRESS="1000000 per minute")
    from tests.helpers.app import clean_database

    clean_database(db.engine)
    listen(receiver, "subscriber.created", personal=True)
    client = application.test_client()
    started = time.monotonic()
    emails = [f"many{k}.{time.time_ns()}@example.com" for k in range(count)]
    for email in emails:
        assert client.post("/api/v1/subscribe", json={"email": email}).status_code == 202
    took_signups = time.monotonic() - started
    receiver.wait_for("subscriber.created", count, timeout=600)
    took_all = time.monotonic() - started
    got = receiver.of_type("subscriber.created")
    assert len(got) == count and len({g.msg_id for g in got}) == count
    assert sorted(g.data["subscriber"]["email"] for g in got) == sorted(emails)
    with db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Subscriber)) == count
        assert s.scalar(select(func.count()).select_from(HookEvent)) == count

    def delivered():
        with db.transaction() as s:
            return s.scalar(select(func.count()).select_from(HookDelivery)
                            .where(HookDelivery.status == HookStatus.DELIVERED)) == count

    wait_until(delivered, 30, what="every delivery recorded")
    print(f"{count} signups in {took_signups:.1f} s, all delivered after {took_all:.1f} s")
