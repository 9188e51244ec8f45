"""A database made by the previous release's own code upgrades with every row and link intact.

The release (v0.1.0) is taken from this repository's history, run from a scratch folder
with its own worker process (tests/helpers/release_seed.py), and then the current code
upgrades the database: `mailer db upgrade` in production, by itself on start in the embedded
mode.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
from html.parser import HTMLParser

import pytest
from sqlalchemy import create_engine, func, select, table, text

from mailer import create_app
from mailer.config import load_settings
from mailer.migrate import head_revision
from tests.helpers.servers import ROOT, PgDatabase

# The release before this one: tag v0.1.0. The commit is named too, so that a checkout
# without tags still finds it.
RELEASE = "ae1ce1439b5cda3e646dc2aa6028482e475e49f7"


@pytest.fixture(scope="session")
def release_tree(tmp_path_factory):
    """The previous release's source tree, from git history."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", RELEASE],
        capture_output=True,
    )
    if archive.returncode != 0:
        raise RuntimeError(
            f"release {RELEASE[:12]} is not in this checkout's history (a shallow clone?): "
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
    env, db_kind, release_tree, old_database, tmp_path
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

    new_env = {**old_env, "PYTHONPATH": str(ROOT)}
    if db_kind == "postgres":
        upgraded = subprocess.run(
            [sys.executable, "-m", "mailer.cli", "db", "upgrade"],
            env=new_env, cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
        assert upgraded.returncode == 0, upgraded.stderr
        newer = head_revision(old_database) != before["revision"]
        assert ("migrated to the newest schema" if newer else "up to date") in upgraded.stdout
    # The embedded mode upgrades by itself when it starts.
    upgraded_app = create_app(load_settings(new_env))
    from mailer.db import db

    engine = create_engine(old_database)
    try:
        with engine.connect() as conn:
            revision = conn.scalar(text("SELECT version_num FROM alembic_version"))
            assert revision == head_revision(old_database)
            for name, count in before["counts"].items():
                assert conn.scalar(select(func.count()).select_from(table(name))) == count, name
            readers = dict(conn.execute(text("SELECT email, status FROM subscribers")).all())
            issues = {
                str(k): v for k, v in conn.execute(text("SELECT id, status FROM issues")).all()
            }
        assert readers == before["readers"]
        assert issues == before["issues"]
    finally:
        engine.dispose()

    client = upgraded_app.test_client()
    links = before["links"]
    page = client.get(f"/archive/{before['sent']}")
    assert page.status_code == 200
    # The issue reads the same: its text in the same order and its links to the same places.
    # Only the page around it may have changed (the dateline and the per-article host label
    # are written differently since the web version follows the mail's layout).
    now_html = page.get_data(as_text=True)
    content = [p for p in visible_text(before["archive_html"]) if not PAGE_LABEL.fullmatch(p)]
    assert is_subsequence(content, visible_text(now_html)), (content, visible_text(now_html))
    links_before = article_links(before["archive_html"])
    assert len(links_before) == 6 and article_links(now_html) == links_before

    # Links in mail already sent still work.
    answer = client.get(_path(links["click"]))
    assert answer.status_code == 302 and answer.headers["Location"] in before["articles"]
    page = client.get(_path(links["preferences"]))
    assert page.status_code == 200 and "reader1@example.com" in page.get_data(as_text=True)
    answer = client.post(_path(links["unsubscribe"]), data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200
    page = client.get(_path(links["confirm"]))
    assert page.status_code == 200
    assert client.post(_path(links["confirm"]), data={"csrf_token": _csrf(page)}).status_code == 200
    with upgraded_app.app_context(), db.transaction() as s:
        status = dict(s.execute(text("SELECT email, status FROM subscribers")).all())
    assert status["reader1@example.com"] == "unsubscribed"
    assert status["pending@example.com"] == "active"
    db.engine.dispose()
