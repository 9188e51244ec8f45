"""The confirmation task: one claim that also reads what the mail says, a signup that is
not committed yet waited for, exactly one mail per request, the claim given back when the
SMTP server asks to try later, and a look edited between two mails shown in the second."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import select, update

from mailer.clock import utcnow
from mailer.db import db
from mailer.mail.errors import TemporaryFailure
from mailer.models import Frequency, Newsletter, Subscriber
from mailer.runtime import runtime
from mailer.services import subscriptions as subs
from mailer.tasks import notices
from mailer.tasks.notices import send_confirmation
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
    worker.join(10)
    assert outcome == ["sent"]
    assert len(smtp.wait_for(email)) == 1


def test_a_request_never_committed_is_given_up_after_the_waits(quiet, monkeypatch):
    waited = []
    monkeypatch.setattr(notices, "time", SimpleNamespace(sleep=waited.append))
    assert send_confirmation(10**9, utcnow().isoformat()) == "not pending"
    assert len(waited) == notices.COMMIT_WAITS


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
