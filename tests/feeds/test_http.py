"""Feeds over HTTP from a local server: conditional GET, timeouts, size limit, WordPress REST."""

from __future__ import annotations

import copy
import json
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from mailer.db import db
from mailer.models import Feed
from tests.helpers.app import MailerRunner, make_app
from tests.helpers.feeds import (
    FEEDS,
    WORDPRESS_POSTS,
    FeedServer,
    all_articles,
    article_count,
    by_url,
)


@pytest.fixture
def server():
    s = FeedServer().start()
    yield s
    s.stop()


@pytest.fixture
def quick(app, env):
    """`mailer` with a one-second feed timeout, on the `app` fixture's clean database."""
    return MailerRunner(make_app(env, MAILER_FEED_TIMEOUT="1"))


def feed_row(url: str) -> Feed:
    db.session.remove()
    return db.session.scalar(select(Feed).where(Feed.url == url))


def test_a_304_answer_changes_nothing(quick, server):
    server.serve_feed("/feed", (FEEDS / "natasha.xml").read_bytes(), etag='"v1"',
                      last_modified="Fri, 07 Jul 2017 11:06:10 GMT")
    url = server.url("/feed")
    first = quick.invoke(["articles", "sync", url])
    assert first.exit_code == 0 and "10 new" in first.stdout
    before = {(a.id, a.title, a.modified_at) for a in all_articles()}
    assert feed_row(url).etag == '"v1"'

    second = quick.invoke(["articles", "sync", url])
    assert second.exit_code == 0 and "not modified since the last sync" in second.stdout
    revalidation = server.requests_to("/feed")[-1]
    assert revalidation.headers["if-none-match"] == '"v1"'
    assert revalidation.headers["if-modified-since"] == "Fri, 07 Jul 2017 11:06:10 GMT"
    assert {(a.id, a.title, a.modified_at) for a in all_articles()} == before
    # --full asks without the validators and reads everything again.
    full = quick.invoke(["articles", "sync", url, "--full"])
    assert "10 unchanged" in full.stdout
    assert "if-none-match" not in server.requests_to("/feed")[-1].headers


def test_a_timeout_is_an_error_that_leaves_earlier_articles_intact(quick, server):
    body = (FEEDS / "manton.rss").read_bytes()
    server.serve_feed("/slow", body)
    url = server.url("/slow")
    assert quick.invoke(["articles", "sync", url]).exit_code == 0
    before = {(a.id, a.title, a.summary, a.modified_at) for a in all_articles()}

    server.serve_feed("/slow", body.replace(b"Snippets", b"Changed"), delay=3)
    started = time.monotonic()
    result = quick.invoke(["articles", "sync", url])
    assert time.monotonic() - started < 2.5
    assert result.exit_code == 1
    assert result.stderr.strip() == f"mailer: {url}: {url} did not answer within 1 s"
    assert {(a.id, a.title, a.summary, a.modified_at) for a in all_articles()} == before
    assert feed_row(url).last_error == f"{url} did not answer within 1 s"


def test_a_50_mb_feed_is_refused_at_the_size_limit(runner, server):
    head = b'<?xml version="1.0"?><rss version="2.0"><channel><title>Huge</title>'
    item = b"<item><title>x</title><link>https://daily.example/x</link><description>" + (
        b"y" * 1000) + b"</description></item>"

    def fifty_megabytes(_request):
        # Streamed without Content-Length, so only the running count can stop it.
        def chunks():
            yield head
            for _ in range(50 * 1024):
                yield item
            yield b"</channel></rss>"
        return 200, {"Content-Type": "application/rss+xml"}, chunks()

    server.routes["/huge"] = fifty_megabytes
    url = server.url("/huge")
    started = time.monotonic()
    result = runner.invoke(["articles", "sync", url])
    assert result.exit_code == 1
    assert f"{url} is larger than the limit of 10 MB" in result.stderr
    assert time.monotonic() - started < 10
    assert article_count() == 0


def test_http_errors_are_reported_and_change_nothing(runner, server):
    server.routes["/gone"] = lambda _r: (410, {}, b"gone")
    result = runner.invoke(["articles", "sync", server.url("/gone")])
    assert result.exit_code == 1 and "answered HTTP 410" in result.stderr
    server.routes["/page"] = lambda _r: (200, {"Content-Type": "text/html"}, b"<html>hi</html>")
    result = runner.invoke(["articles", "sync", server.url("/page")])
    assert result.exit_code == 1 and "not an RSS or Atom feed" in result.stderr
    assert article_count() == 0


def test_wordpress_rest_pages_through_and_syncs_incrementally(runner, server):
    posts = json.loads(WORDPRESS_POSTS.read_text())
    server.serve_wordpress("/wp-json/wp/v2/posts", posts, per_page=2)
    url = server.url("/wp-json/wp/v2/posts")
    first = runner.invoke(["articles", "sync", url])
    assert first.exit_code == 0, first.output
    assert "4 new, 0 updated, 1 skipped (0 unchanged, 1 malformed" in first.stdout
    assert "item 4 skipped: the post has no link" in first.stderr
    pages = server.requests_to("/wp-json/wp/v2/posts")
    assert [r.query["page"] for r in pages] == ["1", "2", "3"]
    assert all(r.query["_embed"] == "1" and "modified_after" not in r.query for r in pages)

    budget = by_url("https://news.example/2024/03/01/council-budget/")
    assert budget.title == "Council passes the 2024 budget – with cuts"
    assert budget.guid == "https://news.example/?p=101"
    # date_gmt is UTC; `date` (09:30) is the site's own time zone.
    assert budget.published_at == datetime(2024, 3, 1, 8, 30, tzinfo=UTC)
    assert budget.author == "Jane Doe"
    assert budget.categories == ["Politics", "budget"]
    assert budget.summary == "The city council passed the budget on Thursday night…"
    # The content's first picture comes before the REST featured media; relative
    # addresses are resolved against the article, scripts are gone.
    assert budget.image_url == "https://news.example/wp-content/uploads/2024/03/vote.jpg"
    assert 'href="https://news.example/documents/budget-2024.pdf"' in budget.content
    assert "script" not in budget.content and "trackRead" not in budget.content
    derby = by_url("https://news.example/2024/03/02/derby-night/")
    assert derby.image_url == "https://news.example/wp-content/uploads/2024/03/derby.jpg"
    gallery = by_url("https://news.example/2024/03/03/gallery-reopens/")
    assert gallery.categories == ["Arts & Culture"]

    # An edit on the site: the next sync asks only for posts modified since the last one.
    edited = copy.deepcopy(posts)
    edited[1]["title"]["rendered"] = "Derby night ends in a late draw"
    edited[1]["modified_gmt"] = "2024-03-09T10:00:00"
    server.serve_wordpress("/wp-json/wp/v2/posts", edited, per_page=2)
    second = runner.invoke(["articles", "sync", url])
    assert second.exit_code == 0, second.output
    request = server.requests_to("/wp-json/wp/v2/posts")[-1]
    # The newest modified_gmt seen (2024-03-05 17:45) less a day of overlap for time zones.
    assert request.query["modified_after"] == "2024-03-04T17:45:00"
    assert "0 new, 1 updated, 1 skipped (1 unchanged" in second.stdout
    assert by_url(derby.url).title == "Derby night ends in a late draw"
    assert article_count() == 4
    assert feed_row(url).modified_after == datetime(2024, 3, 9, 10, 0, tzinfo=UTC)


def test_a_wordpress_error_answer_is_a_clear_error(runner, server):
    body = json.dumps({"code": "rest_forbidden", "message": "Sorry, you are not allowed."})
    server.routes["/wp-json/wp/v2/posts"] = lambda _r: (
        200, {"Content-Type": "application/json"}, body.encode())
    result = runner.invoke(["articles", "sync", server.url("/wp-json/wp/v2/posts")])
    assert result.exit_code == 1
    assert "did not answer with a list of posts: Sorry, you are not allowed." in result.stderr
