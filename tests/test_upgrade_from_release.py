"""A database made by a previous release's own code upgrades with every row and link intact.

Each release (v0.1.0, and the last one before newsletters) is taken from this repository's
history, run from a scratch folder with its own worker process
(tests/helpers/release_seed.py), and then the current code upgrades the database: `mailer db
upgrade` in production, by itself on start in the embedded mode. The upgraded database has
one newsletter, named after MAILER_FROM's display name, that every reader, issue and
schedule belongs to.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
from email.utils import parseaddr
from html.parser import HTMLParser

import pytest
from sqlalchemy import create_engine, func, inspect, select, table, text

from mailer import create_app
from mailer.config import load_settings
from mailer.migrate import head_revision
from tests.helpers.schema import assert_signup_writes_saved
from tests.helpers.servers import ROOT, PgDatabase

# The releases whose databases must upgrade, by commit (so that a checkout without tags
# still finds them): v0.1.0, the first; and the last commit before newsletters, whose
# database has one list that becomes the first newsletter.
RELEASES = {
    "v0.1.0": "ae1ce1439b5cda3e646dc2aa6028482e475e49f7",
    "before-newsletters": "83ef013baf6637543324c35a3ce0365db62d9bef",
}


@pytest.fixture(scope="session", params=list(RELEASES))
def release_tree(request, tmp_path_factory):
    """A previous release's source tree, from git history."""
    release = RELEASES[request.param]
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", release],
        capture_output=True,
    )
    if archive.returncode != 0:
        raise RuntimeError(
            f"release {release[:12]} is not in this checkout's history (a shallow clone?): "
            + archive.stderr.decode(errors="replace")
        )
    folder = tmp_path_factory.mktemp("release")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    return folder


@pytest.fixture
def old_database(db_kind, tmp_path):
    if db_kind == "postgres":
        database = PgDatabase().create()
        yield database.url
        database.drop()
    else:
        yield f"sqlite:///{tmp_path / 'release.sqlite'}"


class _Text(HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts, self._skip = [], 0

    def handle_starttag(self, tag, attrs):
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag):
        self._skip -= tag in ("script", "style") and self._skip > 0

    def handle_data(self, data):
        if not self._skip and data.strip():
            self.parts.append(" ".join(data.split()))


def visible_text(html: str) -> list[str]:
    parser = _Text()
    parser.feed(html)
    return parser.parts


# A dateline ("· 6 December 2026") or a bare host name ("daily.example").
PAGE_LABEL = re.compile(r"(· )?\d{1,2} \w+ \d{4}( ·)?|[\w-]+(\.[\w-]+)+")


def is_subsequence(parts: list[str], within: list[str]) -> bool:
    rest = iter(within)
    return all(any(p == q for q in rest) for p in parts)


def article_links(html: str) -> list[str]:
    """The addresses the issue's articles lead to (the page's own links are relative), in
    order, each once."""
    seen: list[str] = []
    for href in re.findall(r'href="([^"]+)"', html):
        if href.startswith("http") and href not in seen:
            seen.append(href)
    return seen


def _path(url: str) -> str:
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


def _csrf(page) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)


@pytest.mark.slow
def test_a_release_database_upgrades_with_its_data_and_links(
    env, db_kind, release_tree, old_database, tmp_path, request
):
    instance = tmp_path / "instance"
    old_env = {
        **env,
        "MAILER_DATABASE_URL": old_database,
        "MAILER_INSTANCE_PATH": str(instance),
        "PYTHONPATH": str(release_tree),
    }
    if db_kind == "postgres":
        old_env["MAILER_REDIS_URL"] = env["MAILER_REDIS_URL"].rsplit("/", 1)[0] + "/13"
    out = tmp_path / "release.json"
    seeded = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "helpers" / "release_seed.py"), str(out)],
        env=old_env, cwd=release_tree, capture_output=True, text=True, timeout=240,
    )
    assert seeded.returncode == 0, seeded.stdout[-3000:] + seeded.stderr[-5000:]
    before = json.loads(out.read_text())
    assert before["readers"]["reader0@example.com"] == "active"
    assert before["readers"]["pending@example.com"] == "pending"
    assert before["readers"]["gone@example.com"] == "bounced"
    assert before["readers"]["leaver@example.com"] == "unsubscribed"
    assert before["issues"][str(before["sent"])] == "finished"
    # Complaints came after v0.1.0: the later release's database has a complained reader.
    assert before["complaints"] == (request.node.callspec.params["release_tree"] != "v0.1.0")
    if before["complaints"]:
        assert before["readers"]["reader2@example.com"] == "complained"

    # The site had set its own digest sizes; composing now takes them from the newsletter.
    new_env = {**old_env, "PYTHONPATH": str(ROOT), "MAILER_DIGEST_LATEST": "7",
               "MAILER_DIGEST_POPULAR": "3", "MAILER_DIGEST_MIN_ITEMS": "2"}
    if db_kind == "postgres":
        upgraded = subprocess.run(
            [sys.executable, "-m", "mailer.cli", "db", "upgrade"],
            env=new_env, cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
        assert upgraded.returncode == 0, upgraded.stderr
        newer = head_revision() != before["revision"]
        assert ("migrated to the newest schema" if newer else "up to date") in upgraded.stdout
    # The embedded mode upgrades by itself when it starts.
    upgraded_app = create_app(load_settings(new_env))
    from mailer.db import db

    engine = create_engine(old_database)
    try:
        with engine.connect() as conn:
            revision = conn.scalar(text("SELECT version_num FROM alembic_version"))
            assert revision == head_revision()
            for name, count in before["counts"].items():
                assert conn.scalar(select(func.count()).select_from(table(name))) == count, name
            readers = dict(conn.execute(text("SELECT email, status FROM subscribers")).all())
            issues = {
                str(k): v for k, v in conn.execute(text("SELECT id, status FROM issues")).all()
            }
            first = conn.execute(text(
                "SELECT id, name, list_id, latest_n, popular_m, min_items FROM newsletters"
            )).all()
            # One newsletter, named after MAILER_FROM's display name, with the List-Id the
            # mail already carried and the site's digest sizes; every issue, schedule and
            # reader belongs to it.
            assert [tuple(row[1:]) for row in first] == [
                (parseaddr(env["MAILER_FROM"])[0], "newsletter.daily.example", 7, 3, 2)]
            nid = first[0][0]
            for owned in ("issues", "schedules"):
                assert conn.scalar(text(
                    f"SELECT count(*) FROM {owned} WHERE newsletter_id IS NULL "
                    "OR newsletter_id <> :n"), {"n": nid}) == 0, owned
            subscriptions = dict(conn.execute(text(
                "SELECT s.email, sub.status FROM subscriptions sub"
                " JOIN subscribers s ON s.id = sub.subscriber_id WHERE sub.newsletter_id = :n"
            ), {"n": nid}).all())
        assert readers == before["readers"]
        assert issues == before["issues"]
        # Each reader's standing moved to their subscription; bounced and complained stay
        # so as persons, with the subscription they had.
        assert subscriptions == {
            email: {"unsubscribed": "unsubscribed", "pending": "pending"}.get(status, "active")
            for email, status in before["readers"].items()}
        # The index the webhook history's retention looks old events up by (0014).
        assert "ix_hook_events_created_at" in {
            i["name"] for i in inspect(engine).get_indexes("hook_events")}
        # Less written per signup (0016).
        with engine.connect() as conn:
            assert_signup_writes_saved(conn)
    finally:
        engine.dispose()

    # The upgraded database's newsletter as the operator sees it.
    listed = subprocess.run(
        [sys.executable, "-m", "mailer.cli", "newsletter", "list", "--json"],
        env=new_env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    (newsletter,) = json.loads(listed.stdout)["newsletters"]
    people = list(before["readers"].values())
    assert newsletter["readers"] == {
        "active": people.count("active"), "pending": people.count("pending"),
        "unsubscribed": people.count("unsubscribed"),
        "suppressed": people.count("bounced") + people.count("complained")}
    assert newsletter["public"] and newsletter["signup_default"]

    client = upgraded_app.test_client()
    links = before["links"]
    assert before["archive_html"] == before["archives"][str(before["sent"])]
    assert len(article_links(before["archive_html"])) == 6
    for issue_id, then_html in before["archives"].items():
        page = client.get(f"/archive/{issue_id}")
        assert page.status_code == 200, issue_id
        # The issue reads the same: its text in the same order and its links to the same
        # places. Only the page around it may have changed (the dateline and the per-article
        # host label are written differently since the web version follows the mail's layout).
        now_html = page.get_data(as_text=True)
        content = [p for p in visible_text(then_html) if not PAGE_LABEL.fullmatch(p)]
        assert is_subsequence(content, visible_text(now_html)), (content, visible_text(now_html))
        assert article_links(now_html) == article_links(then_html), issue_id

    # Links in mail already sent still work.
    answer = client.get(_path(links["click"]))
    assert answer.status_code == 302 and answer.headers["Location"] in before["articles"]
    page = client.get(_path(links["preferences"]))
    assert page.status_code == 200 and "reader1@example.com" in page.get_data(as_text=True)
    page = client.get(_path(links["unsubscribe"]))
    assert page.status_code == 200 and "List-Unsubscribe" in page.get_data(as_text=True)
    answer = client.post(_path(links["unsubscribe"]), data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200
    answer = client.post(_path(links["one_click"]), data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200
    page = client.get(_path(links["confirm"]))
    assert page.status_code == 200
    assert client.post(_path(links["confirm"]), data={"csrf_token": _csrf(page)}).status_code == 200
    with upgraded_app.app_context(), db.transaction() as s:
        status = dict(s.execute(text("SELECT email, status FROM subscribers")).all())
        subscription = dict(s.execute(text(
            "SELECT s.email, sub.status FROM subscriptions sub"
            " JOIN subscribers s ON s.id = sub.subscriber_id")).all())
    # A link signed before newsletters existed is about the first newsletter: leaving ends
    # that subscription (their last, so the person leaves too), confirming starts it.
    for email, now in (("reader1@example.com", "unsubscribed"),
                       ("reader3@example.com", "unsubscribed"),
                       ("pending@example.com", "active")):
        assert (status[email], subscription[email]) == (now, now), email
    assert subscription["reader4@example.com"] == "active"
    db.engine.dispose()
