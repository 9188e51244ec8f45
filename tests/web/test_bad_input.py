"""Bad input gets a readable 4xx, writes no row and sends no mail."""

from __future__ import annotations

import json

import pytest
import time_machine
from sqlalchemy import func, select

from mailer import tokens as t
from mailer.clock import utcnow
from mailer.db import db
from mailer.models import ConsentRecord, Role, Subscriber
from mailer.runtime import runtime
from mailer.services import users
from tests.helpers.console import login
from tests.helpers.web import form_fields, signup

MALFORMED = [
    "",
    "plainaddress",
    "@example.com",
    "reader@",
    "reader@@example.com",
    "reader@example..com",
    "reader name@example.com",
    "reader@exa mple.com",
    "reader@-example.com",
    "reader@example.com.",
    ".reader@example.com",
    "reader.@example.com",
    "read..er@example.com",
    "reader@[300.1.1.1]",
    "a" * 65 + "@example.com",
    "reader@" + "b" * 250 + ".com",
    "rëader@example.com",  # needs SMTPUTF8, which we do not send
]

INJECTION = [
    "reader@example.com\r\nBcc: victim@example.com",
    "reader@example.com\nBcc: victim@example.com",
    "reader@example.com\x00",
    "reader@example.com\u2028",
]


def rows() -> tuple[int, int]:
    db.session.expire_all()
    return (
        db.session.scalar(select(func.count()).select_from(Subscriber)),
        db.session.scalar(select(func.count()).select_from(ConsentRecord)),
    )


@pytest.mark.parametrize("address", MALFORMED + INJECTION)
def test_malformed_addresses_on_the_form(client, address):
    resp = signup(client, address)
    assert resp.status_code == 400
    body = resp.get_data(as_text=True)
    assert 'role="alert"' in body
    assert rows() == (0, 0)


@pytest.mark.parametrize("address", MALFORMED + INJECTION)
def test_malformed_addresses_on_the_api(client, address):
    resp = client.post("/api/v1/subscribe", json={"email": address})
    assert resp.status_code == 400
    assert resp.json["field"] == "email" and resp.json["message"]
    assert rows() == (0, 0)


@pytest.mark.parametrize(
    "name", ["Ada\r\nBcc: victim@example.com", "Ada\nLovelace", "Ada\x1b[31m", "A" * 101]
)
def test_bad_names(client, make_email, name):
    resp = signup(client, make_email(), name=name)
    assert resp.status_code == 400 and 'role="alert"' in resp.get_data(as_text=True)
    api = client.post("/api/v1/subscribe", json={"email": make_email(), "name": name})
    assert api.status_code == 400 and api.json["field"] == "name"
    assert rows() == (0, 0)


@pytest.mark.parametrize(
    "payload",
    [
        {"email": ["a@example.com"]},
        {"email": 42},
        {"email": "a@example.com", "frequency": "hourly"},
        {"email": "a@example.com", "sections": ["gossip"]},
        {"email": "a@example.com", "sections": [1, 2]},
        {"email": "a@example.com", "name": {"first": "Ada"}},
        {"email": "a@example.com", "consent": "ok\r\nX-Header: 1"},
    ],
)
def test_wrongly_typed_json_fields(client, payload):
    resp = client.post("/api/v1/subscribe", json=payload)
    assert resp.status_code == 400 and resp.json["message"]
    assert rows() == (0, 0)


def test_wrong_content_types_and_bodies(client):
    resp = client.post("/api/v1/subscribe", data="email=a@example.com", content_type="text/plain")
    assert resp.status_code == 415 and "form data or JSON" in resp.json["message"]
    resp = client.post("/api/v1/subscribe", data="{not json", content_type="application/json")
    assert resp.status_code == 400 and "not valid JSON" in resp.json["message"]
    resp = client.post("/api/v1/subscribe", data="[1, 2]", content_type="application/json")
    assert resp.status_code == 400 and "must be an object" in resp.json["message"]
    resp = client.post("/api/v1/subscribe", data=b"\xff\xfe", content_type="application/json")
    assert resp.status_code == 400
    assert rows() == (0, 0)


def test_oversized_bodies(client):
    big = "x" * (200 * 1024)
    resp = client.post("/api/v1/subscribe", json={"email": "a@example.com", "name": big})
    assert resp.status_code == 413 and resp.json["message"] == "The request is too large."
    page = client.get("/subscribe")
    form = {**form_fields(page.get_data(as_text=True)), "email": "a@example.com", "name": big}
    resp = client.post("/subscribe", data=form)
    assert resp.status_code == 413 and b"too large" in resp.data
    assert rows() == (0, 0)


def test_wrong_methods_are_405_not_500(client):
    assert client.put("/subscribe").status_code == 405
    assert client.get("/api/v1/subscribe").status_code == 405
    assert client.delete("/unsubscribe/abc").status_code == 405


def test_form_without_csrf_token_is_refused(client, make_email):
    page = client.get("/subscribe")
    fields = form_fields(page.get_data(as_text=True))
    fields.pop("csrf_token")
    resp = client.post("/subscribe", data={**fields, "email": make_email()})
    assert resp.status_code == 400 and b"form expired" in resp.data
    assert rows() == (0, 0)


def test_form_without_or_with_forged_timestamp(client, make_email):
    page = client.get("/subscribe")
    fields = form_fields(page.get_data(as_text=True))
    no_ts = {k: v for k, v in fields.items() if k != "ts"}
    assert client.post("/subscribe", data={**no_ts, "email": make_email()}).status_code == 400
    forged = {**fields, "ts": fields["ts"][:-2] + "xx", "email": make_email()}
    resp = client.post("/subscribe", data=forged)
    assert resp.status_code == 400 and b"not filled in on our page" in resp.data
    assert rows() == (0, 0)


def _confirm_token(app, uid="nobody", email="a@example.com"):
    """A confirmation token in the form v0.1.0 mailed (a timed token holding the address)."""
    with app.app_context():
        return runtime().tokens.make_timed(t.CONFIRM, [uid, email])


def _current_token(app, uid="nobody"):
    with app.app_context():
        return runtime().tokens.sign_issued(t.CONFIRM, uid, utcnow())


def test_forged_tampered_and_foreign_tokens(app, client):
    good = _confirm_token(app)
    current = _current_token(app)
    with app.app_context():
        unsub = runtime().tokens.sign(t.UNSUBSCRIBE, "someuid")
    cases = [
        f"/confirm/{good[:-3]}abc",  # tampered signature
        f"/confirm/{good.replace('.', 'x', 1)}",  # tampered payload
        "/confirm/garbage",
        f"/confirm/{unsub}",  # a token of another purpose
        f"/confirm/{current[:-3]}abc",
        f"/confirm/{current.replace('~', '~1', 1)}",  # another time
        f"/unsubscribe/{current}",
        f"/unsubscribe/{good}",
        "/unsubscribe/someuid.AAAAAAAAAAAAAAAAAAAAAA",
        "/unsubscribe/x",
        f"/preferences/{unsub}",
        "/preferences/email/garbage",
    ]
    # A valid CSRF token, so that what is refused is the link itself.
    csrf_token = form_fields(client.get("/subscribe").get_data(as_text=True))["csrf_token"]
    body = {"List-Unsubscribe": "One-Click", "csrf_token": csrf_token}
    for url in cases:
        for method in ("get", "post"):
            resp = getattr(client, method)(url, data=body)
            assert resp.status_code == 400, url
            assert b"This link is not valid" in resp.data, url
            assert b"Send me a new link" in resp.data, url


def test_expired_confirmation_link_offers_a_new_one(app, client, make_email):
    email = make_email()
    signup(client, email)
    uid = db.session.scalar(select(Subscriber.uid).where(Subscriber.email == email))
    with time_machine.travel("2020-01-01T00:00:00Z"):
        old = _confirm_token(app, uid, email)
        current = _current_token(app, uid)
    for token in (old, current):
        resp = client.get(f"/confirm/{token}")
        assert resp.status_code == 400 and b"This link has expired" in resp.data
        assert b"Send me a new link" in resp.data


def test_valid_token_for_an_unknown_reader_is_400(app, client):
    fields = form_fields(client.get("/subscribe").get_data(as_text=True))
    for token in (_confirm_token(app), _current_token(app)):
        for method in ("get", "post"):
            resp = getattr(client, method)(f"/confirm/{token}", data=fields)
            assert resp.status_code == 400 and b"This link is not valid" in resp.data


def test_one_click_post_without_the_rfc8058_body_is_refused(app, client, make_email):
    with app.app_context():
        token = runtime().tokens.sign(t.UNSUBSCRIBE, "someuid")
    resp = client.post(f"/unsubscribe/{token}", data={"something": "else"})
    assert resp.status_code == 400 and b"List-Unsubscribe=One-Click" in resp.data


def test_no_mail_leaves_for_bad_input(client, smtp, worker, make_email):
    """A burst of bad requests, then one good signup: only the good one is mailed."""
    for address in MALFORMED + INJECTION:
        client.post("/api/v1/subscribe", json={"email": address})
        signup(client, address)
    good = make_email()
    assert client.post("/api/v1/subscribe", json={"email": good}).status_code == 202
    smtp.wait_for(good)
    assert [m.recipient for m in smtp.messages] == [good]
    assert json.loads(json.dumps(rows())) == [1, 1]



def test_ids_beyond_the_id_columns_are_404_not_500(client, make_email):
    """Found by the OpenAPI conformance run: the database driver overflowed on such ids."""
    user = users.create_user(db.session, make_email("api"), "a long enough password", Role.ADMIN)
    api = {"Authorization": f"Bearer {users.create_api_token(db.session, user, 'tests')}"}
    db.session.commit()
    assert client.get(f"/api/v1/issues/{2**63 - 1}", headers=api).json["message"] == (
        f"There is no issue {2**63 - 1}.")  # the largest id still reaches the service
    for huge in (2**63, 2**64 + 1, 10**40):
        for method, url in [("GET", f"/api/v1/issues/{huge}"),
                            ("POST", f"/api/v1/issues/{huge}/send"),
                            ("PATCH", f"/api/v1/issues/1/items/{huge}"),
                            ("GET", f"/api/v1/schedules/{huge}/next"),
                            ("DELETE", f"/api/v1/schedules/{huge}")]:
            resp = client.open(url, method=method, headers=api, json={"pinned": True})
            assert resp.status_code == 404 and resp.is_json, (method, url, resp.status_code)
    login(client, Role.ADMIN, make_email("admin"))
    assert client.get(f"/admin/issues/{2**64}").status_code == 404
    assert client.get(f"/admin/schedules/{2**64}").status_code == 404


def test_api_errors_carry_stable_codes(client):
    assert client.get("/api/v1/issues").json["error"] == "unauthorized"
    assert client.post("/api/v1/subscribe", json={"email": "x"}).json["error"] == "invalid"
    assert client.post("/api/v1/subscribe", data="x", content_type="text/plain").json["error"] == (
        "unsupported_media_type"
    )
    assert client.get("/api/v1/nothing-here").json["error"] == "not_found"


def test_missing_token_is_401_with_a_bearer_challenge(client):
    resp = client.get("/api/v1/issues", headers={"Authorization": "Bearer not-a-token"})
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="mailer"'
    assert "Authorization: Bearer" in resp.json["message"]


@pytest.mark.redis
def test_a_database_that_takes_no_connection_is_a_503_and_the_signup_can_be_sent_again(
    client, pg_database, make_email
):
    """The database down, restarting or out of connections: the reader gets "try again in a
    moment" with Retry-After, not a 500, and the same request succeeds once it is back."""
    email = make_email()
    fields = form_fields(client.get("/subscribe").get_data(as_text=True))
    pg_database.admin(f'ALTER DATABASE "{pg_database.name}" ALLOW_CONNECTIONS false')
    try:
        db.engine.dispose()  # the app's next request needs a new connection
        api = client.post("/api/v1/subscribe", json={"email": email})
        form = client.post("/subscribe", data={**fields, "email": email})
    finally:
        pg_database.admin(f'ALTER DATABASE "{pg_database.name}" ALLOW_CONNECTIONS true')
    assert api.status_code == 503 and api.headers["Retry-After"] == "5"
    assert api.json == {"error": "unavailable", "message": "The service is briefly "
                        "unavailable. Please try again in a moment."}
    assert form.status_code == 503 and form.headers["Retry-After"] == "5"
    assert "try again in a moment" in form.get_data(as_text=True)
    assert client.post("/api/v1/subscribe", json={"email": email}).status_code == 202
    assert db.session.scalar(select(func.count()).select_from(Subscriber)) == 1
