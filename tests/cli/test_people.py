"""`mailer user` and `mailer subscribers`: ids on the last line, readable failures."""

from __future__ import annotations

import csv
import io
import json

from sqlalchemy import select

from mailer.clock import utcnow
from mailer.db import db
from mailer.models import (
    ConsentRecord,
    Newsletter,
    Role,
    Subscriber,
    SubscriberStatus,
    Subscription,
    User,
)
from mailer.services import newsletters, subscriptions, users
from tests.helpers.app import statements


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
                             "confirmed_at", "unsubscribed_at", "source", "newsletters"]
    # Pending readers receive nothing yet: their newsletters column is empty.
    assert [(r["email"], r["name"], r["status"], r["sections"], r["newsletters"])
            for r in rows] == [
        (a, "Ada, Countess", "pending", "news", ""),
        (b, "", "pending", "", ""),
    ]


def _two_newsletters():
    morning = newsletters.create(db.session, {"slug": "morning", "name": "Morning"})
    evening = newsletters.create(db.session, {"slug": "evening", "name": "Evening"})
    old = newsletters.create(db.session, {"slug": "old", "name": "Old"})
    old.archived_at = utcnow()
    db.session.commit()
    return morning, evening


def _subscribed(email: str) -> dict[str, str]:
    db.session.expire_all()
    return {
        slug: status.value
        for slug, status in db.session.execute(
            select(Newsletter.slug, Subscription.status)
            .join(Subscription, Subscription.newsletter_id == Newsletter.id)
            .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
            .where(Subscriber.email == email)
        )
    }


def test_import_subscribes_to_the_option_or_the_rows_own_newsletters(runner, tmp_path, make_email):
    _two_newsletters()
    first = newsletters.first(db.session).slug
    a, b, c, d, e = (make_email() for _ in range(5))
    path = tmp_path / "list.csv"
    path.write_text(
        "email,name,newsletters\n"
        f"{a},Ada,evening;Morning\n"
        f"{b},Bo,\n"
        f"{c},Cy,morning;nosuch\n"
        f"{d},Di,old\n"
        f"{e},Ed, evening \n",
        newline="",
    )
    result = runner.invoke(["subscribers", "import", str(path), "--source", "fair",
                            "--newsletter", "morning", "--newsletter", first])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == (
        "added 3, already present 0, suppressed 0, invalid 2"
    )
    assert "line 4: No newsletter 'nosuch'." in result.stderr
    assert "line 5: The newsletter 'old' is archived." in result.stderr
    # The row's column wins; an empty one takes the option's newsletters.
    assert _subscribed(a) == {"evening": "active", "morning": "active"}
    assert _subscribed(b) == {"morning": "active", first: "active"}
    assert _subscribed(e) == {"evening": "active"}
    # A bad row is not half-written: neither the person nor any subscription.
    for bad in (c, d):
        assert db.session.scalar(select(Subscriber).where(Subscriber.email == bad)) is None


def test_import_without_newsletters_takes_the_signup_defaults(runner, tmp_path, make_email):
    _two_newsletters()
    defaults = {n.slug for n in newsletters.signup_defaults(db.session)}
    a = make_email()
    path = tmp_path / "list.csv"
    path.write_text(f"email\n{a}\n")
    result = runner.invoke(["subscribers", "import", str(path), "--source", "fair"])
    assert result.exit_code == 0, result.output
    assert _subscribed(a) == dict.fromkeys(defaults, "active")


def test_import_refuses_an_unknown_or_archived_newsletter_option_before_importing(
    runner, tmp_path, make_email
):
    _two_newsletters()
    a = make_email()
    path = tmp_path / "list.csv"
    path.write_text(f"email\n{a}\n")
    for slug, reason in (("nosuch", "no newsletter 'nosuch'"), ("old", "'old' is archived")):
        result = runner.invoke(["subscribers", "import", str(path), "--source", "fair",
                                "--newsletter", "morning", "--newsletter", slug])
        assert result.exit_code == 1
        assert reason in result.stderr and "Traceback" not in result.output
        assert db.session.scalar(select(Subscriber).where(Subscriber.email == a)) is None


def _import(runner, tmp_path, rows: str) -> None:
    """Import these CSV rows with a consent source, as ops would; it must succeed."""
    path = tmp_path / "list.csv"
    path.write_text(rows)
    assert runner.invoke(["subscribers", "import", str(path), "--source", "fair"]).exit_code == 0


def test_export_lists_the_newsletters_a_reader_receives(runner, tmp_path, make_email,
                                                        monkeypatch):
    # One reader a batch: each batch fetches its own readers' newsletters.
    monkeypatch.setattr(subscriptions, "EXPORT_BATCH", 1)
    _two_newsletters()
    a, b = make_email(), make_email()
    _import(runner, tmp_path, f"email,newsletters\n{a},evening;morning\n{b},evening;morning\n")
    reader = db.session.scalar(select(Subscriber).where(Subscriber.email == a))
    morning = newsletters.by_slug(db.session, "morning")
    subscriptions.unsubscribe(db.session, reader.uid, "test", newsletter_id=morning.id)
    db.session.commit()
    result = runner.invoke(["subscribers", "export"])
    assert result.exit_code == 0, result.output
    got = {r["email"]: (r["status"], r["newsletters"])
           for r in csv.DictReader(io.StringIO(result.stdout))}
    # Oldest newsletter first; one the reader left is not listed.
    assert got[a] == ("active", "evening")
    assert got[b] == ("active", "morning;evening")


def test_export_reads_a_batch_of_readers_and_their_newsletters_in_one_query(
        runner, tmp_path, make_email, monkeypatch):
    monkeypatch.setattr(subscriptions, "EXPORT_BATCH", 2)
    _two_newsletters()
    emails = [make_email() for _ in range(5)]
    _import(runner, tmp_path,
            "email,newsletters\n" + "".join(f"{e},morning;evening\n" for e in emails))
    with statements(db.engine) as ran:
        result = runner.invoke(["subscribers", "export"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["email"], r["newsletters"]) for r in rows] == [
        (e, "morning;evening") for e in emails
    ]
    # Five readers, two a batch: three batches and the empty one that ends the export, each
    # one query (not one more per batch for the newsletters).
    assert len([s for s in ran if "FROM subscribers" in s]) == 4
    assert len(ran) == 4


def test_show_lists_the_readers_newsletters(runner, tmp_path, make_email):
    _two_newsletters()
    a = make_email()
    _import(runner, tmp_path,
            f"email,frequency,sections,newsletters\n{a},daily,news,morning;evening\n")
    reader = db.session.scalar(select(Subscriber).where(Subscriber.email == a))
    evening = newsletters.by_slug(db.session, "evening")
    subscriptions.unsubscribe(db.session, reader.uid, "test", newsletter_id=evening.id)
    db.session.commit()
    result = runner.invoke(["subscribers", "show", a, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["status"] == "active"
    by_slug = {n["slug"]: n for n in doc["newsletters"]}
    assert list(by_slug) == ["morning", "evening"]
    morning = by_slug["morning"]
    assert (morning["name"], morning["status"], morning["frequency"], morning["sections"]) == (
        "Morning", "active", "daily", ["news"]
    )
    assert morning["confirmed_at"] and morning["unsubscribed_at"] is None
    assert by_slug["evening"]["status"] == "unsubscribed"
    assert by_slug["evening"]["unsubscribed_at"]
    plain = runner.invoke(["subscribers", "show", a])
    assert plain.exit_code == 0
    assert "newsletter morning (Morning): active, daily, sections news" in plain.stdout
    assert "newsletter evening (Evening): unsubscribed" in plain.stdout


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
