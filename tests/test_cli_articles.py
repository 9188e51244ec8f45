"""`mailer articles sync | list | popular`, in-process and as the real command, and the
periodic sync and roll-up through a real worker."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from mailer.clock import utcnow
from mailer.db import db
from mailer.models import ArticleStat, Feed, VisitorSeen
from tests.conftest import MailerRunner, make_app
from tests.services.test_feeds_support import (
    BROWSER_UA,
    FEEDS,
    FeedServer,
    all_articles,
    article_count,
    by_url,
)
from tests.support import ROOT, WorkerProcess, wait_until


@pytest.fixture
def server():
    s = FeedServer().start()
    yield s
    s.stop()


def view(client, url: str, ip: str):
    resp = client.post("/api/v1/pageviews", json={"url": url},
                       headers={"User-Agent": BROWSER_UA}, environ_base={"REMOTE_ADDR": ip})
    assert resp.status_code == 204


def test_sync_prints_a_summary_and_a_progress_bar(runner):
    result = runner.invoke(["articles", "sync", str(FEEDS / "natasha.xml")])
    assert result.exit_code == 0
    assert result.stdout.strip().endswith(
        "natasha.xml: 10 new, 0 updated, 0 skipped (0 unchanged, 0 malformed or duplicate)")
    assert "Syncing natasha.xml" in result.stderr  # the progress bar stays off stdout
    again = runner.invoke(["articles", "sync", str(FEEDS / "natasha.xml"), "--json"])
    report = json.loads(again.stdout)
    assert (report["new"], report["updated"], report["unchanged"]) == (0, 0, 10)
    assert report["feeds"][0]["status"] == "ok"


def test_sync_refuses_what_it_cannot_read(runner, tmp_path):
    missing = runner.invoke(["articles", "sync", str(tmp_path / "nope.xml")])
    assert missing.exit_code == 1
    assert "is neither an http(s) address nor a readable file" in missing.stderr
    nothing = runner.invoke(["articles", "sync"])
    assert nothing.exit_code == 1 and "MAILER_FEEDS is empty" in nothing.stderr


def test_sync_without_source_reads_every_configured_feed(app, env, server):
    server.serve_feed("/one", (FEEDS / "manton.rss").read_bytes())
    server.routes["/down"] = lambda _r: (503, {}, b"maintenance")
    feeds = f"{server.url('/one')},{server.url('/down')}"
    runner = MailerRunner(make_app(env, MAILER_FEEDS=feeds))
    result = runner.invoke(["articles", "sync"])
    assert result.exit_code == 1
    assert f"{server.url('/one')}: 10 new" in result.stdout
    assert "all feeds: 10 new, 0 updated, 0 unchanged, 1 failed" in result.stdout
    down = server.url("/down")
    assert f"{down}: failed: {down} answered HTTP 503" in result.stderr
    assert result.stderr.strip().endswith("mailer: 1 of 2 feeds failed")
    assert article_count() == 10


def test_list_is_newest_first_with_limit_and_json(runner):
    empty = runner.invoke(["articles", "list"])
    assert empty.exit_code == 0 and "No articles yet" in empty.stdout
    assert json.loads(runner.invoke(["articles", "list", "--json"]).stdout) == []
    runner.invoke(["articles", "sync", str(FEEDS / "manton.rss")])
    runner.invoke(["articles", "sync", str(FEEDS / "wirecutter.xml")])
    listed = json.loads(runner.invoke(["articles", "list", "--json"]).stdout)
    assert len(listed) == 11
    assert [a["published_at"] for a in listed] == sorted((a["published_at"] for a in listed),
                                                         reverse=True)
    assert listed[0]["title"] == "How to Teach Someone a Board Game (and Even Have Fun Doing It)"
    two = runner.invoke(["articles", "list", "--limit", "2"])
    lines = two.stdout.splitlines()
    assert lines[0].split() == ["ID", "PUBLISHED", "(UTC)", "TITLE"]
    assert "2022-09-20 11:00" in lines[1] and "How to Teach Someone" in lines[1]
    assert lines[2].strip() == listed[0]["url"] and len(lines) == 5
    assert runner.invoke(["articles", "list", "--limit", "0"]).exit_code == 2


def test_list_shows_sections_from_the_configured_mapping(app, env):
    runner = MailerRunner(make_app(env, MAILER_SECTION_MAP="Technology=news,WEBLOGS=culture,"
                                                       "Movies=culture"))
    runner.invoke(["articles", "sync", str(FEEDS / "manton.rss")])
    output = runner.invoke(["articles", "list", "--json"]).stdout
    listed = {a["title"]: a for a in json.loads(output)}
    assert listed["Instagram hits 400 million users"]["sections"] == ["news"]
    assert listed["Complete mirror of this blog"]["sections"] == ["culture"]
    assert listed["Steve Jobs and ET"]["sections"] == ["culture"]
    # "Snippets" is mapped to nothing: no section rather than a guess.
    snippet = next(a for a in listed.values() if a["url"].endswith("/2015/09/3046.html"))
    assert snippet["categories"] == ["Snippets"] and snippet["sections"] == []


def test_popular_ranks_beacon_views_and_digest_clicks(app, runner, client):
    empty = runner.invoke(["articles", "popular"])
    assert empty.exit_code == 0
    assert "No counted page views or clicks in the last 7 days" in empty.stdout
    runner.invoke(["articles", "sync", str(FEEDS / "dcrainmaker.xml")])
    sale = by_url("https://www.dcrainmaker.com/2017/11/trainers-power-meters-fenix5-sale.html")
    guide = by_url("https://www.dcrainmaker.com/2017/11/"
                   "power-meters-annual-buyers-guide-2017-edition.html")
    for n in range(3):
        view(client, guide.url, f"192.0.2.{n}")
    view(client, sale.url + "?utm_source=newsletter", "192.0.2.50")
    rt = app.extensions["mailer"]
    now = utcnow()
    for n in range(4):  # four readers clicked the sale in yesterday's digest
        assert rt.popularity.record_click(db.session, sale.id, f"reader{n}", now,
                                          now - timedelta(hours=20))
    db.session.commit()

    ranked = json.loads(runner.invoke(["articles", "popular", "--json"]).stdout)
    ranks = [(r["rank"], r["id"], r["score"]) for r in ranked]
    assert ranks == [(1, sale.id, 5.0), (2, guide.id, 3.0)]
    assert ranked[0]["title"].startswith("Huge Fall Sale")
    text = runner.invoke(["articles", "popular", "--days", "3", "--limit", "1"]).stdout.splitlines()
    assert text[0].split() == ["RANK", "SCORE", "ID", "TITLE"]
    assert text[1].split()[:3] == ["1", "5.00", str(sale.id)] and len(text) == 2
    assert runner.invoke(["articles", "popular", "--days", "0"]).exit_code == 2


def mailer(env, *args):
    return subprocess.run([sys.executable, "-m", "mailer.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_the_real_command_syncs_a_feed_and_ranks_it(app, env, client):
    """Done when: `mailer articles sync` and `mailer articles popular`, as ops run them."""
    synced = mailer(env, "articles", "sync", str(FEEDS / "wordpress-atom10.xml"))
    assert synced.returncode == 0, synced.stderr
    assert "10 new, 0 updated" in synced.stdout
    rows = all_articles()
    books, nz = rows[0], rows[1]
    view(client, nz.url, "192.0.2.1")
    view(client, nz.url, "192.0.2.2")
    view(client, books.url, "192.0.2.1")
    ranked = mailer(env, "articles", "popular", "--json")
    assert ranked.returncode == 0, ranked.stderr
    scores = [(r["id"], r["score"]) for r in json.loads(ranked.stdout)]
    assert scores == [(nz.id, 2.0), (books.id, 1.0)]


def test_beat_schedule_has_the_feed_sync_and_rollup(env):
    app = make_app(env, MAILER_FEED_SYNC_MINUTES="15")
    schedule = app.extensions["celery"].conf.beat_schedule
    assert schedule["sync-feeds"]["task"] == "mailer.sync_feeds"
    assert schedule["sync-feeds"]["schedule"] == timedelta(minutes=15)
    assert schedule["popularity-rollup"]["task"] == "mailer.popularity_rollup"


def test_the_periodic_tasks_run_on_a_real_worker(app, env, server, tmp_path):
    server.serve_feed("/feed", (FEEDS / "natasha.xml").read_bytes(), etag='"n1"')
    server.routes["/broken"] = lambda _r: (200, {}, b"<html>oops</html>")
    feed, broken = server.url("/feed"), server.url("/broken")
    # A queue of its own, so that no other worker of the session takes these tasks.
    queue = f"articles-{secrets.token_hex(4)}"
    proc = WorkerProcess({**env, "MAILER_FEEDS": f"{feed},{broken}"}, tmp_path / "worker.log",
                         args=["--pool", "solo", "-Q", queue]).start()
    try:
        celery = app.extensions["celery"]
        celery.send_task("mailer.sync_feeds", queue=queue)
        wait_until(lambda: article_count() == 10, 60, what=f"the feed sync ({proc.log()})")

        def failure():
            db.session.remove()
            return db.session.scalar(select(Feed.last_error).where(Feed.url == broken))

        assert "not an RSS or Atom feed" in wait_until(failure, 30, what="the broken feed's error")
        # Synced moments ago: a second beat firing right away leaves the feed alone.
        celery.send_task("mailer.sync_feeds", queue=queue)

        rt = app.extensions["mailer"]
        article = all_articles()[0]
        yesterday = utcnow() - timedelta(days=1)
        for n in range(2):
            assert rt.popularity.record_view(db.session, article.id, f"r{n}", yesterday)
        db.session.commit()
        celery.send_task("mailer.popularity_rollup", queue=queue)

        def rolled_up():
            db.session.remove()
            seen = db.session.scalar(select(func.count()).select_from(VisitorSeen))
            views = db.session.scalar(select(ArticleStat.views).where(
                ArticleStat.article_id == article.id, ArticleStat.day == yesterday.date()))
            return seen == 0 and views == 2

        wait_until(rolled_up, 30, what="the popularity roll-up")
    finally:
        proc.stop()
    requests = server.requests_to("/feed")
    assert len(requests) == 1, "the second firing should have found the feed synced already"
