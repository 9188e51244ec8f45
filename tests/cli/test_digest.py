"""`mailer digest`: create, preview, test-send, list; the editor's whole path on real feeds."""

from __future__ import annotations

import email
import email.policy
import json
from datetime import UTC, datetime

import time_machine
from sqlalchemy import func, select

from mailer.db import db
from mailer.mail import placeholders as ph
from mailer.models import Click, Issue, IssueStatus
from tests.helpers.digests import BROWSER_UA, add_article, mark_sent
from tests.helpers.feeds import FEEDS

MONDAY = datetime(2017, 11, 9, 12, 0, tzinfo=UTC)
INSTAGRAM = "Instagram hits 400 million users"
DESCENT = "Hands-on: Garmin’s New Descent MK1 Diving Watch"


def _id(result) -> int:
    assert result.exit_code == 0, result.output
    return int(result.stdout.strip().splitlines()[-1])


def _view(client, url: str, ip: str) -> None:
    """One reader's page view, through the site's beacon."""
    resp = client.post(
        "/api/v1/pageviews",
        json={"url": url},
        headers={"User-Agent": BROWSER_UA},
        environ_base={"REMOTE_ADDR": ip},
    )
    assert resp.status_code == 204


def test_an_editor_composes_previews_test_sends_and_finds_it_in_the_archive(app, runner, smtp):
    client = app.test_client()
    with time_machine.travel(MONDAY, tick=False):
        for feed in ("dcrainmaker.xml", "manton.rss"):
            assert runner.invoke(["articles", "sync", str(FEEDS / feed)]).exit_code == 0
        # Readers on the site: an old post is this week's most read.
        articles = {
            a["title"]: a for a in json.loads(runner.invoke(["articles", "list", "--json"]).stdout)
        }
        for n in range(5):
            _view(client, articles[INSTAGRAM]["url"], f"10.0.0.{n}")
        for n in range(2):
            _view(client, articles[DESCENT]["url"], f"10.0.1.{n}")
        created = runner.invoke(
            [
                "digest",
                "create",
                "--latest",
                "4",
                "--popular",
                "2",
                "--intro",
                "Good morning, {{ name }}! Here is the week.",
            ]
        )
    issue_id = _id(created)
    out = created.stdout
    assert f"Issue {issue_id} (draft)" in out
    assert "Latest: 4" in out and "Most popular: 2" in out
    assert INSTAGRAM in out and DESCENT in out

    # As a reader would get it: the HTML, the text, and the whole message.
    html = runner.invoke(["digest", "preview", str(issue_id)]).stdout
    text = runner.invoke(["digest", "preview", str(issue_id), "--text"]).stdout
    assert "Huge Fall Sale" in html and "Good morning, Reader!" in html
    assert "MOST POPULAR" in text and INSTAGRAM in text and ph.PREFIX not in html + text
    eml = runner.invoke(["digest", "preview", str(issue_id), "--eml"])
    msg = email.message_from_bytes(eml.stdout_bytes, policy=email.policy.strict)
    assert msg["To"].addresses[0].addr_spec == "reader@example.com" and msg["Subject"].startswith("The Daily Test: ")
    assert msg.get_body(("plain",)) and msg.get_body(("html",))

    sent = runner.invoke(
        [
            "digest",
            "test-send",
            str(issue_id),
            "--to",
            "Editor@Daily.example",
            "--to",
            "chief@daily.example",
        ]
    )
    assert sent.exit_code == 0, sent.output
    assert sent.stdout.splitlines() == [
        "sent to chief@daily.example",
        "sent to editor@daily.example",
    ]
    (mail,) = smtp.wait_for("editor@daily.example")
    assert mail.message["Subject"] == f"[Test] {msg['Subject']}"
    assert "Good morning, Reader!" in mail.text and INSTAGRAM in mail.html
    # Tracked like a reader's copy, but counted for nobody: the click leads to the article.
    targets = set()
    for link in [u for u in mail.links() if "/t/" in u]:
        resp = client.get("/" + link.split("/", 3)[3], headers={"User-Agent": BROWSER_UA})
        assert resp.status_code == 302
        targets.add(resp.headers["Location"])
    assert articles[INSTAGRAM]["url"] in targets
    assert db.session.scalar(select(func.count()).select_from(Click)) == 0

    # Sent (by the delivery engine; here left as it leaves an issue), it is in the archive.
    issue = db.session.get(Issue, issue_id)
    mark_sent(db.session, issue, MONDAY)
    db.session.commit()
    index = client.get("/archive").get_data(as_text=True)
    assert msg["Subject"].replace("&", "&amp;") in index
    page = client.get(f"/archive/{issue_id}").get_data(as_text=True)
    assert "Most popular" in page and INSTAGRAM in page and "Good morning, Reader!" in page


def test_create_json_skip_and_list(runner):
    now = datetime.now(UTC)
    add_article(db.session, "Fresh & new", now.replace(microsecond=0))
    db.session.commit()
    made = runner.invoke(["digest", "create", "--popular", "0", "--json"])
    assert made.exit_code == 0, made.output
    data = json.loads(made.stdout)
    assert data["status"] == "draft" and [i["title"] for i in data["items"]] == ["Fresh & new"]

    skipped = runner.invoke(
        ["digest", "create", "--popular", "0", "--frequency", "daily", "--min-items", "2"]
    )
    skipped_id = _id(skipped)
    assert f"issue {skipped_id} skipped: Only 1 new article(s)" in skipped.stderr
    assert db.session.get(Issue, skipped_id).status == IssueStatus.SKIPPED

    listed = json.loads(runner.invoke(["digest", "list", "--json"]).stdout)
    assert [(r["id"], r["status"]) for r in listed] == [
        (skipped_id, "skipped"),
        (data["id"], "draft"),
    ]
    table = runner.invoke(["digest", "list", "--status", "draft"]).stdout.splitlines()
    assert table[0].split() == ["ID", "STATUS", "NEWSLETTER", "CREATED", "ITEMS", "SUBJECT"]
    assert len(table) == 2 and table[1].split()[:3] == [str(data["id"]), "draft",
                                                         data["newsletter"]]
    shown = json.loads(runner.invoke(["digest", "show", str(data["id"]), "--json"]).stdout)
    assert shown["id"] == data["id"] and shown["subject"] == "{{ list_name }}: {{ top_story }}"


def test_an_empty_list_says_how_to_start(runner):
    result = runner.invoke(["digest", "list"])
    assert result.exit_code == 0 and "mailer digest create" in result.stdout
    assert json.loads(runner.invoke(["digest", "list", "--json"]).stdout) == []


def test_mistakes_exit_1_with_one_line_and_change_nothing(runner, smtp):
    add_article(db.session, "Story", datetime.now(UTC))
    db.session.commit()
    issue_id = _id(runner.invoke(["digest", "create", "--popular", "0"]))
    cases = [
        (["digest", "preview", "999999"], "There is no issue 999999"),
        (["digest", "preview", str(issue_id), "--sections", "weather"], "Unknown section 'weather'"),
        (["digest", "preview", str(issue_id), "--sections", "sport"], "would get no articles"),
        (["digest", "create", "--sections", "weather"], "Unknown section 'weather'"),
        (["digest", "create", "--intro", "{{ ''.__class__ }}"], "intro is not allowed"),
        (["digest", "create", "--subject", "{{ oops"], "subject has a template error"),
        (["digest", "test-send", str(issue_id), "--to", "not an address"], "does not look like"),
        (["digest", "test-send", "999999", "--to", "a@daily.example"], "There is no issue 999999"),
    ]
    for args, reason in cases:
        result = runner.invoke(args)
        assert result.exit_code == 1, (args, result.output)
        assert reason in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert db.session.scalars(select(Issue.id)).all() == [issue_id]
    assert runner.invoke(["digest", "preview", str(issue_id), "--html", "--text"]).exit_code == 0

    smtp.rules["refused"] = "550 no such user"
    refused = runner.invoke(
        [
            "digest",
            "test-send",
            str(issue_id),
            "--to",
            "refused@daily.example",
            "--to",
            "fine@daily.example",
        ]
    )
    assert refused.exit_code == 1
    assert "not sent to refused@daily.example: 550 no such user" in refused.stderr
    assert "1 of 2 test messages were not sent" in refused.stderr
    assert smtp.wait_for("fine@daily.example")
    # A usage error is exit 2.
    assert runner.invoke(["digest", "test-send", str(issue_id)]).exit_code == 2


def test_every_digest_command_has_help(runner):
    for command in ("create", "show", "preview", "test-send", "list"):
        result = runner.invoke(["digest", command, "--help"])
        assert result.exit_code == 0 and f"digest {command} [OPTIONS]" in result.stdout
        summary = result.stdout.split("\n\n")[1].strip()
        assert len(summary) > 20 and "Options:" in result.stdout


def test_an_issue_belongs_to_the_newsletter_named(app, runner):
    from mailer.clock import utcnow
    from mailer.models import Newsletter

    db.session.add(Newsletter(slug="sport", name="The Sport Letter", latest_n=2))
    db.session.add(Newsletter(slug="gone", name="Gone", archived_at=utcnow()))
    add_article(db.session, "Cup final tonight", utcnow())
    db.session.commit()
    made = runner.invoke(["digest", "create", "--newsletter", "sport", "--json"])
    assert made.exit_code == 0, made.output
    data = json.loads(made.stdout)
    assert data["newsletter"] == "sport" and data["latest_n"] == 2
    assert data["subject"] == "{{ list_name }}: {{ top_story }}"
    shown = runner.invoke(["digest", "show", str(data["id"])]).stdout
    assert "newsletter sport, for weekly readers" in shown
    assert runner.invoke(["digest", "create", "--min-items", "0"]).exit_code == 0
    listed = json.loads(runner.invoke(["digest", "list", "--newsletter", "sport",
                                       "--json"]).stdout)
    assert [r["id"] for r in listed] == [data["id"]]

    archived = runner.invoke(["digest", "create", "--newsletter", "gone"])
    assert archived.exit_code == 1 and "is archived" in archived.stderr
    unknown = runner.invoke(["digest", "create", "--newsletter", "nope"])
    assert unknown.exit_code == 1 and "No newsletter 'nope'" in unknown.stderr
    assert db.session.scalar(select(func.count()).select_from(Issue)) == 2
