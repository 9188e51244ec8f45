"""Signup behaviour: same answer for every address state, cooldowns, abuse protection, CORS."""

from __future__ import annotations

import re
import time

import pytest
import time_machine
from sqlalchemy import func, select, update

from mailer.clock import utcnow
from mailer.db import db
from mailer.models import ConsentRecord, Subscriber, SubscriberStatus
from mailer.services import newsletters
from tests.helpers.app import make_app
from tests.helpers.web import form_fields, signup


def scrub(html: str) -> str:
    """A page without its per-request tokens, to compare two answers."""
    return re.sub(r'name="(csrf_token|ts)" value="[^"]*"', "", html)


def set_status(email: str, status: SubscriberStatus) -> None:
    db.session.execute(update(Subscriber).where(Subscriber.email == email).values(status=status))
    db.session.commit()


def test_answer_does_not_reveal_whether_the_address_is_known(client, make_email):
    pending, active, unsubscribed, bounced = (make_email() for _ in range(4))
    for email in (pending, active, unsubscribed, bounced):
        signup(client, email)
    set_status(active, SubscriberStatus.ACTIVE)
    set_status(unsubscribed, SubscriberStatus.UNSUBSCRIBED)
    set_status(bounced, SubscriberStatus.BOUNCED)

    new_page = signup(client, make_email())
    new_json = client.post("/api/v1/subscribe", json={"email": make_email()})
    for email in (pending, active, unsubscribed, bounced):
        page = signup(client, email)
        assert (page.status_code, scrub(page.get_data(as_text=True))) == (
            new_page.status_code,
            scrub(new_page.get_data(as_text=True)),
        )
        api = client.post("/api/v1/subscribe", json={"email": email})
        assert (api.status_code, api.json) == (new_json.status_code, new_json.json)


def test_consent_record_keeps_the_words_shown_and_the_source(client, make_email):
    email = make_email()
    resp = client.post(
        "/api/v1/subscribe",
        json={"email": email, "source": "footer box", "consent": "Yes, send me the digest."},
        headers={"User-Agent": "ReaderBrowser/1.0"},
    )
    assert resp.status_code == 202
    consent = db.session.scalar(select(ConsentRecord))
    first = newsletters.first(db.session)  # a signup naming none: the signup defaults
    assert consent.source == "api: footer box"
    assert consent.wording == f"Yes, send me the digest.\nNewsletters: {first.name}"
    assert consent.user_agent == "ReaderBrowser/1.0" and consent.ip == "127.0.0.1"
    assert consent.at is not None


def test_address_is_normalized(client):
    resp = client.post("/api/v1/subscribe", json={"email": "  Ada.Reader@BÜCHER.example  "})
    assert resp.status_code == 202
    assert db.session.scalar(select(Subscriber.email)) == "ada.reader@xn--bcher-kva.example"


def test_pending_address_gets_at_most_one_new_confirmation_per_cooldown(
    client, smtp, worker, make_email
):
    email = make_email()
    signup(client, email)
    smtp.wait_for(email, 1)
    signup(client, email)
    client.post("/api/v1/subscribe", json={"email": email})
    # Still one: the repeated signups inside the cooldown queued nothing.
    with time_machine.travel(utcnow().timestamp() + 601, tick=True):
        signup(client, email)
        signup(client, email)
    mails = smtp.wait_for(email, 2)
    time.sleep(1.5)
    assert len(smtp.to(email)) == 2
    assert len({m.message["Message-ID"] for m in mails}) == 2


def test_confirmation_is_not_sent_inside_the_request(client, smtp, worker, make_email):
    """The SMTP server refuses for a while: the signup still answers at once, mail comes later."""
    email = make_email()
    smtp.once[email] = "451 4.3.0 try again later"
    started = time.monotonic()
    resp = signup(client, email)
    assert resp.status_code == 200 and time.monotonic() - started < 2
    (mail,) = smtp.wait_for(email, 1, timeout=45)
    assert "/confirm/" in mail.text


# Alone: it restarts the Redis of the session's shared worker, which then has to reconnect and
# take the re-enqueued mail within the wait below.
@pytest.mark.redis
@pytest.mark.alone
def test_signup_survives_a_broker_outage(app, client, smtp, worker, redis_server, make_email):
    """Redis is down when the request commits: 2xx, row kept, the sweeper sends it later."""
    email = make_email()
    redis_server.stop()
    try:
        resp = client.post("/api/v1/subscribe", json={"email": email})
        assert resp.status_code == 202
    finally:
        redis_server.start()
    assert db.session.scalar(select(Subscriber.status).where(Subscriber.email == email)) == (
        SubscriberStatus.PENDING
    )
    # The sweeper runs from the periodic tick; two minutes later it re-enqueues the mail.
    from mailer.tasks.notices import sweep_confirmations

    with app.app_context(), time_machine.travel(utcnow().timestamp() + 180, tick=True):
        assert sweep_confirmations() == 1
    smtp.wait_for(email, 1, timeout=45)


# Alone, as above: it stops and starts the Redis the session's worker uses.
@pytest.mark.redis
@pytest.mark.alone
def test_redis_lost_between_the_statement_and_the_hand_off(app, client, smtp, worker,
                                                          redis_server, make_email, monkeypatch):
    """The limits were counted and the signup committed; Redis dies before the confirmation
    is handed over: 2xx, the row kept, the confirmation owed, and the sweeper sends it."""
    from mailer.services import subscriptions as subs

    email = make_email()
    subscribe = subs.subscribe

    def then_redis_dies(*args, **kwargs):
        result = subscribe(*args, **kwargs)
        redis_server.stop()
        return result

    monkeypatch.setattr(subs, "subscribe", then_redis_dies)
    try:
        resp = client.post("/api/v1/subscribe", json={"email": email})
        assert resp.status_code == 202
    finally:
        redis_server.start()
    sub = db.session.scalar(select(Subscriber).where(Subscriber.email == email))
    assert sub.status == SubscriberStatus.PENDING and sub.confirm_sent_at is None
    from mailer.tasks.notices import sweep_confirmations

    with app.app_context(), time_machine.travel(utcnow().timestamp() + 180, tick=True):
        assert sweep_confirmations() == 1
    smtp.wait_for(email, 1, timeout=45)


def test_honeypot_looks_like_success_but_writes_nothing(client, make_email):
    resp = signup(client, make_email(), website="http://spam.example")
    assert resp.status_code == 200 and b"check your inbox" in resp.data
    api = client.post("/api/v1/subscribe", json={"email": make_email(), "website": "x"})
    assert api.status_code == 202
    assert db.session.scalar(select(func.count()).select_from(Subscriber)) == 0


def test_form_posted_too_fast_is_refused(app, env, make_email):
    slow = make_app(env, MAILER_FORM_MIN_SECONDS="5").test_client()
    fields = form_fields(slow.get("/subscribe").get_data(as_text=True))
    resp = slow.post("/subscribe", data={**fields, "email": make_email()})
    assert resp.status_code == 400 and b"quicker than a person can type" in resp.data
    with time_machine.travel(utcnow().timestamp() + 6, tick=True):
        resp = slow.post("/subscribe", data={**fields, "email": make_email()})
    assert resp.status_code == 200
    assert db.session.scalar(select(func.count()).select_from(Subscriber)) == 1


def test_rate_limit_per_ip(app, env, make_email):
    limited = make_app(env, MAILER_SIGNUP_LIMIT_IP="3 per minute").test_client()
    codes = [
        limited.post("/api/v1/subscribe", json={"email": make_email()}).status_code
        for _ in range(4)
    ]
    assert codes == [202, 202, 202, 429]
    resp = limited.post("/api/v1/subscribe", json={"email": make_email()})
    assert resp.status_code == 429 and int(resp.headers["Retry-After"]) > 0
    assert "Too many requests" in resp.json["message"]
    # The page and the API share one budget.
    fields = form_fields(limited.get("/subscribe").get_data(as_text=True))
    page = limited.post("/subscribe", data={**fields, "email": make_email()})
    assert page.status_code == 429 and b"Slow down" in page.data
    assert db.session.scalar(select(func.count()).select_from(Subscriber)) == 3


def test_rate_limit_per_address(app, env, make_email):
    limited = make_app(env, MAILER_SIGNUP_LIMIT_ADDRESS="2 per hour").test_client()
    email = make_email()
    codes = [
        limited.post("/api/v1/subscribe", json={"email": email}).status_code for _ in range(3)
    ]
    assert codes == [202, 202, 429]
    assert limited.post("/api/v1/subscribe", json={"email": make_email()}).status_code == 202


def test_cors_for_the_sites_own_origin_only(client, make_email):
    pre = client.options(
        "/api/v1/subscribe",
        headers={"Origin": "https://www.daily.example", "Access-Control-Request-Method": "POST"},
    )
    assert pre.status_code == 204
    assert pre.headers["Access-Control-Allow-Origin"] == "https://www.daily.example"
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    resp = client.post(
        "/api/v1/subscribe", json={"email": make_email()},
        headers={"Origin": "https://www.daily.example"},
    )
    assert resp.headers["Access-Control-Allow-Origin"] == "https://www.daily.example"
    other = client.post(
        "/api/v1/subscribe", json={"email": make_email()}, headers={"Origin": "https://evil.example"}
    )
    assert "Access-Control-Allow-Origin" not in other.headers


def test_security_headers_and_cookie_flags(app, env):
    resp = app.test_client().get("/subscribe")
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    https = make_app(env, MAILER_BASE_URL="https://news.daily.example").test_client()
    resp = https.get("/subscribe")
    assert "Secure" in resp.headers["Set-Cookie"]
    assert resp.headers["Strict-Transport-Security"].startswith("max-age=")


def test_no_reader_text_in_any_subject(client, smtp, worker, make_email):
    email = make_email()
    signup(client, email, name="WIN A PRIZE at evil.example")
    (mail,) = smtp.wait_for(email)
    assert "PRIZE" not in mail.message["Subject"] and "PRIZE" not in mail.text
    assert mail.message["To"] == email


def test_healthz_reports_database_and_broker(client):
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json == {"status": "ok", "database": "ok", "broker": "ok"}


@pytest.mark.redis
def test_healthz_says_when_the_broker_is_down(client, redis_server):
    redis_server.stop()
    try:
        resp = client.get("/healthz")
    finally:
        redis_server.start()
    assert resp.status_code == 503
    assert resp.json["database"] == "ok" and resp.json["broker"].startswith("error")


def test_metrics_count_subscribers_by_status(client, make_email):
    client.post("/api/v1/subscribe", json={"email": make_email()})
    body = client.get("/metrics").get_data(as_text=True)
    assert 'mailer_subscribers{status="pending"} 1' in body
