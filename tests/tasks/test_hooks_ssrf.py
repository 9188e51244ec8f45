"""The address check at each attempt, not only when the endpoint was added: a name can be
re-pointed at an internal address after it passed (DNS rebinding), and an operator may
turn private addresses off."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from mailer.db import db
from mailer.errors import ValidationError
from mailer.models import Frequency, HookCount, HookDelivery, HookStatus
from mailer.services import after_commit, hook_endpoints
from mailer.services import subscriptions as subs
from mailer.tasks.hooks import deliver_webhook
from tests.helpers.app import make_app
from tests.helpers.hooks import Receiver


def test_an_attempt_to_an_address_no_longer_allowed_is_refused_without_a_connection(
        app, base_env, make_email):
    with Receiver() as receiver:
        with db.transaction() as s:  # added while private addresses were allowed
            endpoint = hook_endpoints.create(s, url=receiver.url, events="subscriber.created",
                                             allow_http=True, allow_private=True)
            receiver.secret = endpoint.secret
            subs.subscribe(s, email=make_email(), name=None, frequency=Frequency.WEEKLY,
                           sections="", consent=subs.ConsentInfo("form", "Yes."),
                           cooldown=timedelta(minutes=10))
            after_commit.take(s)  # the attempt is made below, not by a worker
        strict = make_app(base_env, MAILER_WEBHOOK_ALLOW_PRIVATE="off")
        with strict.app_context():
            with db.transaction() as s:
                (delivery_id,) = s.scalars(select(HookDelivery.id))
            assert deliver_webhook(delivery_id) == "pending"  # to be retried, not sent
            with db.transaction() as s:
                row = s.get(HookDelivery, delivery_id)
                assert (row.status, row.attempts, row.response_status) == (
                    HookStatus.PENDING, 1, None)
                assert "127.0.0.1 is a loopback address" in row.error
                assert s.get(HookCount, "refused").n == 1
        assert receiver.got == [] and receiver.unverified == []


def test_an_endpoint_is_refused_when_it_is_added(app):
    for url, why in [("https://127.0.0.1/x", "loopback"), ("https://10.0.0.7/x", "private"),
                     ("https://169.254.169.254/x", "link-local"), ("https://[::1]/x", "loopback"),
                     ("https://localhost/x", "loopback"), ("http://93.184.216.34/x", "https://")]:
        with pytest.raises(ValidationError) as e, db.transaction() as s:
            hook_endpoints.create(s, url=url, events="*", allow_http=False, allow_private=False)
        assert e.value.field == "url" and why in e.value.message
    with db.transaction() as s:
        assert s.scalars(select(HookDelivery)).all() == []
