"""Console access: login and lockout, roles, CSRF, sessions that end on a password change,
and the users page where admins manage everyone else."""

from __future__ import annotations

import re

import time_machine
from sqlalchemy import func, select

from mailer.clock import utcnow
from mailer.db import db
from mailer.models import Issue, Role, User
from tests.helpers.console import PASSWORD, add_user, login, post, text_of, token
from tests.helpers.web import post_form

CONSOLE_PAGES = ["/admin/", "/admin/issues", "/admin/subscribers", "/admin/users",
                 "/admin/settings", "/admin/account", "/admin/subscribers/import",
                 "/admin/subscribers/suppressions", "/admin/issues/1/sending"]


def user(email: str) -> User:
    db.session.expire_all()
    return db.session.scalar(select(User).where(User.email == email))


def test_first_run_creates_the_admin_then_the_setup_page_is_gone(client):
    assert client.get("/admin/login").headers["Location"].endswith("/admin/setup")
    bad = post_form(client, "/admin/setup", email="chief@daily.example", password=PASSWORD,
                    password2="something else entirely")
    assert bad.status_code == 400 and "The two passwords differ" in text_of(bad)
    assert db.session.scalar(select(func.count()).select_from(User)) == 0
    made = post_form(client, "/admin/setup", email="chief@daily.example", password=PASSWORD,
                     password2=PASSWORD)
    assert made.status_code == 302 and user("chief@daily.example").role == Role.ADMIN
    assert "Dashboard" in text_of(client.get("/admin/"))
    assert client.get("/admin/setup").headers["Location"].endswith("/admin/login")


def test_an_anonymous_visitor_is_sent_to_the_login_page_and_back(client):
    add_user(Role.ADMIN, "chief@daily.example")
    for url in CONSOLE_PAGES:
        resp = client.get(url)
        assert resp.status_code == 302, url
        assert "/admin/login?next=" in resp.headers["Location"], url
    resp = client.post("/admin/issues/new")
    assert resp.status_code in (302, 400)  # the CSRF check may answer first; nothing is made
    assert db.session.scalar(select(func.count()).select_from(Issue)) == 0
    back = post_form(client, "/admin/login?next=/admin/subscribers", email="chief@daily.example",
                     password=PASSWORD)
    assert back.headers["Location"] == "/admin/subscribers"
    # The login page sends nobody to another site.
    client.post("/admin/logout", data={"csrf_token": token(client)})
    away = post_form(client, "/admin/login?next=//evil.example/", email="chief@daily.example",
                     password=PASSWORD)
    assert away.headers["Location"] == "/admin/"


def test_a_form_without_its_csrf_token_is_refused_and_writes_nothing(client):
    login(client, Role.ADMIN, "chief@daily.example")
    for url, data in [
        ("/admin/users", {"email": "new@daily.example", "role": "editor", "password": PASSWORD,
                          "password2": PASSWORD}),
        ("/admin/issues/new", {}),
        ("/admin/logout", {}),
    ]:
        resp = client.post(url, data=data)
        assert resp.status_code == 400, url
        assert "The form expired or was sent from elsewhere" in text_of(resp)
        forged = client.post(url, data={**data, "csrf_token": "forged"})
        assert forged.status_code == 400, url
    assert user("new@daily.example") is None
    assert db.session.scalar(select(func.count()).select_from(Issue)) == 0
    assert client.get("/admin/").status_code == 200  # still logged in: logout was refused too


def from_address(app, ip: str):
    """A browser at another client address (MAILER_PROXY_HOPS=0: the socket's address)."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = ip
    return client


def attempt(client, password: str, email: str = "editor@daily.example"):
    return post_form(client, "/admin/login", email=email, password=password)


def test_wrong_passwords_hold_that_address_not_the_owner(app, caplog):
    add_user(Role.EDITOR, "editor@daily.example")
    attacker, owner = from_address(app, "203.0.113.9"), from_address(app, "198.51.100.7")
    for _ in range(2):
        resp = attempt(attacker, "wrong one")
        assert resp.status_code == 401 and "Wrong address or password" in text_of(resp)
    third = attempt(attacker, "wrong one")
    assert third.status_code == 429
    assert "Too many failed attempts from this address. Try again in 5 seconds" in text_of(third)
    # While it waits, that address gets nowhere, not even with the right password...
    right = attempt(attacker, PASSWORD)
    assert right.status_code == 429 and attacker.get("/admin/").status_code == 302
    # ...and the owner, elsewhere, logs in.
    assert attempt(owner, PASSWORD).status_code == 302
    assert owner.get("/admin/").status_code == 200
    assert "console login for editor@daily.example from 203.0.113.9 held for 5 s" in caplog.text
    # An unknown address reads exactly like a wrong password, and is held the same way.
    unknown = attempt(attacker, "x" * 12, email="nobody@daily.example")
    assert unknown.status_code == 401 and "Wrong address or password" in text_of(unknown)


def test_each_further_failure_doubles_the_wait_and_the_wait_ends(app):
    add_user(Role.EDITOR, "editor@daily.example")
    attacker = from_address(app, "203.0.113.9")
    waits = []
    start = utcnow()
    with time_machine.travel(start, tick=False) as clock:
        for _ in range(6):
            resp = attempt(attacker, "wrong one")
            if resp.status_code == 429:
                waits.append(int(re.search(r"Try again in (\d+) seconds", text_of(resp))[1]))
                clock.shift(waits[-1])
        assert waits == [5, 10, 20, 40]
        assert attempt(attacker, PASSWORD).status_code == 302  # the wait is over: it was not a lockout


def test_a_flood_from_many_addresses_is_slowed_and_the_owner_still_gets_in(app):
    add_user(Role.EDITOR, "editor@daily.example")
    answers = []
    for n in range(30):
        bot = from_address(app, f"192.0.2.{n + 1}")
        answers.append([attempt(bot, f"guess {n}.{k}").status_code for k in range(2)])
    # Each address gets two tries at first; once the account is under attack, one.
    assert answers[0] == [401, 401] and answers[-1] == [429, 429]
    assert sum(a.count(401) for a in answers) <= 25
    owner = from_address(app, "198.51.100.7")
    assert attempt(owner, PASSWORD).status_code == 302


def test_logins_from_one_address_are_rate_limited(client):
    add_user(Role.EDITOR, "editor@daily.example")
    answers = [post_form(client, "/admin/login", email=f"guess{n}@daily.example",
                         password="wrong").status_code for n in range(11)]
    assert answers[:10] == [401] * 10 and answers[10] == 429


def test_an_editor_cannot_manage_users_and_ops_cannot_compose(app, make_email):
    editor = app.test_client()
    login(editor, Role.EDITOR, "editor@daily.example")
    forbidden = editor.get("/admin/users")
    assert forbidden.status_code == 403
    assert "Your role is editor" in text_of(forbidden) and "Back to the dashboard" in text_of(
        forbidden)
    refused = post(editor, "/admin/users", email="mole@daily.example", role="admin",
                   password=PASSWORD, password2=PASSWORD)
    assert refused.status_code == 403 and "You are not allowed" in text_of(refused)
    assert user("mole@daily.example") is None
    page = editor.get("/admin/").get_data(as_text=True)
    assert 'href="/admin/users"' not in page and 'href="/admin/issues"' in page
    assert editor.get("/admin/subscribers").status_code == 403
    assert editor.get("/admin/settings").status_code == 403

    ops = app.test_client()
    login(ops, Role.OPS, "ops@daily.example")
    assert post(ops, "/admin/issues/new").status_code == 403
    assert ops.get("/admin/subscribers").status_code == 200
    assert ops.get("/admin/users").status_code == 403
    assert 'href="/admin/users"' not in ops.get("/admin/").get_data(as_text=True)


def test_admins_add_users_change_roles_and_deactivate(app):
    admin = app.test_client()
    login(admin, Role.ADMIN, "chief@daily.example")
    listing = admin.get("/admin/users")
    assert "chief@daily.example" in text_of(listing) and "(you)" in text_of(listing)

    short = post(admin, "/admin/users", email="ed@daily.example", role="editor",
                 password="short", password2="short")
    assert short.status_code == 400 and "at least 10 characters" in text_of(short)
    assert 'value="ed@daily.example"' in short.get_data(as_text=True)
    made = post(admin, "/admin/users", email="Ed@Daily.example", role="editor",
                password=PASSWORD, password2=PASSWORD)
    assert made.status_code == 302
    assert "ed@daily.example can now log in as editor" in text_of(admin.get("/admin/users"))
    again = post(admin, "/admin/users", email="ed@daily.example", role="ops", password=PASSWORD,
                 password2=PASSWORD)
    assert again.status_code == 409 and "exists already" in text_of(again)

    ed = app.test_client()
    post_form(ed, "/admin/login", email="ed@daily.example", password=PASSWORD)
    assert ed.get("/admin/subscribers").status_code == 403
    uid = user("ed@daily.example").id
    assert post(admin, f"/admin/users/{uid}/role", role="ops").status_code == 302
    assert ed.get("/admin/subscribers").status_code == 200  # the new role applies at once

    done = post(admin, f"/admin/users/{uid}/deactivate")
    assert "is deactivated" in text_of(admin.get(done.headers["Location"]))
    assert ed.get("/admin/subscribers").status_code == 302  # logged out
    relogin = post_form(ed, "/admin/login", email="ed@daily.example", password=PASSWORD)
    assert relogin.status_code == 401
    post(admin, f"/admin/users/{uid}/activate")
    assert post_form(ed, "/admin/login", email="ed@daily.example",
                     password=PASSWORD).status_code == 302


def test_the_last_admin_stays_an_admin_and_nobody_locks_themselves_out(app):
    admin = app.test_client()
    login(admin, Role.ADMIN, "chief@daily.example")
    me = user("chief@daily.example").id
    demoted = post(admin, f"/admin/users/{me}/role", role="editor")
    assert demoted.status_code == 409 and "last active admin" in text_of(demoted)
    off = post(admin, f"/admin/users/{me}/deactivate")
    assert off.status_code == 409 and "your own account" in text_of(off)
    assert user("chief@daily.example").role == Role.ADMIN and user("chief@daily.example").active

    add_user(Role.ADMIN, "deputy@daily.example")
    deputy = user("deputy@daily.example").id
    assert post(admin, f"/admin/users/{deputy}/role", role="editor").status_code == 302
    assert user("deputy@daily.example").role == Role.EDITOR
    # With a second admin, the first may step down.
    post(admin, f"/admin/users/{deputy}/role", role="admin")
    assert post(admin, f"/admin/users/{me}/role", role="ops").status_code == 302
    assert admin.get("/admin/users").status_code == 403


def test_changing_your_password_ends_your_other_sessions(app):
    here, elsewhere = app.test_client(), app.test_client()
    login(here, Role.EDITOR, "editor@daily.example")
    post_form(elsewhere, "/admin/login", email="editor@daily.example", password=PASSWORD)
    assert elsewhere.get("/admin/").status_code == 200

    wrong = post(here, "/admin/account", current="not my password", password="brand new secret",
                 password2="brand new secret")
    assert wrong.status_code == 400 and "current password is not right" in text_of(wrong)
    differ = post(here, "/admin/account", current=PASSWORD, password="brand new secret",
                  password2="brand new secrets")
    assert differ.status_code == 400 and "differ" in text_of(differ)
    assert elsewhere.get("/admin/").status_code == 200

    done = post(here, "/admin/account", current=PASSWORD, password="brand new secret",
                password2="brand new secret")
    assert done.status_code == 302
    assert "other sessions were logged out" in text_of(here.get("/admin/account"))
    assert here.get("/admin/").status_code == 200
    gone = elsewhere.get("/admin/issues")
    assert gone.status_code == 302 and "/admin/login" in gone.headers["Location"]
    assert post_form(elsewhere, "/admin/login", email="editor@daily.example",
                     password=PASSWORD).status_code == 401
    assert post_form(elsewhere, "/admin/login", email="editor@daily.example",
                     password="brand new secret").status_code == 302


def test_an_admin_reset_logs_the_user_out_everywhere(app):
    admin, ed = app.test_client(), app.test_client()
    login(admin, Role.ADMIN, "chief@daily.example")
    login(ed, Role.EDITOR, "ed@daily.example")
    uid = user("ed@daily.example").id
    bad = post(admin, f"/admin/users/{uid}/password", password="fresh password 1",
               password2="fresh password 2")
    assert bad.status_code == 400 and "differ" in text_of(bad)
    assert ed.get("/admin/").status_code == 200
    post(admin, f"/admin/users/{uid}/password", password="fresh password 1",
         password2="fresh password 1")
    assert ed.get("/admin/").status_code == 302
    assert post_form(ed, "/admin/login", email="ed@daily.example",
                     password="fresh password 1").status_code == 302
    # Resetting your own password keeps you logged in here.
    me = user("chief@daily.example").id
    post(admin, f"/admin/users/{me}/password", password="mine is new now",
         password2="mine is new now")
    assert admin.get("/admin/users").status_code == 200
