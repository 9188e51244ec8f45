"""Provider webhooks in the leaf: each provider's authentication and its events as Reports.

Payloads have the shapes of each provider's documentation; keys are generated here.
"""

from __future__ import annotations

import json
import time

import pytest

from mailer.bounces import Kind, Source
from mailer.bounces import providers as p
from tests.helpers.providers import (
    SendGridKeys,
    basic_auth,
    mailgun_event,
    mailgun_signature,
    postmark_bounce,
    postmark_complaint,
    sendgrid_event,
)

NOW = time.time()


def test_postmark_basic_auth_is_checked_in_constant_time_terms():
    p.check_basic_auth(basic_auth("mailer:s3cret-pass"), "mailer:s3cret-pass")
    for header in (None, "", "Basic", "Basic !!!", basic_auth("mailer:wrong"),
                   basic_auth("mailer:s3cret-pas"), "Bearer mailer:s3cret-pass"):
        with pytest.raises(p.Refused) as e:
            p.check_basic_auth(header, "mailer:s3cret-pass")
        assert e.value.status == 401


def test_postmark_events_become_reports():
    hard = postmark_bounce("ada@example.com", event_id=4323372036854775807)
    (report,) = p.postmark_reports(hard)
    assert (report.source, report.kind, report.key) == (
        Source.POSTMARK, Kind.HARD, "4323372036854775807")
    assert report.addresses == ("ada@example.com",) and "5.1.1" in report.diagnostic
    assert report.at.year == 2027
    assert p.postmark_reports(postmark_bounce("b@example.com", "SoftBounce"))[0].kind == Kind.SOFT
    assert p.postmark_reports(postmark_complaint("c@example.com"))[0].kind == Kind.COMPLAINT
    auto = p.postmark_reports(postmark_bounce("d@example.com", "AutoResponder"))[0]
    assert auto.kind == Kind.IGNORED and auto.reason == "Postmark AutoResponder"
    # The shape of Postmark's own examples, without RecordType, is understood too.
    legacy = {k: v for k, v in hard.items() if k != "RecordType"}
    assert p.postmark_reports(legacy)[0].kind == Kind.HARD
    for bad in ({}, {"RecordType": "Delivery", "ID": 1}, [], ["x"], {"RecordType": "Bounce"}):
        with pytest.raises(p.Malformed):
            p.postmark_reports(bad)


def test_sendgrid_signature_verifies_and_forgeries_do_not():
    keys = SendGridKeys()
    key = p.load_sendgrid_key(keys.public)
    body = json.dumps([sendgrid_event("bounce", "ada@example.com")]).encode()
    headers = keys.headers(body, NOW)
    sig, ts = headers[p.SIGNATURE_HEADER], headers[p.TIMESTAMP_HEADER]
    p.verify_sendgrid(key, sig, ts, body, NOW)
    other = SendGridKeys().headers(body, NOW)
    cases = {
        "tampered body": (sig, ts, body.replace(b"ada", b"eve")),
        "other timestamp": (sig, str(int(NOW) + 1), body),
        "other key": (other[p.SIGNATURE_HEADER], other[p.TIMESTAMP_HEADER], body),
        "no signature": (None, ts, body),
        "no timestamp": (sig, None, body),
        "not base64": ("%%%", ts, body),
    }
    for name, (s, t, b) in cases.items():
        with pytest.raises(p.Refused):
            p.verify_sendgrid(key, s, t, b, NOW)
        assert name
    stale = keys.headers(body, NOW - 301)
    with pytest.raises(p.Refused, match="5 minutes"):
        p.verify_sendgrid(key, stale[p.SIGNATURE_HEADER], stale[p.TIMESTAMP_HEADER], body, NOW)
    future = keys.headers(body, NOW + 301)
    with pytest.raises(p.Refused, match="5 minutes"):
        p.verify_sendgrid(key, future[p.SIGNATURE_HEADER], future[p.TIMESTAMP_HEADER], body, NOW)


def test_sendgrid_keys_that_are_not_p256_are_refused_at_start():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    p384 = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    import base64

    for text in ("not base64!", base64.b64encode(b"junk").decode(),
                 base64.b64encode(p384).decode()):
        with pytest.raises(ValueError):
            p.load_sendgrid_key(text)


def test_sendgrid_events_become_reports():
    events = [
        sendgrid_event("bounce", "a@example.com", smtp_id="<12.abcdef0123@daily.example>"),
        sendgrid_event("bounce", "b@example.com", type="blocked", status="4.0.0"),
        sendgrid_event("dropped", "c@example.com"),
        sendgrid_event("dropped", "d@example.com", reason="Spam Reporting Address"),
        sendgrid_event("dropped", "e@example.com", reason="Unsubscribed Address"),
        sendgrid_event("spamreport", "f@example.com"),
        sendgrid_event("delivered", "g@example.com", response="250 OK"),
    ]
    reports = p.sendgrid_reports(events)
    assert [r.kind for r in reports] == [Kind.HARD, Kind.SOFT, Kind.HARD, Kind.COMPLAINT,
                                         Kind.IGNORED, Kind.COMPLAINT, Kind.IGNORED]
    assert reports[0].key == events[0]['sg_event_id']
    assert reports[0].message_id == "<12.abcdef0123@daily.example>"
    assert reports[0].status == "5.0.0" and reports[0].addresses == ("a@example.com",)
    # An event without an id (SendGrid's "Invalid" drops) gets a stable key of its own.
    no_id = {k: v for k, v in events[2].items() if k != "sg_event_id"}
    assert p.sendgrid_reports([no_id])[0].key == p.sendgrid_reports([dict(no_id)])[0].key
    for bad in ([], {}, [{"email": "x@example.com"}], ["x"], [{"event": 5}]):
        with pytest.raises(p.Malformed):
            p.sendgrid_reports(bad)


def test_mailgun_signature_freshness_and_events():
    key = "key-" + "3" * 32
    good = mailgun_signature(key, NOW)
    assert p.verify_mailgun(key, good, NOW) == good["token"]
    forged = {**good, "signature": "0" * 64}
    other_token = {**good, "token": good["token"][::-1]}
    for sig in (forged, other_token, None, {}, {"timestamp": 1, "token": 2, "signature": 3},
                mailgun_signature("key-other", NOW)):
        with pytest.raises(p.Refused):
            p.verify_mailgun(key, sig, NOW)
    with pytest.raises(p.Refused, match="5 minutes"):
        p.verify_mailgun(key, mailgun_signature(key, NOW - 600), NOW)

    hard = mailgun_event("ada@example.com", message_id="12.abcdef0123@daily.example")
    (report,) = p.mailgun_reports({"signature": good, "event-data": hard})
    assert (report.kind, report.key) == (Kind.HARD, hard['id'])
    assert report.status == "5.1.1" and report.message_id == "<12.abcdef0123@daily.example>"
    soft = mailgun_event("b@example.com", severity="temporary")
    assert p.mailgun_reports({"event-data": soft})[0].kind == Kind.SOFT
    complained = mailgun_event("c@example.com", event="complained")
    assert p.mailgun_reports({"event-data": complained})[0].kind == Kind.COMPLAINT
    delivered = mailgun_event("d@example.com", event="delivered")
    assert p.mailgun_reports({"event-data": delivered})[0].kind == Kind.IGNORED
    for bad in ({}, {"event-data": []}, {"event-data": {"event": "failed"}}):
        with pytest.raises(p.Malformed):
            p.mailgun_reports(bad)
