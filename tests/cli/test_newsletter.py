"""`mailer newsletter`: add (the id on the last line), list and show (with readers), set,
remove (refused with the way to archive once it was sent from); bad input exits 1 with one
line, usage mistakes 2."""

from __future__ import annotations

import json

import pytest

from mailer.clock import utcnow
from mailer.db import db
from mailer.models import (
    Issue,
    IssueStatus,
    Newsletter,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
)

# These tests make every newsletter they use, the first one too.
pytestmark = pytest.mark.usefixtures("no_newsletters")


def _ok(runner, *args):
    result = runner.invoke(list(args))
    assert result.exit_code == 0, result.output
    return result


def _refused(result, code=1) -> str:
    assert result.exit_code == code, result.output
    assert result.stdout == "" and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    if code == 1:
        assert len(lines) == 1, lines
    return result.stderr


def test_add_list_show_set(runner):
    added = _ok(runner, "newsletter", "add", "--slug", "morning", "--name", "Morning Briefing",
                "--from", "Morning Desk <desk@daily.example>", "--reply-to",
                "letters@daily.example", "--description", "Five stories before breakfast.",
                "--signup-default", "--latest", "6", "--popular", "2", "--min-items", "3",
                "--sections", "news,sport")
    morning_id = int(added.stdout.splitlines()[-1])
    hidden = _ok(runner, "newsletter", "add", "--slug", "insiders", "--name", "Insiders",
                 "--hidden")
    insiders_id = int(hidden.stdout.splitlines()[-1])
    assert db.session.get(Newsletter, insiders_id).public is False

    sub = Subscriber(email="reader@example.com", status=SubscriberStatus.ACTIVE)
    db.session.add(sub)
    db.session.flush()
    db.session.add(Subscription(subscriber_id=sub.id, newsletter_id=morning_id,
                                status=SubscriptionStatus.ACTIVE))
    db.session.commit()

    listed = json.loads(_ok(runner, "newsletter", "list", "--json").stdout)["newsletters"]
    by_slug = {n["slug"]: n for n in listed}
    assert by_slug["morning"]["id"] == morning_id
    assert by_slug["morning"]["readers"] == {"active": 1, "pending": 0, "unsubscribed": 0,
                                             "suppressed": 0}
    assert (by_slug["morning"]["from"], by_slug["morning"]["sections"],
            by_slug["morning"]["latest_n"], by_slug["morning"]["signup_default"]) == (
        "Morning Desk <desk@daily.example>", ["news", "sport"], 6, True)
    assert by_slug["insiders"]["public"] is False
    text = _ok(runner, "newsletter", "list").stdout
    assert "morning" in text and "1 active, 0 pending" in text and "[hidden]" in text

    shown = _ok(runner, "newsletter", "show", "morning").stdout
    assert "From:           Morning Desk <desk@daily.example>" in shown
    # Without its own List-Id, the one derived from the slug and MAILER_FROM's domain.
    assert "List-Id:        morning.daily.example  (derived)" in shown
    assert json.loads(_ok(runner, "newsletter", "show", "insiders", "--json").stdout)[
        "readers"]["active"] == 0

    _ok(runner, "newsletter", "set", "insiders", "--public", "--name", "Insiders Weekly",
        "--list-id", "insiders.daily.example")
    _ok(runner, "newsletter", "set", "morning", "--archive", "--from", "")
    db.session.expire_all()
    insiders, morning = db.session.get(Newsletter, insiders_id), db.session.get(
        Newsletter, morning_id)
    assert (insiders.public, insiders.name, insiders.list_id) == (
        True, "Insiders Weekly", "insiders.daily.example")
    assert morning.archived_at is not None and morning.from_address is None
    assert morning.latest_n == 6  # not given: unchanged
    assert "archived" in _ok(runner, "newsletter", "list").stdout
    _ok(runner, "newsletter", "set", "morning", "--unarchive")
    db.session.expire_all()
    assert db.session.get(Newsletter, morning_id).archived_at is None


def test_bad_input_exits_1_with_one_line(runner):
    _ok(runner, "newsletter", "add", "--slug", "morning", "--name", "Morning")
    for args, says in [
        (["add", "--slug", "Morning!", "--name", "M"], "slug"),
        (["add", "--slug", "morning", "--name", "Again"], "already a newsletter 'morning'"),
        (["add", "--slug", "evening", "--name", "E", "--from", "nobody"], "Name <address>"),
        (["add", "--slug", "evening", "--name", "E", "--sections", "weather"], "weather"),
        (["add", "--slug", "evening", "--name", "E", "--latest", "500"], "between 0 and 100"),
        (["set", "nosuch", "--name", "X"], "No newsletter 'nosuch'"),
        (["set", "morning", "--reply-to", "not-an-address"], "Reply-To"),
        (["show", "nosuch"], "No newsletter"),
        (["remove", "nosuch"], "No newsletter"),
    ]:
        err = _refused(runner.invoke(["newsletter", *args]))
        assert says in err, (args, err)
    assert [n.slug for n in db.session.query(Newsletter)] == ["morning"]
    # Usage mistakes: exit 2.
    _refused(runner.invoke(["newsletter", "add", "--slug", "evening"]), 2)
    _refused(runner.invoke(["newsletter", "set", "morning"]), 2)


def test_remove_only_what_was_never_sent_from(runner):
    _ok(runner, "newsletter", "add", "--slug", "morning", "--name", "Morning")
    sent_id = int(_ok(runner, "newsletter", "add", "--slug", "evening", "--name",
                      "Evening").stdout.splitlines()[-1])
    _ok(runner, "newsletter", "add", "--slug", "mistake", "--name", "Mistake")
    db.session.add(Issue(subject="Out", newsletter_id=sent_id, status=IssueStatus.FINISHED,
                         started_at=utcnow()))
    db.session.commit()

    err = _refused(runner.invoke(["newsletter", "remove", "evening"]))
    assert "was sent from (1 issue)" in err
    assert "mailer newsletter set evening --archive" in err
    assert "Removed newsletter 'mistake'" in _ok(runner, "newsletter", "remove",
                                                 "mistake").stdout
    db.session.expire_all()
    assert sorted(n.slug for n in db.session.query(Newsletter)) == ["evening", "morning"]


def test_remove_deletes_the_logo_file_no_other_look_shows(app, runner):
    from mailer.services import looks
    from tests.services.test_looks import png

    settings = app.extensions["mailer"].settings
    logo = looks.store_logo(settings, png(48, 28, "#654321"), "brand.png")
    for slug in ("morning", "mistake", "again"):
        _ok(runner, "newsletter", "add", "--slug", slug, "--name", slug.title())
    for found in db.session.query(Newsletter).filter(Newsletter.slug != "morning"):
        found.logo_file = logo
    db.session.commit()
    path = looks.logo_dir(settings) / logo
    _ok(runner, "newsletter", "remove", "mistake")
    assert path.is_file()  # `again` still shows it
    _ok(runner, "newsletter", "remove", "again")
    assert not path.exists()
