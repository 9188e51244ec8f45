"""A provider that refuses some readers: 451 now (delivered later, once), 550 (bounced)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from mailer.clock import utcnow
from mailer.db import db
from mailer.models import Delivery, Subscriber, SubscriberStatus
from mailer.services import deliveries
from tests.mail.delivery_support import (
    add_readers,
    counts,
    delivery_states,
    issue_status,
    make_renderer,
    new_issue,
    per_recipient,
)
from tests.support import wait_until


def sweep_later(app, seconds: float) -> deliveries.SweepResult:
    """The tick's sweeper, as it will run `seconds` from now (its commit hands out batches)."""
    with db.transaction() as s:
        return deliveries.sweep(
            s, app.extensions["mailer.settings"], now=utcnow() + timedelta(seconds=seconds)
        )


def test_temporary_refusals_are_delivered_later_once_permanent_ones_bounce(app, smtp, worker):
    emails = add_readers(200)
    later = emails[10:20]
    bad = emails[100:105]
    for e in later:
        smtp.once[e] = "451 4.7.1 greylisted, try again later"
    for e in bad:
        smtp.rules[e] = "550 5.1.1 user unknown"
    with app.app_context():
        issue_id = new_issue()
        with db.transaction() as s:  # the commit hands the batches to the worker
            deliveries.start_send(
                s, issue_id, settings=app.extensions["mailer.settings"],
                render=make_renderer(size=4000),
            )
        wait_until(lambda: counts(issue_id)["sent"] == 185, 60, what="the first pass")
        wait_until(lambda: counts(issue_id)["failed_temporary"] == 10, 10, what="the retries")
        assert issue_status(issue_id) == "sending"  # ten readers are still owed their copy
        base = app.extensions["mailer.settings"].retry_base_seconds

        assert sweep_later(app, base - 5).retried == 0
        assert sweep_later(app, base + 1).retried == 10
        wait_until(lambda: issue_status(issue_id) == "finished", 30, what="the retries to go out")
        # Later sweeps find nothing to retry: the refused addresses are never tried again.
        assert sweep_later(app, base * 100).retried == 0

    got = per_recipient(smtp, emails)
    assert {e: got[e] for e in later} == dict.fromkeys(later, 1)
    assert {e: got[e] for e in bad} == dict.fromkeys(bad, 0)
    assert {got[e] for e in emails if e not in bad} == {1}
    states = delivery_states(issue_id)
    assert {states[e] for e in bad} == {"failed_permanent"}
    with app.app_context(), db.transaction() as s:
        bounced = set(
            s.scalars(select(Subscriber.email).where(Subscriber.status == SubscriberStatus.BOUNCED))
        )
        tries = dict(
            s.execute(
                select(Subscriber.email, Delivery.attempts).join(
                    Delivery, Delivery.subscriber_id == Subscriber.id
                )
            ).all()
        )
    assert bounced == set(bad)
    assert {tries[e] for e in later} == {2} and {tries[e] for e in bad} == {1}
