"""The confirmation task: one claim that also reads what the mail says, a signup that is
not committed yet waited for, exactly one mail per request, the claim given back when the
SMTP server asks to try later, and a look edited between two mails shown in the second."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import event, select, text, update
from sqlalchemy.orm import Session

from mailer.clock import utcnow
from mailer.db import db
from mailer.mail.errors import TemporaryFailure
from mailer.models import Frequency, Newsletter, Subscriber
from mailer.runtime import runtime
from mailer.services import subscriptions as subs
from mailer.tasks import notices
from mailer.tasks.base import fresh_wire_message
from mailer.tasks.notices import send_confirmation, send_confirmations
from mailer.web.signup_gate import Handoff, SignupGate
from tests.helpers.app import make_app, statements
from tests.helpers.delivery import own_broker

CONSENT = subs.ConsentInfo(source="form", wording="Yes.")
EVER = (utcnow() - timedelta(days=3650), utcnow() + timedelta(days=3650))


@pytest.fixture
def quiet(app, env, tmp_path):
    """An app on a broker nobody consumes: the tasks run here, in the test."""
    application = make_app(own_broker(env, tmp_path))
    with application.app_context():
        yield application
        runtime().transport.close()


def _signup(session, email: str):
    """A signup in `session` (not committed): the reader's id and the request's time."""
    result = subs.subscribe(session, email=email, name=None, frequency=Frequency.WEEKLY,
                            sections="", consent=CONSENT, cooldown=timedelta(0))
    requested = session.scalar(
        select(Subscriber.confirm_requested_at).where(Subscriber.id == result.subscriber_id)
    )
    return result.subscriber_id, requested


def _signed_up(email: str):
    with db.transaction() as s:
        return _signup(s, email)


def _owed() -> list[int]:
    with db.transaction() as s:
        return subs.confirmations_owed(s, older_than=EVER[1], newer_than=EVER[0])


def test_a_committed_signup_is_mailed_after_one_statement(quiet, smtp, make_email):
    email = make_email()
    sub_id, requested = _signed_up(email)
    with statements(db.engine) as seen:
        assert send_confirmation(sub_id, requested.isoformat()) == "sent"
    # PostgreSQL: the claim and everything the mail says in one statement (SQLite, which has
    # no UPDATE inside a WITH: the claim, then the reading).
    assert len(seen) == (1 if db.engine.dialect.name == "postgresql" else 2), seen
    assert seen[0].lstrip().upper().startswith(("WITH", "UPDATE"))
    (mail,) = smtp.wait_for(email)
    assert mail.message["Subject"].startswith("Please confirm")
    assert sub_id not in _owed()


def test_the_claims_sql_is_fixed_no_list_is_expanded_at_each_claim(quiet):
    # An IN of a list is rewritten by SQLAlchemy at every execution: a tenth of a claim's
    # CPU, per confirmation.
    dialect = db.engine.dialect
    for statement in subs._take_statements(dialect.name):
        if statement is not None:
            core = getattr(statement, "statement", statement)  # PostgreSQL: on the driver
            assert "POSTCOMPILE" not in core.compile(dialect=dialect).string


@pytest.mark.redis
def test_a_claims_transaction_alone_commits_without_waiting_for_the_disk(quiet, make_email):
    # A claim lost in a crash of the database server is a mail owed again; a signup, or
    # anything else on the connection after the claim, still waits for its commit.
    first, second = (_signed_up(make_email()) for _ in range(2))
    with db.engine.connect() as connection, Session(bind=connection) as s:
        assert s.scalar(text("SHOW synchronous_commit")) == "on"
        assert subs.take_confirmation(s, *first) is not None
        assert s.scalar(text("SHOW synchronous_commit")) == "off"  # this transaction's
        s.commit()
        assert connection.scalar(text("SHOW synchronous_commit")) == "on"
        connection.rollback()
        at_once = connection.execution_options(isolation_level="AUTOCOMMIT")
        assert subs.take_confirmation_at_once(at_once, *second) is not None
        assert at_once.scalar(text("SHOW synchronous_commit")) == "on"
    assert not {first[0], second[0]} & set(_owed())


def test_a_task_quicker_than_the_signups_commit_waits_for_it(quiet, smtp, make_email,
                                                            monkeypatch):
    monkeypatch.setattr(notices, "COMMIT_WAIT", 0.05)
    email = make_email()
    web = db.session_factory()  # the signup's transaction, its COMMIT still to come
    sub_id, requested = _signup(web, email)
    outcome = []

    def task():
        with quiet.app_context():
            outcome.append(send_confirmation(sub_id, requested.isoformat()))

    worker = threading.Thread(target=task)
    worker.start()
    time.sleep(0.3)
    web.commit()
    web.close()
    worker.join(30)
    assert outcome == ["sent"]
    assert len(smtp.wait_for(email)) == 1


def test_a_request_never_committed_is_given_up_after_the_waits(quiet, monkeypatch):
    waited, later = [], []

    def look_later(task, *args, **options):  # the broker's countdown, run here at once
        later.append(options)
        return task(*args)

    monkeypatch.setattr(notices, "time", SimpleNamespace(sleep=waited.append))
    monkeypatch.setattr(notices, "enqueue", look_later)
    assert send_confirmation(10**9, utcnow().isoformat()) == "not committed yet"
    assert len(waited) == notices.COMMIT_WAITS  # in the first task only
    assert later == [{"countdown": notices.LATE_LOOK_AFTER}] * notices.LATE_LOOKS


def test_each_request_is_mailed_once(quiet, smtp, make_email):
    email = make_email()
    sub_id, requested = _signed_up(email)
    assert send_confirmation(sub_id, requested.isoformat()) == "sent"
    assert send_confirmation(sub_id, requested.isoformat()) == "already sent"
    assert send_confirmation(sub_id) == "already sent"  # the sweeper's copy
    # Asked again: the message pushed for the first request claims the newer one, once.
    _, again = _signed_up(email)
    assert again > requested
    assert send_confirmation(sub_id, requested.isoformat()) == "sent"
    assert send_confirmation(sub_id, again.isoformat()) == "already sent"
    time.sleep(0.5)
    assert len(smtp.wait_for(email, count=2)) == 2


def test_a_temporary_failure_gives_the_claim_back(quiet, smtp, make_email):
    email = make_email()
    sub_id, requested = _signed_up(email)
    smtp.once[email] = "451 try again later"
    with pytest.raises(TemporaryFailure):  # called here, not by a worker: no retry
        send_confirmation(sub_id, requested.isoformat())
    assert sub_id in _owed()  # the retry, or the sweeper, takes it again
    assert send_confirmation(sub_id, requested.isoformat()) == "sent"
    assert sub_id not in _owed()
    assert len(smtp.wait_for(email)) == 1


def test_an_active_reader_gets_the_short_answer_in_the_sites_look(quiet, smtp, make_email):
    email = make_email()
    sub_id, requested = _signed_up(email)
    assert send_confirmation(sub_id, requested.isoformat()) == "sent"
    with db.transaction() as s:
        sub = s.get(Subscriber, sub_id)
        subs.confirm(s, sub.uid, sub.confirm_requested_at, CONSENT)
        first = s.scalar(select(Newsletter).order_by(Newsletter.id).limit(1))
        first.masthead_title = "The Evening Edition"
    _, again = _signed_up(email)
    assert send_confirmation(sub_id, again.isoformat()) == "sent"
    first_mail, second = smtp.wait_for(email, count=2)
    assert "Evening Edition" not in first_mail.html
    assert second.message["Subject"].startswith("You are already subscribed")
    assert "The Evening Edition" in second.html  # the look as it is now, not as cached
    with db.transaction() as s:
        s.execute(update(Newsletter).where(Newsletter.id == first.id)
                  .values(masthead_title=None))


# --- with Redis: confirmations drained from a list, one task for many ----------------------


def _queued(emails: list[str]) -> list[int]:
    """Signups whose confirmations are on the list, as the signup's script leaves them."""
    client = notices._redis(runtime().settings)
    ids = []
    for email in emails:
        sub_id, requested = _signed_up(email)
        client.lpush(notices.CONFIRMATIONS, notices.confirmation_entry(sub_id, requested))
        ids.append(sub_id)
    client.set(notices.DRAINING, 1, ex=notices.DRAINING_TTL)
    return ids


@pytest.mark.redis
def test_one_drain_mails_every_confirmation_on_the_list_once(quiet, smtp, make_email):
    emails = [make_email() for _ in range(notices.DRAIN_TAKE + 5)]
    ids = _queued(emails)
    client = notices._redis(runtime().settings)
    client.lpush(notices.CONFIRMATIONS, notices.confirmation_entry(ids[0], utcnow()
                                                                   - timedelta(hours=1)))
    with statements(db.engine) as seen:
        assert send_confirmations() == {"sent": len(emails), "already sent": 1}
    assert len(seen) == len(emails) + 2  # one statement per mail; the repeat looks again
    assert not client.exists(notices.DRAINING) and not client.llen(notices.CONFIRMATIONS)
    for email in emails:
        smtp.wait_for(email)
    time.sleep(0.3)
    assert all(len(smtp.to(email)) == 1 for email in emails)


@pytest.mark.redis
def test_a_drains_claim_is_its_own_transaction_and_committed_before_its_mail(
    quiet, smtp, make_email, monkeypatch
):
    emails = [make_email() for _ in range(5)]
    ids = _queued(emails)
    commits = []

    def committed(connection):
        commits.append(connection)

    event.listen(db.engine, "commit", committed)
    transport = runtime().transport
    send = transport.send
    seen_claimed = []

    def send_and_look(envelope_from, recipient, data):
        # Another connection sees the claim before the mail goes out: a worker killed now
        # leaves this one confirmation claimed and unsent, no more.
        with db.engine.connect() as other:
            seen_claimed.append(other.scalar(
                select(Subscriber.confirm_sent_at.is_not(None))
                .where(Subscriber.email == recipient)))
        return send(envelope_from, recipient, data)

    monkeypatch.setattr(transport, "send", send_and_look)
    # The claim runs on the driver (db.DriverStatement), not through Core's execute.
    from sqlalchemy.engine import Connection

    core = Connection._execute_clauseelement
    through_core = []
    monkeypatch.setattr(Connection, "_execute_clauseelement", lambda self, element, *a, **k: (
        through_core.append(str(element)), core(self, element, *a, **k))[1])
    try:
        with statements(db.engine) as seen:
            assert send_confirmations() == {"sent": len(emails)}
    finally:
        event.remove(db.engine, "commit", committed)
    assert seen_claimed == [True] * len(emails)
    # One statement per mail (besides the test's looks), in autocommit: no BEGIN and no
    # COMMIT round trips.
    claims = [sql for sql in seen if "confirm_sent_at IS NOT NULL AS" not in sql]
    assert len(claims) == len(emails) and not commits, (claims, commits)
    assert not [sql for sql in through_core if "claimed" in sql]
    assert not set(ids) & set(_owed())
    assert all(len(smtp.wait_for(e)) == 1 for e in emails)


@pytest.mark.redis
def test_a_drain_takes_one_connection_from_the_pool_for_all_its_takes(quiet, smtp, make_email):
    # The production pass only (marked redis): PostgreSQL, whose drain holds one connection.
    emails = [make_email() for _ in range(2 * notices.DRAIN_TAKE + 1)]  # three takes
    _queued(emails)
    checkouts = []

    def checked_out(*_args):
        checkouts.append(1)

    event.listen(db.engine, "checkout", checked_out)
    try:
        assert send_confirmations() == {"sent": len(emails)}
    finally:
        event.remove(db.engine, "checkout", checked_out)
    assert len(checkouts) == 1
    assert all(len(smtp.wait_for(e)) == 1 for e in emails)


@pytest.mark.redis
def test_a_drain_waits_a_moment_on_an_empty_list_for_the_next_signup(
    quiet, smtp, make_email, monkeypatch
):
    """Signups hand their confirmations over one by one: the drain that finds the list empty
    waits DRAIN_LINGER for the next one and mails it too, instead of ending and leaving the
    next signup to start a task of its own."""

    first, next_one = make_email(), make_email()
    _queued([first])
    client = notices._redis(runtime().settings)
    take = notices._take_entries
    takes = []

    def signup_while_waiting(held):
        takes.append(time.monotonic())
        if len(takes) == 3:  # the second take: the list is empty now: the next signup hands off meanwhile
            entry = notices.confirmation_entry(*_signed_up(next_one))
            threading.Timer(notices.DRAIN_LINGER / 4, client.lpush,
                            (notices.CONFIRMATIONS, entry)).start()
        taken = take(held)
        takes.append(taken)
        return taken

    monkeypatch.setattr(notices, "_take_entries", signup_while_waiting)
    started = time.monotonic()
    assert send_confirmations() == {"sent": 2}
    # Three takes: the first signup's, the next one's after a wait, then nothing came for
    # DRAIN_LINGER and the drain ended.
    assert len(takes) == 6 and takes[3] and takes[5] is None, takes
    assert time.monotonic() - started < 5
    assert not client.exists(notices.DRAINING)
    assert len(smtp.wait_for(first)) == 1 and len(smtp.wait_for(next_one)) == 1


@pytest.mark.redis
def test_a_signup_between_the_last_pop_and_the_end_of_the_drain_is_mailed(
    quiet, smtp, make_email, monkeypatch
):
    first, late = make_email(), make_email()
    _queued([first])
    client = notices._redis(runtime().settings)
    delete = type(client).delete

    def signup_meanwhile(self, *keys):
        # The late signup's script runs just before the drain lets go: it sees DRAINING
        # and queues no task of its own.
        if late not in (m.recipient for m in smtp.messages) and not _late:
            _late.extend(_queued([late]))
        return delete(self, *keys)

    _late: list[int] = []
    monkeypatch.setattr(type(client), "delete", signup_meanwhile)
    assert send_confirmations() == {"sent": 2}
    assert len(smtp.wait_for(late)) == 1 and len(smtp.wait_for(first)) == 1


@pytest.mark.redis
def test_confirmations_a_dead_drain_held_are_sent_by_the_sweeper(quiet, smtp, make_email,
                                                                monkeypatch):
    emails = [make_email() for _ in range(3)]
    ids = _queued(emails)
    client = notices._redis(runtime().settings)
    client.rpop(notices.CONFIRMATIONS, 3)  # a worker took them and died
    monkeypatch.setattr(notices, "CONFIRMATION_GRACE", 0)
    monkeypatch.setattr(notices, "enqueue", lambda task, *args: task(*args))
    time.sleep(0.01)
    assert sorted(ids) == sorted(_owed())
    assert notices.sweep_confirmations() == 3
    assert _owed() == []
    for email in emails:
        assert len(smtp.wait_for(email)) == 1


@pytest.mark.redis
def test_a_deferred_confirmation_in_a_drain_goes_to_a_task_of_its_own(quiet, smtp, make_email,
                                                                     monkeypatch):
    deferred, other = make_email(), make_email()
    ids = _queued([deferred, other])
    smtp.once[deferred] = "451 try again later"
    retried = []
    monkeypatch.setattr(notices, "enqueue", lambda task, *args, **options: retried.append(
        (task.name, args, options)))
    assert send_confirmations() == {"deferred": 1, "sent": 1}
    assert retried == [("mailer.send_confirmation", (ids[0],), {"countdown": 5})]
    assert ids[0] in _owed()  # the claim was given back
    assert send_confirmation(ids[0]) == "sent"
    assert len(smtp.wait_for(deferred)) == 1 and len(smtp.wait_for(other)) == 1


@pytest.mark.redis
def test_a_drain_that_fails_lets_the_next_signup_start_another(quiet, make_email, monkeypatch):
    ids = _queued([make_email()])

    def broken(*_args):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(notices, "_mail", broken)
    with pytest.raises(RuntimeError):
        send_confirmations()
    assert not notices._redis(runtime().settings).exists(notices.DRAINING)
    assert ids == _owed()  # still owed: the sweeper's


@pytest.mark.redis
def test_a_request_not_committed_yet_holds_up_no_other_mail(quiet, smtp, make_email,
                                                           monkeypatch):
    committed, pending = make_email(), make_email()
    _queued([committed])
    web = db.session_factory()  # its COMMIT still to come
    sub_id, requested = _signup(web, pending)
    client = notices._redis(runtime().settings)
    client.rpush(notices.CONFIRMATIONS, notices.confirmation_entry(sub_id, requested))  # first
    handed = []
    monkeypatch.setattr(notices, "enqueue", lambda task, *args, **options: handed.append(
        (task.name, args)))
    try:
        assert send_confirmations() == {"sent": 1, "handed over": 1}
    finally:
        web.commit()
        web.close()
    assert handed == [("mailer.send_confirmation", (sub_id, requested.isoformat()))]
    assert len(smtp.wait_for(committed)) == 1
    assert send_confirmation(*handed[0][1]) == "sent"  # the task of its own, once committed
    assert len(smtp.wait_for(pending)) == 1


@pytest.mark.redis
def test_a_signup_committed_between_the_claim_and_the_look_after_it_is_mailed(
    quiet, smtp, make_email
):
    """The drain's claim runs just before the signup's COMMIT and claims nothing; the COMMIT
    lands before the look that tells why: the look sees the mail owed, not already sent."""
    email = make_email()
    web = db.session_factory()  # its COMMIT comes right after the drain's claim
    sub_id, requested = _signup(web, email)
    client = notices._redis(runtime().settings)
    client.lpush(notices.CONFIRMATIONS, notices.confirmation_entry(sub_id, requested))
    client.set(notices.DRAINING, 1, ex=notices.DRAINING_TTL)
    claims = []

    def commit_after_the_first_claim(conn, cursor, statement, *args):
        if "confirm_sent_at=subscribers.confirm_requested_at" in statement:  # the claim
            claims.append(cursor.rowcount)
            if web.is_active:
                web.commit()
                web.close()

    event.listen(db.engine, "after_cursor_execute", commit_after_the_first_claim)
    try:
        outcome = send_confirmations()
    finally:
        event.remove(db.engine, "after_cursor_execute", commit_after_the_first_claim)
        web.close()
    assert claims[0] == 0  # the first claim did not see the signup
    assert outcome == {"sent": 1}
    assert len(smtp.wait_for(email)) == 1


@pytest.mark.redis
def test_a_signup_committed_seconds_after_its_hand_off_is_mailed_at_once(
    app, worker, smtp, make_email
):
    """A confirmation was handed off, then its signup's COMMIT came seconds later than the
    task's waits (the web hands off after the COMMIT; the worker does not count on it): the
    mail still goes out within seconds of the COMMIT, not a minute later from the sweeper
    (which the session's worker does not even run)."""
    with app.app_context():
        email = make_email()
        settings = runtime().settings
        web = db.session_factory()
        sub_id, requested = _signup(web, email)
        queue, message = fresh_wire_message(send_confirmations)
        gate = SignupGate(settings.redis_url, {"ip": "10 per minute", "address": "10 per minute"})
        try:
            assert gate.hand_off(Handoff(
                queue, message, notices.CONFIRMATIONS,
                notices.confirmation_entry(sub_id, requested), notices.DRAINING,
                notices.DRAINING_TTL))
            time.sleep(notices.COMMIT_WAITS * notices.COMMIT_WAIT + 3)  # the waits are over
            assert smtp.to(email) == []
        finally:
            web.commit()
            web.close()
        committed = time.monotonic()
        assert len(smtp.wait_for(email, timeout=20)) == 1
        assert time.monotonic() - committed < 3 * notices.LATE_LOOK_AFTER
