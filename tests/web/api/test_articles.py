"""POST /api/v1/articles (a CMS pushing on publish) and POST /api/v1/pageviews (the beacon)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, func, select

from mailer import redis_client
from mailer.clock import utcnow
from mailer.db import db
from mailer.models import Article, Role
from mailer.services import users
from tests.helpers.app import make_app
from tests.helpers.feeds import (
    BROWSER_UA,
    FEEDS,
    FeedServer,
    all_articles,
    article_count,
    by_url,
)
from tests.helpers.servers import redis_warnings, wait_until

SITE = "https://www.daily.example"  # in the session's MAILER_CORS_ORIGINS


@pytest.fixture
def token(app) -> str:
    with db.transaction() as s:
        user = users.create_user(s, "cms@daily.example", "a long enough password", Role.EDITOR)
        return users.create_api_token(s, user, "cms")


def push(client, token, body, content_type="application/json"):
    data = json.dumps(body) if content_type == "application/json" else body
    return client.post("/api/v1/articles", data=data, content_type=content_type,
                       headers={"Authorization": f"Bearer {token}"})


ARTICLE = {
    "url": "https://www.daily.example/2024/05/tram?utm_source=cms&utm_medium=push",
    "guid": "cms-1841",
    "title": "Tram line opens",
    "summary": "<p>The new line runs every ten minutes.</p>",
    "content": '<p>The new line <a href="/lines/9">runs</a> every ten minutes.</p>'
               '<img src="/media/tram.jpg" onerror="steal()"><script>steal()</script>',
    "author": "Ana Lima",
    "categories": ["City", "Transport"],
    "image_url": "/media/tram.jpg",
    "published": "2024-05-07T06:00:00",
}


def test_a_cms_push_creates_then_updates_an_article(client, token):
    resp = push(client, token, ARTICLE)
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert (body["new"], body["updated"], body["skipped"]) == (1, 0, [])
    article = by_url("https://www.daily.example/2024/05/tram")
    assert body["ids"] == [article.id]
    assert article.title == "Tram line opens" and article.guid == "cms-1841"
    assert article.published_at == datetime(2024, 5, 7, 6, 0, tzinfo=UTC)
    assert article.summary == "The new line runs every ten minutes."
    assert article.image_url == "https://www.daily.example/media/tram.jpg"
    assert article.content == (
        '<p>The new line <a href="https://www.daily.example/lines/9" rel="noopener noreferrer">'
        'runs</a> every ten minutes.</p><img src="https://www.daily.example/media/tram.jpg">'
    )
    assert article.source == "api: cms@daily.example"

    edited = {**ARTICLE, "title": "Tram line opens on Monday", "updated": "2024-05-07T09:00:00Z"}
    again = push(client, token, edited)
    assert again.status_code == 200 and again.get_json()["updated"] == 1
    assert by_url(article.url).title == "Tram line opens on Monday"
    # A copy older than what is stored (a cached feed, a retried webhook) changes nothing.
    stale = {**ARTICLE, "title": "Old title", "updated": "2024-05-07T07:00:00Z"}
    assert push(client, token, stale).get_json()["unchanged"] == 1
    assert by_url(article.url).title == "Tram line opens on Monday"
    assert article_count() == 1


def test_a_push_takes_lists_wordpress_posts_and_feeds(client, token):
    many = {"articles": [
        {"url": "https://www.daily.example/a", "title": "A"},
        {"title": "no address"},
        {"url": "https://www.daily.example/b", "title": "B", "published": "yesterday"},
    ]}
    resp = push(client, token, many)
    assert resp.status_code == 201
    assert resp.get_json()["skipped"] == [
        {"item": 2, "reason": "url is required"},
        {"item": 3, "reason": "published is not an ISO 8601 date: 'yesterday'"},
    ]
    wordpress_post = {
        "id": 7, "date_gmt": "2024-05-07T10:00:00", "modified_gmt": "2024-05-07T10:00:00",
        "link": "https://www.daily.example/wp-post/",
        "guid": {"rendered": "https://www.daily.example/?p=7"},
        "title": {"rendered": "Fire &amp; rescue drill"},
        "excerpt": {"rendered": "<p>Sirens at noon.</p>"},
        "content": {"rendered": "<p>Sirens at noon.</p>"},
    }
    assert push(client, token, wordpress_post).status_code == 201
    assert by_url("https://www.daily.example/wp-post/").title == "Fire & rescue drill"
    feed = push(client, token, (FEEDS / "wirecutter.xml").read_bytes(), "application/rss+xml")
    assert feed.status_code == 201 and feed.get_json()["new"] == 1
    assert article_count() == 3


@pytest.mark.parametrize("body, content_type, status, message", [
    (b"{not json", "application/json", 400, "The body is not valid JSON."),
    (json.dumps({"url": "https://x.example/", "colour": "red"}).encode(), "application/json", 400,
     "unknown field 'colour'"),
    (json.dumps([]).encode(), "application/json", 400, "the body holds no articles"),
    (json.dumps({"url": "ftp://x.example/a"}).encode(), "application/json", 400,
     "item 1: no usable link"),
    # Year 1 at +14:00 is before the first instant a datetime holds (was a 500).
    (json.dumps({"url": "https://x.example/", "published": "0001-01-01T00:00:00+14:00"}).encode(),
     "application/json", 400, "item 1: published is not an ISO 8601 date"),
    (b"<rss version='2.0'><channel><item><title>cut", "application/rss+xml", 400, "cut off"),
    (b"<html>hello</html>", "text/html", 415, "Send articles as JSON, or an RSS or Atom document."),
])
def test_a_bad_push_is_a_readable_4xx_and_writes_nothing(client, token, body, content_type,
                                                         status, message):
    resp = client.post("/api/v1/articles", data=body, content_type=content_type,
                       headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == status
    assert message in resp.get_json()["message"]
    assert article_count() == 0


def test_wordpress_embedded_parts_that_are_not_lists_are_ignored(client, token):
    # Found by probing the OpenAPI document's WordPressPost schema: these were 500s.
    post = {"link": "https://www.daily.example/odd-post/", "title": {"rendered": "Odd post"},
            "_embedded": {"author": 5, "wp:term": 3, "wp:featuredmedia": True}}
    resp = push(client, token, post)
    assert resp.status_code == 201, resp.get_json()
    article = by_url("https://www.daily.example/odd-post/")
    assert (article.title, article.author, article.categories, article.image_url) == (
        "Odd post", None, [], None)


def test_nul_characters_are_dropped_from_pushed_articles(client, token):
    # Found by the OpenAPI conformance run: PostgreSQL text cannot hold NUL (a 500 there).
    resp = push(client, token, {
        "url": "https://www.daily.example/n\u0000ul", "title": "Tram\u0000 line", "guid": "g\u00001",
        "author": "Ana\u0000", "categories": ["Ci\u0000ty"], "summary": "Runs\u0000 often.",
        "content": "<p>Runs\u0000 often.</p>", "image_url": "/media/tr\u0000am.jpg"})
    assert resp.status_code == 201, resp.get_json()
    article = by_url("https://www.daily.example/nul")
    assert (article.title, article.guid, article.author, article.categories, article.summary,
            article.image_url) == ("Tram line", "g1", "Ana", ["City"], "Runs often.",
                                   "https://www.daily.example/media/tram.jpg")
    assert "\x00" not in article.content


def test_a_push_needs_a_token_and_a_sane_size(client, token):
    assert client.post("/api/v1/articles", json=ARTICLE).status_code == 401
    bad = client.post("/api/v1/articles", json=ARTICLE, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    content = b"x" * (50 * 1024 * 1024)
    huge = b'{"url": "https://www.daily.example/big", "content": "' + content + b'"}'
    resp = client.post("/api/v1/articles", data=huge, content_type="application/json",
                       headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 413 and resp.get_json()["message"]
    assert article_count() == 0


# --- the page-view beacon --------------------------------------------------------------------


@pytest.fixture
def article(app) -> Article:
    db.session.add(Article(url="https://www.daily.example/2024/05/tram/", title="Tram",
                           published_at=utcnow()))
    db.session.commit()
    return db.session.scalar(select(Article))


def ranking(app) -> list[tuple[int, float]]:
    db.session.remove()
    return app.extensions["mailer"].popularity.ranking(db.session, days=1, now=utcnow(), limit=10)


def beacon(client, url, agent=BROWSER_UA, ip="198.51.100.7", **kw):
    return client.post("/api/v1/pageviews", json={"url": url},
                       headers={"User-Agent": agent, **kw.pop("headers", {})},
                       environ_base={"REMOTE_ADDR": ip}, **kw)


def test_a_thousand_views_of_one_reader_count_once(app, client, article):
    for _ in range(1000):
        resp = beacon(client, article.url)
        assert resp.status_code == 204
    assert ranking(app) == [(article.id, 1.0)]
    # Another reader (another address, or another browser at the same address) counts too.
    beacon(client, article.url, ip="198.51.100.8")
    beacon(client, article.url, agent=BROWSER_UA.replace("17.4", "17.5"))
    assert ranking(app) == [(article.id, 3.0)]


def test_the_beacon_matches_the_article_however_its_address_is_written(app, client, article):
    # utm_* parameters, a fragment, a missing trailing slash, upper-case host; form or
    # text/plain bodies (what sendBeacon sends).
    beacon(client, "https://WWW.daily.example/2024/05/tram/?utm_source=newsletter#comments")
    client.post("/api/v1/pageviews", data={"url": "https://www.daily.example/2024/05/tram"},
                headers={"User-Agent": BROWSER_UA}, environ_base={"REMOTE_ADDR": "192.0.2.1"})
    client.post("/api/v1/pageviews", data=json.dumps({"url": article.url}),
                content_type="text/plain;charset=UTF-8", headers={"User-Agent": BROWSER_UA},
                environ_base={"REMOTE_ADDR": "192.0.2.2"})
    assert ranking(app) == [(article.id, 3.0)]
    # An address the mailer does not know is answered the same way and counts nothing.
    assert beacon(client, "https://www.daily.example/elsewhere", ip="192.0.2.3").status_code == 204
    assert ranking(app) == [(article.id, 3.0)]


def test_bots_and_head_requests_get_204_and_count_zero(app, client, article):
    agents = ["Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
              "facebookexternalhit/1.1", "Twitterbot/1.0", "WhatsApp/2.23.20.0 A",
              "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
              "TelegramBot (like TwitterBot)", "Googlebot/2.1", "curl/8.5.0", ""]
    for n, agent in enumerate(agents):
        assert beacon(client, article.url, agent=agent, ip=f"192.0.2.{n}").status_code == 204
    head = client.head("/api/v1/pageviews", headers={"User-Agent": BROWSER_UA})
    assert head.status_code == 204
    assert ranking(app) == []


@pytest.mark.parametrize("kw, status, message", [
    ({"data": "{not json", "content_type": "text/plain"}, 400, "The body is not valid JSON."),
    ({"data": "[" * 60000, "content_type": "application/json"}, 400, "not valid JSON"),
    ({"json": ["https://www.daily.example/"]}, 400, '{"url": "<the article address>"}'),
    ({"json": {}}, 400, "Send the article's address in the url field."),
    ({"json": {"url": 42}}, 400, "Send the article's address in the url field."),
    ({"data": {"url": "javascript:alert(1)"}}, 400, "url must be an http or https address."),
    ({"json": {"url": "https://x.example/" + "a" * 2000}}, 400, "longer than 2000"),
    ({"data": b"\x89PNG", "content_type": "image/png"}, 415, "form field url"),
])
def test_a_malformed_beacon_is_a_readable_4xx(app, client, article, kw, status, message):
    resp = client.post("/api/v1/pageviews", headers={"User-Agent": BROWSER_UA}, **kw)
    assert resp.status_code == status
    assert message in resp.get_json()["message"]
    assert ranking(app) == []


def test_cors_for_the_sites_own_origin_only(client, article):
    preflight = client.options("/api/v1/pageviews", headers={
        "Origin": SITE, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == SITE
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    ok = beacon(client, article.url, headers={"Origin": SITE})
    assert ok.headers["Access-Control-Allow-Origin"] == SITE
    other = beacon(client, article.url, headers={"Origin": "https://evil.example"})
    assert other.status_code == 204 and "Access-Control-Allow-Origin" not in other.headers


@pytest.mark.redis
def test_the_beacon_answers_204_when_redis_is_down(env, article):
    app = make_app(env, MAILER_REDIS_URL="redis://127.0.0.1:1/0")
    resp = beacon(app.test_client(), article.url)
    assert resp.status_code == 204


def test_views_and_digest_clicks_rank_together(app, client):
    for n in (1, 2, 3):
        db.session.add(Article(url=f"https://www.daily.example/{n}", title=f"Story {n}",
                               published_at=utcnow()))
    db.session.commit()
    one, two, three = (a.id for a in sorted(all_articles(), key=lambda a: a.id))
    rt = app.extensions["mailer"]
    now = utcnow()
    # Story 1: two readers of the site; story 2: three readers from the digest; story 3:
    # only a mail scanner, seconds after delivery.
    for ip in ("192.0.2.1", "192.0.2.2"):
        beacon(client, "https://www.daily.example/1", ip=ip)
    for n in range(3):
        delivered = now - timedelta(hours=1)
        assert rt.popularity.record_click(db.session, two, f"reader{n}", now, delivered)
    assert not rt.popularity.record_click(db.session, three, "scanner", now, now)
    db.session.commit()
    assert ranking(app) == [(two, 3.0), (one, 2.0)]
    assert db.session.scalar(select(func.count()).select_from(Article)) == 3


@pytest.mark.browser
def test_the_snippet_counts_a_reader_in_chromium(app, browser, live_server, article):
    """The documented snippet on a page of the site (another origin) counts one view."""
    site = FeedServer().start()
    page_html = (
        "<!doctype html><html><head><title>Tram</title>"
        f'<link rel="canonical" href="{article.url}">'
        f'<script async src="{live_server}/static/beacon.js"></script>'
        "</head><body><h1>Tram line opens</h1></body></html>"
    ).encode()
    site.routes["/2024/05/tram/"] = lambda _r: (200, {"Content-Type": "text/html"}, page_html)
    try:
        # An automated browser (navigator.webdriver, HeadlessChrome) is not a reader ...
        robot = browser.new_context()
        robot.new_page().goto(site.url("/2024/05/tram/"))
        robot.close()
        # ... a reader's browser is.
        reader = browser.new_context(user_agent=BROWSER_UA)
        reader.add_init_script("Object.defineProperty(navigator, 'webdriver', {get: () => false})")
        reader.new_page().goto(site.url("/2024/05/tram/"))
        wait_until(lambda: ranking(app), 10, what="the beacon's page view")
        reader.close()
    finally:
        site.stop()
    assert ranking(app) == [(article.id, 1.0)]


def test_page_addresses_are_cached_briefly_so_most_beacons_skip_sql(app):
    from mailer.web.api.articles import AddressCache

    cache = AddressCache(ttl=60, miss_ttl=0.2)
    url = "https://www.daily.example/2024/05/late/"
    assert cache.article_id(url) is None
    db.session.add(Article(url=url, title="Synced a moment later", published_at=utcnow()))
    db.session.commit()
    assert cache.article_id(url) is None  # the miss is remembered for a moment ...
    time.sleep(0.25)
    article_id = cache.article_id(url)  # ... then the new article counts
    assert article_id == by_url(url).id
    db.session.execute(delete(Article))
    db.session.commit()
    assert cache.article_id(url) == article_id  # a hit is kept for `ttl`


@pytest.mark.redis
def test_with_redis_stuck_the_beacon_waits_once_and_counts_again_when_it_is_back(
    app, env, own_redis, article, caplog
):
    own = make_app(env, MAILER_REDIS_URL=own_redis.url)
    client = own.test_client()
    url, article_id = article.url, article.id

    def timed(ip: str) -> float:
        started = time.monotonic()
        assert beacon(client, url, ip=ip).status_code == 204
        return time.monotonic() - started

    with own_redis.paused():  # accepts connections, answers nothing
        first = timed("198.51.100.1")
        second = timed("198.51.100.2")
    assert first < 1.5  # the store's short timeout, once
    assert second < 0.25  # Redis left alone during the back-off
    assert len(redis_warnings(caplog)) == 1

    time.sleep(redis_client.BACKOFF)
    timed("198.51.100.3")
    assert ranking(own) == [(article_id, 1.0)]  # back in Redis: counted again
