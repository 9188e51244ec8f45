"""POST /webhooks/<provider>: accepted, forged, replayed, stale, unconfigured, bad input.

Each provider's requests are built in its real shape and signed its way with keys and
certificates generated here (SNS's certificate comes from a local HTTPS server). Every
refusal changes nothing; a provider's retry of an event is recorded once.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, insert, select

from mailer.clock import utcnow
from mailer.db import db
from mailer.models import BounceEvent, Subscriber, SubscriberStatus, WebhookToken
from tests.helpers.app import make_app
from tests.helpers.providers import (
    TOPIC,
    CertHost,
    SendGridKeys,
    SnsSigner,
    basic_auth,
    mailgun_event,
    mailgun_signature,
    postmark_bounce,
    postmark_complaint,
    sendgrid_event,
    ses_notification,
    subscription_confirmation,
)
from tests.helpers.servers import free_port

POSTMARK = "postmark-hook:Zr4-long-enough-pass"
MAILGUN_KEY = "key-0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def cert_host(tmp_path_factory):
    host = CertHost(tmp_path_factory.mktemp("sns-host"))
    yield host
    host.close()


@pytest.fixture(scope="module")
def sendgrid_keys():
    return SendGridKeys()


@pytest.fixture
def hooks(app, env, cert_host, sendgrid_keys):
    """The app with every provider configured (on the `app` fixture's clean database)."""
    return make_app(
        env,
        MAILER_SES_TOPIC_ARNS=f"{TOPIC},arn:aws:sns:us-east-1:123456789012:other",
        MAILER_SNS_CERT_HOSTS="127.0.0.1",
        MAILER_SNS_CA_FILE=str(cert_host.ca_file),
        MAILER_POSTMARK_WEBHOOK_AUTH=POSTMARK,
        MAILER_SENDGRID_WEBHOOK_KEY=sendgrid_keys.public,
        MAILER_MAILGUN_SIGNING_KEY=MAILGUN_KEY,
    )


def _readers(app, count: int, prefix: str = "reader") -> list[str]:
    """Active readers whose confirmation we mailed today: reports about them count."""
    now = utcnow()
    emails = [f"{prefix}{n}@example.com" for n in range(count)]
    with app.app_context(), db.transaction() as s:
        s.execute(insert(Subscriber), [
            {"email": e, "status": SubscriberStatus.ACTIVE, "uid": f"u{prefix}{n}",
             "confirm_requested_at": now, "confirmed_at": now}
            for n, e in enumerate(emails)
        ])
    return emails


def _state(app, email: str):
    with app.app_context(), db.transaction() as s:
        status = s.scalar(select(Subscriber.status).where(Subscriber.email == email))
        events = s.scalar(select(func.count()).select_from(BounceEvent))
    return status, events


def _events(app) -> int:
    with app.app_context(), db.transaction() as s:
        return s.scalar(select(func.count()).select_from(BounceEvent))


def _metrics(app) -> str:
    return app.test_client().get("/metrics").get_data(as_text=True)


def _post_json(client, path, payload, **headers):
    return client.post(path, data=json.dumps(payload), headers={
        "Content-Type": "application/json", **headers})


def test_unconfigured_providers_are_not_found(client):
    for provider in ("ses", "postmark", "sendgrid", "mailgun"):
        resp = client.post(f"/webhooks/{provider}", data=b"{}",
                           headers={"Content-Type": "application/json"})
        assert resp.status_code == 404, provider
        assert resp.json["error"] == "not_found" and provider in resp.json["message"]


def test_ses_bounce_complaint_retry_and_refusals(hooks, cert_host):
    client = hooks.test_client()
    ada, bob = _readers(hooks, 2)
    signer = SnsSigner(cert_host, "/ses-test.pem")

    bounce = signer.sign(ses_notification("Bounce", [ada]), "1")
    resp = _post_json(client, "/webhooks/ses", bounce)
    assert resp.status_code == 200 and resp.json == {"received": 1, "recorded": 1}
    assert _state(hooks, ada) == (SubscriberStatus.BOUNCED, 1)
    # SNS retries the same message: answered 200, recorded once.
    again = _post_json(client, "/webhooks/ses", bounce)
    assert again.status_code == 200 and again.json == {"received": 1, "duplicate": 1}
    assert _events(hooks) == 1

    complaint = ses_notification("Complaint", [bob])
    forged = signer.sign(complaint, "2")
    forged["Message"] = forged["Message"].replace("Complaint", "Complain")
    stale = signer.sign(ses_notification("Complaint", [bob], at=time.time() - 600), "2")
    foreign = signer.sign(ses_notification("Complaint", [bob], topic=TOPIC + "-theirs"), "2")
    off_host = signer.sign(complaint, "2", cert_url="https://evil.example/cert.pem")
    for bad, status in ((forged, 401), (stale, 401), (foreign, 403), (off_host, 403)):
        resp = _post_json(client, "/webhooks/ses", bad)
        assert resp.status_code == status, resp.json
        assert resp.json["error"] in ("unauthorized", "forbidden")
    assert _state(hooks, bob) == (SubscriberStatus.ACTIVE, 1)
    # The certificate host cannot be reached: 503, so that SNS retries later.
    unreachable = signer.sign(complaint, "2",
                              cert_url=f"https://127.0.0.1:{free_port()}/cert.pem")
    resp = _post_json(client, "/webhooks/ses", unreachable)
    assert resp.status_code == 503 and resp.json["error"] == "unavailable"
    assert _state(hooks, bob) == (SubscriberStatus.ACTIVE, 1)

    resp = _post_json(client, "/webhooks/ses", signer.sign(complaint, "2"))
    assert resp.status_code == 200 and resp.json["recorded"] == 1
    assert _state(hooks, bob) == (SubscriberStatus.COMPLAINED, 2)


def test_ses_subscription_is_confirmed_by_fetching_its_url(hooks, cert_host):
    signer = SnsSigner(cert_host, "/ses-sub.pem")
    message = signer.sign(subscription_confirmation(cert_host), "2")
    asked = len(cert_host.requests)
    resp = _post_json(hooks.test_client(), "/webhooks/ses", message)
    assert resp.status_code == 200 and resp.json == {"confirmed": TOPIC}
    assert any(r.startswith("/confirm?Action=ConfirmSubscription")
               for r in cert_host.requests[asked:])
    elsewhere = signer.sign({**subscription_confirmation(cert_host),
                             "SubscribeURL": "https://evil.example/confirm"}, "2")
    assert _post_json(hooks.test_client(), "/webhooks/ses", elsewhere).status_code == 403


def test_postmark_basic_auth_events_and_retry(hooks):
    client = hooks.test_client()
    ada, bob = _readers(hooks, 2)
    hard = postmark_bounce(ada)
    auth = {"Authorization": basic_auth(POSTMARK)}
    for headers in ({}, {"Authorization": basic_auth("postmark-hook:wrong")},
                    {"Authorization": "Bearer " + POSTMARK}):
        resp = _post_json(client, "/webhooks/postmark", hard, **headers)
        assert resp.status_code == 401 and resp.json["error"] == "unauthorized"
    assert _state(hooks, ada) == (SubscriberStatus.ACTIVE, 0)
    assert _post_json(client, "/webhooks/postmark", hard, **auth).json["recorded"] == 1
    assert _post_json(client, "/webhooks/postmark", hard, **auth).json["duplicate"] == 1
    assert _post_json(client, "/webhooks/postmark", postmark_complaint(bob), **auth).json == {
        "received": 1, "recorded": 1}
    assert _state(hooks, ada) == (SubscriberStatus.BOUNCED, 2)
    assert _state(hooks, bob)[0] == SubscriberStatus.COMPLAINED
    # /metrics counts the refused requests beside the reports.
    metrics = client.get("/metrics").get_data(as_text=True)
    for line in ('{source="postmark",result="refused"} 3', '{source="postmark",result="recorded"} 2',
                 '{source="postmark",result="duplicate"} 1'):
        assert f"mailer_bounce_reports_total{line}\n" in metrics


def test_sendgrid_signed_batches_forged_and_stale(hooks, sendgrid_keys):
    client = hooks.test_client()
    ada, bob, cyd = _readers(hooks, 3)
    batch = [sendgrid_event("bounce", ada), sendgrid_event("spamreport", bob),
             sendgrid_event("delivered", cyd), sendgrid_event("open", cyd)]
    body = json.dumps(batch).encode()

    other = SendGridKeys()
    for headers in (other.headers(body), sendgrid_keys.headers(body, time.time() - 400),
                    {"Content-Type": "application/json"}):
        resp = client.post("/webhooks/sendgrid", data=body, headers=headers)
        assert resp.status_code == 401, resp.json
    tampered = body.replace(b"bounce", b"bounced")
    resp = client.post("/webhooks/sendgrid", data=tampered, headers=sendgrid_keys.headers(body))
    assert resp.status_code == 401
    assert _events(hooks) == 0
    assert 'mailer_bounce_reports_total{source="sendgrid",result="refused"} 4' in _metrics(hooks)

    resp = client.post("/webhooks/sendgrid", data=body, headers=sendgrid_keys.headers(body))
    assert resp.status_code == 200
    assert resp.json == {"received": 4, "recorded": 2, "ignored": 2}
    again = client.post("/webhooks/sendgrid", data=body, headers=sendgrid_keys.headers(body))
    assert again.json == {"received": 4, "duplicate": 2, "ignored": 2}
    assert _state(hooks, ada) == (SubscriberStatus.BOUNCED, 2)
    assert _state(hooks, bob)[0] == SubscriberStatus.COMPLAINED
    assert _state(hooks, cyd)[0] == SubscriberStatus.ACTIVE


def test_mailgun_signed_events_replayed_tokens_and_stale(hooks):
    client = hooks.test_client()
    ada, bob = _readers(hooks, 2)
    payload = {"signature": mailgun_signature(MAILGUN_KEY), "event-data": mailgun_event(ada)}
    resp = _post_json(client, "/webhooks/mailgun", payload)
    assert resp.status_code == 200 and resp.json == {"received": 1, "recorded": 1}
    # The same request again (a replay, token and all): refused, nothing changes.
    replay = _post_json(client, "/webhooks/mailgun", payload)
    assert replay.status_code == 403 and "replayed" in replay.json["message"]
    # Mailgun's own retry signs afresh: accepted, and the event counted once.
    retry = {"signature": mailgun_signature(MAILGUN_KEY), "event-data": payload["event-data"]}
    assert _post_json(client, "/webhooks/mailgun", retry).json == {
        "received": 1, "duplicate": 1}
    assert _state(hooks, ada) == (SubscriberStatus.BOUNCED, 1)

    event = mailgun_event(bob, event="complained")
    forged = {"signature": mailgun_signature("key-someone-else"), "event-data": event}
    stale = {"signature": mailgun_signature(MAILGUN_KEY, time.time() - 400), "event-data": event}
    unsigned = {"event-data": event}
    for bad in (forged, stale, unsigned):
        resp = _post_json(client, "/webhooks/mailgun", bad)
        assert resp.status_code == 401, resp.json
    assert _state(hooks, bob) == (SubscriberStatus.ACTIVE, 1)
    with hooks.app_context(), db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(WebhookToken)) == 2
    metrics = _metrics(hooks)
    assert 'mailer_bounce_reports_total{source="mailgun",result="refused"} 4' in metrics
    assert 'mailer_bounce_reports_total{source="mailgun",result="recorded"} 1' in metrics


def test_old_mailgun_tokens_are_forgotten_by_the_tick(hooks):
    from mailer.tasks.webhooks import forget_webhook_tokens

    with hooks.app_context():
        with db.transaction() as s:
            s.add_all([
                WebhookToken(provider="mailgun", token="old", seen_at=utcnow() - timedelta(hours=1)),
                WebhookToken(provider="mailgun", token="new", seen_at=utcnow()),
            ])
        assert forget_webhook_tokens() == 1
        with db.transaction() as s:
            assert s.scalars(select(WebhookToken.token)).all() == ["new"]


def test_bad_input_is_a_clear_4xx_and_never_a_500(hooks, sendgrid_keys):
    client = hooks.test_client()
    auth = {"Authorization": basic_auth(POSTMARK)}
    big = b"[" + b" " * (1024 * 1024) + b"]"
    assert client.post("/webhooks/postmark", data=big, headers=auth).status_code == 413
    resp = client.post("/webhooks/sendgrid", data=big, headers=sendgrid_keys.headers(big))
    assert resp.status_code == 413 and resp.json["error"] == "too_large"
    junk = [b"", b"not json", b"\xff\xfe\x00", b"[]", b"{}", b"null", b"42", b'"text"',
            b'[{"event": ["x"]}]', b'{"Type": {"a": 1}}', b'{"RecordType": "Bounce"}',
            json.dumps([{"event": "bounce", "email": ["a"], "sg_event_id": {"x": 1},
                         "status": "5" * 100}]).encode()]
    for body in junk:
        for path, headers in (("/webhooks/ses", {}), ("/webhooks/postmark", auth),
                              ("/webhooks/sendgrid", sendgrid_keys.headers(body)),
                              ("/webhooks/mailgun", {})):
            resp = client.post(path, data=body, headers={"Content-Type": "application/json",
                                                         **headers})
            assert 200 <= resp.status_code < 500, (path, body, resp.status_code)
            assert resp.is_json, (path, body)
    assert client.get("/webhooks/ses").status_code == 405
    assert _events(hooks) == 0


@pytest.mark.slow
def test_two_thousand_events_from_concurrent_retried_posts_are_each_counted_once(
    hooks, sendgrid_keys
):
    """SendGrid batches posted by 8 clients at once against a threaded server, each batch
    twice (a provider's retry), interleaved with Postmark events: none lost, none doubled."""
    from werkzeug.serving import make_server

    emails = _readers(hooks, 2000, prefix="load")
    # Each batch mixes what SendGrid mixes: soft bounces and events we ignore, in an order
    # that differs from batch to batch.
    sendgrid_batches = []
    for n, i in enumerate(range(0, 1500, 50)):
        batch = [sendgrid_event("bounce", e, type="blocked", status="4.2.2")
                 for e in emails[i : i + 50]]
        batch += [sendgrid_event("delivered", e) for e in emails[i : i + 5]]
        sendgrid_batches.append(batch[::-1] if n % 2 else batch)
    postmark_events = [postmark_bounce(e, "SoftBounce") for e in emails[1500:]]
    server = make_server("127.0.0.1", free_port(), hooks, threaded=True)
    import threading

    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"

    def post(http, kind, body):
        """One delivery as the provider makes it, which retries an answer of 503: the
        embedded database, one writer at a time, can leave a request waiting past its busy
        timeout on a loaded machine, and the mailer then records nothing and asks for a
        retry (the counts below show that nothing of it was kept)."""
        for _ in range(5):
            if kind == "sendgrid":
                resp = http.post("/webhooks/sendgrid", content=body,
                                 headers=sendgrid_keys.headers(body))
            else:
                resp = http.post("/webhooks/postmark", content=body, headers={
                    "Authorization": basic_auth(POSTMARK),
                    "Content-Type": "application/json"})
            if resp.status_code != 503:
                break
            assert resp.json()["error"] == "unavailable", resp.text
            time.sleep(1)
        return resp

    def send(job):
        kind, payload = job
        with httpx.Client(base_url=base, timeout=60) as http:
            body = json.dumps(payload).encode()
            for _ in range(2):
                resp = post(http, kind, body)
                assert resp.status_code == 200, resp.text
        return resp.json()

    jobs = [("sendgrid", b) for b in sendgrid_batches] + [("postmark", e) for e in postmark_events]
    jobs = jobs[::2] + jobs[1::2]
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(send, jobs))
    finally:
        server.shutdown()
    assert sum(a["received"] for a in answers) == 2000 + 30 * 5
    with hooks.app_context(), db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(BounceEvent)) == 2000
        assert s.scalar(select(func.count(func.distinct(BounceEvent.subscriber_id)))) == 2000
        scored = s.scalar(select(func.count()).select_from(Subscriber)
                          .where(Subscriber.bounce_score == 1))
    assert scored == 2000


def test_our_message_id_in_an_event_names_the_exact_delivery(hooks, sendgrid_keys):
    """Mailgun (without angle brackets) and SendGrid (smtp-id) hand back the Message-ID we
    sent: the event is tied to that delivery and its issue even when the address it names
    is not the reader's (a forwarding address, say)."""
    from mailer.models import Delivery, DeliveryStatus
    from tests.helpers.delivery import new_issue

    emails = _readers(hooks, 3, prefix="exact")
    rt = hooks.extensions["mailer"]
    with hooks.app_context():
        issue_id = new_issue()
        with db.transaction() as s:
            ids = {e: s.scalar(select(Subscriber.id).where(Subscriber.email == e)) for e in emails}
            rows = [Delivery(issue_id=issue_id, subscriber_id=ids[e], status=DeliveryStatus.SENT,
                             sent_at=utcnow(), attempts=1) for e in emails]
            s.add_all(rows)
            s.flush()
            deliveries = {e: d.id for e, d in zip(emails, rows, strict=True)}
    compiled = rt.composer.compile(issue_id=issue_id, variant_id=1, subject="s", html="h",
                                   text="t")
    ours = {e: compiled.message_id(d) for e, d in deliveries.items()}
    client = hooks.test_client()
    mailgun = {"signature": mailgun_signature(MAILGUN_KEY),
               "event-data": mailgun_event("fwd0@elsewhere.example",
                                             message_id=ours[emails[0]].strip("<>"))}
    assert _post_json(client, "/webhooks/mailgun", mailgun).json["recorded"] == 1
    body = json.dumps([sendgrid_event("bounce", "fwd1@elsewhere.example", smtp_id=ours[emails[1]])]).encode()
    resp = client.post("/webhooks/sendgrid", data=body, headers=sendgrid_keys.headers(body))
    assert resp.json["recorded"] == 1
    auth = {"Authorization": basic_auth(POSTMARK)}
    assert _post_json(client, "/webhooks/postmark", postmark_bounce(emails[2]),
                      **auth).json["recorded"] == 1
    with hooks.app_context(), db.transaction() as s:
        got = dict(s.execute(select(BounceEvent.delivery_id, BounceEvent.issue_id)
                             .where(BounceEvent.delivery_id.is_not(None))).all())
    # Postmark gives back its own id only: matched by address to the latest delivery.
    assert got == {deliveries[e]: issue_id for e in emails}
