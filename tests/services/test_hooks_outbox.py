"""The webhooks' outbox: each change writes its event and deliveries in its own transaction,
a rollback writes and hands out nothing, and only the endpoints that asked get an event."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from mailer.clock import utcnow
from mailer.db import db
from mailer.models import (
    ConsentRecord,
    Frequency,
    HookDelivery,
    HookEndpoint,
    HookEvent,
    Issue,
    SubscriberEvent,
)
from mailer.services import after_commit, hook_endpoints, hooks, issue_states, newsletters
from mailer.services import subscriptions as subs
from mailer.tasks.base import hand_over
from tests.helpers.app import statements

CONSENT = subs.ConsentInfo(source="form", wording="Send me the newsletter.")


@pytest.fixture
def handed(app):
    """The delivery tasks the commits hand over, recorded instead of sent to the broker."""
    got: list[after_commit.Intent] = []

    def record(intent: after_commit.Intent) -> bool:
        got.append(intent)
        return True

    after_commit.install(record)
    with app.app_context():
        yield got
    after_commit.install(hand_over)


def endpoint(events="*", personal=False) -> int:
    with db.transaction() as s:
        return hook_endpoints.create(s, url="http://127.0.0.1:9/hooks", events=events,
                                     personal_data=personal, allow_http=True,
                                     allow_private=True).id


def signup(s, email: str) -> int:
    return subs.subscribe(s, email=email, name="Ada", frequency=Frequency.WEEKLY, sections="",
                          consent=CONSENT, cooldown=timedelta(minutes=10)).subscriber_id


def events() -> list[HookEvent]:
    with db.transaction() as s:
        found = list(s.scalars(select(HookEvent).order_by(HookEvent.id)))
        s.expunge_all()
        return found


def deliveries() -> int:
    with db.transaction() as s:
        return s.scalar(select(func.count()).select_from(HookDelivery))


def test_a_signup_writes_its_event_and_a_delivery_per_endpoint_handed_out_after_commit(
        handed, make_email):
    personal, plain = endpoint(personal=True), endpoint("subscriber.created")
    endpoint("subscriber.confirmed")  # wants another type: gets nothing
    email = make_email()
    with db.transaction() as s:
        sub_id = signup(s, email)
        assert handed == []  # not before the commit
    (event,) = events()
    assert event.type == "subscriber.created" and event.subscriber_id == sub_id
    assert event.uid.startswith("msg_")
    data = json.loads(event.payload)["subscriber"]
    assert data["id"] == sub_id and data["email"] == email and data["status"] == "pending"
    assert deliveries() == 2
    assert [i.task for i in handed] == [hooks.TASK, hooks.TASK]
    with db.transaction() as s:
        by_endpoint = {d.endpoint_id: d for d in s.scalars(select(HookDelivery))}
        assert {i.args[0] for i in handed} == {d.id for d in by_endpoint.values()}
        ev = s.get(HookEvent, event.id)
        full = json.loads(hooks.body_of(ev, personal=True))
        bare = json.loads(hooks.body_of(ev, personal=False))
    assert set(by_endpoint) == {personal, plain}
    assert full["type"] == "subscriber.created" and full["data"]["subscriber"]["name"] == "Ada"
    assert "email" not in bare["data"]["subscriber"] and "name" not in bare["data"]["subscriber"]
    assert bare["data"]["subscriber"]["id"] == sub_id


def test_a_signup_that_rolls_back_records_and_sends_nothing(handed, make_email):
    endpoint()
    with pytest.raises(RuntimeError), db.transaction() as s:
        signup(s, make_email())
        raise RuntimeError("the request failed after the insert")
    assert events() == [] and deliveries() == 0 and handed == []


def test_without_an_endpoint_nothing_is_written(handed, make_email):
    with db.transaction() as s:
        signup(s, make_email())
    assert events() == [] and handed == []


def _rows_of(email: str) -> tuple[int, int, int]:
    """A reader's rows: (readers, consent records, history lines)."""
    with db.transaction() as s:
        sub_id = s.scalar(select(subs.Subscriber.id).where(subs.Subscriber.email == email))
        return (1 if sub_id else 0,
                s.scalar(select(func.count()).select_from(ConsentRecord)
                         .where(ConsentRecord.subscriber_id == sub_id)),
                s.scalar(select(func.count()).select_from(SubscriberEvent)
                         .where(SubscriberEvent.subscriber_id == sub_id)))


def test_an_endpoint_added_while_signups_had_none_gets_the_next_signups_event(
        handed, make_email):
    """A process whose signups found no endpoint leaves the webhook steps out of the next
    one's statement (on PostgreSQL); an endpoint added meanwhile, by another process, still
    gets that next signup's event, and the signup's rows are written once."""
    with db.transaction() as s:  # whatever an earlier test of this process left: none now
        signup(s, make_email())
    with db.transaction() as s, statements(db.engine) as seen:
        signup(s, make_email())
    assert events() == [] and handed == []
    if db.engine.dialect.name == "postgresql":
        assert len(seen) == 1 and "hook_deliveries" not in seen[0]  # no webhook steps
    added = endpoint("subscriber.created")  # committed by another process's console
    email = make_email()
    with db.transaction() as s:
        sub_id = signup(s, email)
    (event,) = events()
    assert event.subscriber_id == sub_id and json.loads(event.payload)["subscriber"]["id"] == sub_id
    with db.transaction() as s:
        assert [d.endpoint_id for d in s.scalars(select(HookDelivery))] == [added]
    assert [i.task for i in handed] == [hooks.TASK]
    assert _rows_of(email) == (1, 1, 1)
    # The next one again, and a returning reader's asking again, with the endpoint there.
    with db.transaction() as s:
        signup(s, make_email())
    assert len(events()) == 2
    # Once the last endpoint is gone, the webhook steps are left out again.
    with db.transaction() as s:
        hook_endpoints.remove(s, added)
    with db.transaction() as s:
        signup(s, make_email())
    with db.transaction() as s, statements(db.engine) as seen:
        signup(s, make_email())
    if db.engine.dialect.name == "postgresql":
        assert len(seen) == 1 and "hook_deliveries" not in seen[0]
    assert len(events()) == 2


def test_a_returning_reader_asks_again_once_when_an_endpoint_was_added(handed, make_email):
    email = make_email()
    with db.transaction() as s:
        sub_id = signup(s, email)
    with db.transaction() as s:  # past the cooldown: the next signup asks again
        s.get(subs.Subscriber, sub_id).confirm_requested_at -= timedelta(hours=1)
    endpoint("subscriber.created")
    with db.transaction() as s:
        assert subs.subscribe(s, email=email, name="Ada", frequency=Frequency.WEEKLY,
                              sections="", consent=CONSENT, cooldown=timedelta(minutes=10)
                              ).send_confirmation
    assert _rows_of(email) == (1, 2, 2)  # one more consent record and history line, no more
    assert events() == []  # not a new reader: no subscriber.created


def test_a_repeated_signup_is_no_new_event(handed, make_email):
    endpoint()
    email = make_email()
    for _ in range(2):
        with db.transaction() as s:
            signup(s, email)
    assert [e.type for e in events()] == ["subscriber.created"]


def test_each_change_of_a_reader_is_an_event_and_erasure_takes_the_address_out(
        handed, make_email):
    endpoint()
    email = make_email()
    with db.transaction() as s:
        sub_id = signup(s, email)
        uid = s.get(subs.Subscriber, sub_id).uid
    with db.transaction() as s:
        subs.confirm(s, uid, s.get(subs.Subscriber, sub_id).confirm_requested_at)
    with db.transaction() as s:
        sub = s.get(subs.Subscriber, sub_id)
        first = newsletters.first(s).id
        subs.apply_preferences(s, sub, name="Ada L.", consent=CONSENT,
                               choices=[subs.Choice(first, True, Frequency.DAILY, "")])
    with db.transaction() as s:
        subs.unsubscribe(s, uid, "one-click")
    with db.transaction() as s:
        subs.erase(s, s.get(subs.Subscriber, sub_id), hasher=lambda e: "h:" + e)
    got = events()
    assert [e.type for e in got] == [
        "subscriber.created", "subscriber.confirmed", "subscriber.updated",
        "subscriber.unsubscribed", "subscriber.erased",
    ]
    payloads = [json.loads(e.payload) for e in got]
    assert payloads[1]["subscriber"]["status"] == "active"
    assert payloads[2]["changed"] == ["name", "frequency"]
    assert payloads[3]["subscriber"]["status"] == "unsubscribed" and payloads[3]["how"] == "one-click"
    assert payloads[4] == {"subscriber": {"id": sub_id}}
    # Nothing in the outbox names the erased reader any more.
    assert all(email not in e.payload and "Ada" not in e.payload for e in got)
    assert all(e.subscriber_id == sub_id for e in got)


def test_an_issue_tells_when_it_starts_pauses_finishes_or_is_skipped(handed):
    endpoint("issue.sending,issue.paused,issue.finished,issue.skipped")
    with db.transaction() as s:
        issue = Issue(subject="Monday", status="draft")
        other = Issue(subject="Empty", status="draft")
        rolled = Issue(subject="Rolled back", status="draft")
        s.add_all([issue, other, rolled])
        s.flush()
        issue_id, other_id, rolled_id = issue.id, other.id, rolled.id
    with db.transaction() as s:
        issue_states.transition(s, issue_id, issue_states.START)
        issue_states.transition(s, issue_id, issue_states.PAUSE, status_reason="SMTP down")
        issue_states.transition(s, issue_id, issue_states.RESUME)
        issue_states.transition(s, issue_id, issue_states.FINISH)
    with db.transaction() as s:
        issue_states.transition(s, other_id, issue_states.SKIP,
                                status_reason="Only 0 new articles.")
    with pytest.raises(RuntimeError), db.transaction() as s:
        issue_states.transition(s, rolled_id, issue_states.START)
        raise RuntimeError("the send could not be set up")
    got = [(e.type, json.loads(e.payload)) for e in events()]
    assert [t for t, _ in got] == [
        "issue.sending", "issue.paused", "issue.sending", "issue.finished", "issue.skipped",
    ]
    first = newsletters.first(db.session).slug
    assert got[0][1]["issue"] == {"id": issue_id, "subject": "Monday", "status": "sending",
                                  "schedule_id": None, "newsletter": first}
    assert got[1][1]["reason"] == "SMTP down" and got[2][1]["change"] == "resume"
    assert got[4][1]["reason"] == "Only 0 new articles."


def test_a_disabled_endpoint_gets_no_new_deliveries(handed, make_email):
    endpoint_id = endpoint()
    with db.transaction() as s:
        hook_endpoints.set_enabled(s, endpoint_id, False)
    with db.transaction() as s:
        signup(s, make_email())
        assert s.get(HookEndpoint, endpoint_id).disabled_reason == "Disabled by an operator."
    assert events() == [] and deliveries() == 0


def test_a_hard_bounce_and_a_complaint_are_events_of_the_reader(handed, app):
    from sqlalchemy import insert

    from mailer.bounces import Kind, Report, Source
    from mailer.models import Delivery, DeliveryStatus, Subscriber
    from mailer.services import bounces
    from tests.helpers.delivery import add_readers, new_issue

    endpoint("subscriber.bounced,subscriber.complained", personal=True)
    a, b = add_readers(2)
    issue_id = new_issue()
    with db.transaction() as s:
        sent = {
            email: s.execute(
                insert(Delivery).values(
                    issue_id=issue_id, subscriber_id=s.scalar(
                        select(Subscriber.id).where(Subscriber.email == email)),
                    status=DeliveryStatus.SENT, attempts=1, sent_at=utcnow(),
                ).returning(Delivery.id)
            ).scalar()
            for email in (a, b)
        }
    settings = app.extensions["mailer"].settings
    with db.transaction() as s:
        for key in ("dsn-1", "dsn-2"):  # the second finds the reader bounced already
            bounces.record(s, settings, Report(source=Source.PIPE, kind=Kind.HARD, key=key,
                                               delivery_id=sent[a], status="5.1.1"))
    with pytest.raises(RuntimeError), db.transaction() as s:
        bounces.record(s, settings, Report(source=Source.PIPE, kind=Kind.COMPLAINT,
                                           key="arf-0", delivery_id=sent[b]))
        raise RuntimeError("rolled back: no event")
    with db.transaction() as s:
        bounces.record(s, settings, Report(source=Source.PIPE, kind=Kind.COMPLAINT, key="arf-1",
                                           delivery_id=sent[b]))
    got = [(e.type, json.loads(e.payload)) for e in events()]
    assert [t for t, _ in got] == ["subscriber.bounced", "subscriber.complained"]
    assert got[0][1]["subscriber"]["email"] == a
    assert got[0][1]["bounce"] == {"kind": "hard", "source": "pipe", "status": "5.1.1"}
    assert got[1][1]["subscriber"]["status"] == "complained"


def test_metrics_count_attempts_and_the_oldest_waiting_event(handed, client, make_email):
    from datetime import timedelta as td

    from mailer.services.hooks import count

    endpoint("subscriber.created")
    with db.transaction() as s:
        signup(s, make_email())
        count(s, "delivered")
        count(s, "failed")
        count(s, "failed")
    with db.transaction() as s:
        assert hooks.oldest_undelivered_age(s, now=utcnow() + td(seconds=90)) >= 89
    body = client.get("/metrics").get_data(as_text=True)
    assert 'mailer_webhook_deliveries_total{result="delivered"} 1' in body
    assert 'mailer_webhook_deliveries_total{result="failed"} 2' in body
    assert 'mailer_webhook_deliveries_total{result="refused"} 0' in body
    assert "mailer_webhook_oldest_undelivered_seconds " in body
