"""`mailer user` and `mailer subscribers`: ids on the last line, readable failures."""

from __future__ import annotations

import csv
import io

from sqlalchemy import select

from mailer.db import db
from mailer.models import ConsentRecord, Role, Subscriber, SubscriberStatus, User
from mailer.services import users


def test_user_add_reads_the_password_from_stdin(runner):
    result = runner.invoke(
        ["user", "add", "Editor@Daily.example", "--role", "editor", "--password-stdin"],
        input="correct horse battery\n",
    )
    assert result.exit_code == 0, result.output
    user_id = int(result.stdout.strip().splitlines()[-1])
    user = db.session.get(User, user_id)
    assert (user.email, user.role) == ("editor@daily.example", Role.EDITOR)
    assert "correct horse" not in user.password_hash and user.password_hash.startswith("$argon2")
    assert users.authenticate(db.session, "editor@daily.example", "correct horse battery").id == user_id


def test_user_add_refuses_short_passwords_and_duplicates(runner):
    short = runner.invoke(["user", "add", "a@daily.example", "--role", "ops", "--password-stdin"],
                          input="short\n")
    assert short.exit_code == 1 and "at least 10 characters" in short.stderr
    ok = ["user", "add", "a@daily.example", "--role", "ops", "--password-stdin"]
    assert runner.invoke(ok, input="long enough pw\n").exit_code == 0
    again = runner.invoke(ok, input="long enough pw\n")
    assert again.exit_code == 1 and "exists already" in again.stderr
    assert db.session.scalar(select(User).where(User.email == "a@daily.example")).role == Role.OPS


def test_user_token_is_shown_once_and_works(runner):
    runner.invoke(["user", "add", "ops@daily.example", "--role", "ops", "--password-stdin"],
                  input="long enough pw\n")
    result = runner.invoke(["user", "token", "ops@daily.example", "--name", "cms"])
    token = result.stdout.strip().splitlines()[-1]
    assert result.exit_code == 0 and token.startswith("mlr_")
    assert users.user_for_token(db.session, token).email == "ops@daily.example"
    assert users.user_for_token(db.session, token + "x") is None
    missing = runner.invoke(["user", "token", "nobody@daily.example"])
    assert missing.exit_code == 1 and "no user" in missing.stderr


def test_import_adds_consented_readers_and_reports_problems(runner, tmp_path, make_email):
    a, b, c = make_email(), make_email(), make_email()
    path = tmp_path / "list.csv"
    path.write_text(
        "email,name,frequency,sections\n"
        f"{a},Ada,daily,news;sport\n"
        f"{b.upper()},,weekly,\n"
        "not-an-address,Eve,,\n"
        f'{c},"Bad\r\nBcc: x@example.com",daily,\n'
        f"{a},Ada again,,\n",
        newline="",
    )
    result = runner.invoke(["subscribers", "import", str(path), "--source", "print edition form"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == (
        "added 2, already present 1, suppressed 0, invalid 2"
    )
    assert "line 4:" in result.stderr and "line 5:" in result.stderr
    ada = db.session.scalar(select(Subscriber).where(Subscriber.email == a))
    assert (ada.status, ada.frequency.value, ada.section_list) == (
        SubscriberStatus.ACTIVE, "daily", ["news", "sport"]
    )
    consent = db.session.scalar(select(ConsentRecord).where(ConsentRecord.subscriber_id == ada.id))
    assert consent.kind == "import" and "print edition form" in consent.source
    # Importing again changes nothing.
    again = runner.invoke(["subscribers", "import", str(path), "--source", "print edition form"])
    assert "added 0, already present 3" in again.stdout


def test_import_needs_an_email_column_and_a_source(runner, tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("mail,name\nx@example.com,X\n")
    result = runner.invoke(["subscribers", "import", str(path), "--source", "x"])
    assert result.exit_code == 1 and "'email' column" in result.stderr
    missing = runner.invoke(["subscribers", "import", str(path)])
    assert missing.exit_code == 2


def test_export_writes_a_header_row_and_every_reader(runner, client, make_email):
    a, b = make_email(), make_email()
    client.post("/api/v1/subscribe", json={"email": a, "name": "Ada, Countess", "sections": ["news"]})
    client.post("/api/v1/subscribe", json={"email": b})
    result = runner.invoke(["subscribers", "export"])
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["email", "name", "status", "frequency", "sections", "created_at",
                             "confirmed_at", "unsubscribed_at", "source"]
    assert [(r["email"], r["name"], r["status"], r["sections"]) for r in rows] == [
        (a, "Ada, Countess", "pending", "news"),
        (b, "", "pending", ""),
    ]


def test_user_reset_password_ends_their_sessions_and_unlock_lifts_the_waits(app, runner):
    from tests.helpers.console import PASSWORD, add_user
    from tests.helpers.web import post_form

    add_user(Role.ADMIN, "chief@daily.example")
    browser = app.test_client()
    assert post_form(browser, "/admin/login", email="chief@daily.example",
                     password=PASSWORD).status_code == 302
    assert browser.get("/admin/").status_code == 200

    reset = runner.invoke(["user", "reset-password", "Chief@Daily.example", "--password-stdin"],
                          input="a brand new password\n")
    assert reset.exit_code == 0, reset.output
    assert browser.get("/admin/").status_code == 302, "the old session ended"
    db.session.expire_all()
    assert users.authenticate(db.session, "chief@daily.example", "a brand new password")

    held = app.test_client()
    held.environ_base["REMOTE_ADDR"] = "203.0.113.9"
    codes = [post_form(held, "/admin/login", email="chief@daily.example",
                       password="wrong").status_code for _ in range(3)]
    assert codes == [401, 401, 429]
    unlock = runner.invoke(["user", "unlock", "chief@daily.example"])
    assert unlock.exit_code == 0 and "1 address" in unlock.stderr
    assert post_form(held, "/admin/login", email="chief@daily.example",
                     password="a brand new password").status_code == 302

    for args in (["user", "unlock", "nobody@daily.example"],
                 ["user", "reset-password", "nobody@daily.example", "--password-stdin"]):
        missing = runner.invoke(args, input="a brand new password\n")
        assert missing.exit_code == 1 and "no user" in missing.stderr.lower()
    short = runner.invoke(["user", "reset-password", "chief@daily.example", "--password-stdin"],
                          input="short\n")
    assert short.exit_code == 1 and "at least 10 characters" in short.stderr
