"""Popularity over days with a frozen clock: both stores (SQL in both passes, Redis in the
production pass) rank alike, count a reader once a day, and ignore bots and mail scanners."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
import redis
import time_machine
from sqlalchemy import delete, func, select

from mailer.db import db
from mailer.feeds import parse_document
from mailer.models import Article, ArticleStat, VisitorSeen
from mailer.services import articles, popularity
from mailer.services.popularity import RedisPopularity, SqlPopularity
from mailer.tasks.articles import rollup_window
from mailer.tokens import Tokens
from tests.helpers.app import make_app
from tests.helpers.feeds import BROWSER_UA, FEEDS

DAY1 = datetime(2024, 5, 6, 9, 0, tzinfo=UTC)


def pytest_generate_tests(metafunc):
    # The embedded SQL store is tested in both passes; the Redis store where Redis runs.
    if "store_kind" in metafunc.fixturenames:
        production = metafunc.config.getoption("--db") != "sqlite"
        metafunc.parametrize("store_kind", ["sql", "redis"] if production else ["sql"])


@pytest.fixture
def weighted(app, env):
    """An app whose window weights are 1 (today), 0.5 (yesterday), 0.25 (before)."""
    return make_app(env, MAILER_POPULARITY_WEIGHTS="1,0.5,0.25")


@pytest.fixture
def store(weighted, store_kind):
    settings = weighted.extensions["mailer.settings"]
    if store_kind == "sql":
        return SqlPopularity(settings)
    chosen = weighted.extensions["mailer"].popularity
    assert isinstance(chosen, RedisPopularity)  # the production pass picks Redis by itself
    return chosen


@pytest.fixture
def ids(app) -> list[int]:
    """Ids of three real articles (dcrainmaker.xml), newest first."""
    articles.ingest(db.session, parse_document((FEEDS / "dcrainmaker.xml").read_bytes()),
                    source="test")
    db.session.commit()
    return list(db.session.scalars(select(Article.id).order_by(Article.published_at.desc())))[:3]


def views(store, article_id: int, readers: int, at: datetime, prefix: str = "r") -> None:
    with time_machine.travel(at, tick=False):
        for n in range(readers):
            assert store.record_view(db.session, article_id, f"{prefix}{n}", at)
        db.session.commit()


def end_of_day(store, day: datetime) -> None:
    """What the beat does after midnight: roll the finished day into SQL."""
    store.rollup(db.session, day.date())
    db.session.commit()


def test_ranking_over_several_days_weights_recent_days_more(store, ids):
    a, b, c = ids
    views(store, a, 5, DAY1)
    views(store, b, 1, DAY1)
    end_of_day(store, DAY1)
    day2 = DAY1 + timedelta(days=1)
    views(store, b, 3, day2)
    views(store, c, 1, day2)
    end_of_day(store, day2)
    day3 = DAY1 + timedelta(days=2, hours=3)
    views(store, c, 2, day3)
    views(store, a, 1, day3)

    ranking = store.ranking(db.session, days=3, now=day3, limit=10)
    # c: 2×1 + 1×0.5; a: 1×1 + 5×0.25; b: 3×0.5 + 1×0.25
    assert ranking == [(c, 2.5), (a, 2.25), (b, 1.75)]
    assert store.ranking(db.session, days=3, now=day3, limit=2) == [(c, 2.5), (a, 2.25)]
    assert store.ranking(db.session, days=1, now=day3, limit=10) == [(c, 2.0), (a, 1.0)]
    # A week later the window has moved past all of it.
    assert store.ranking(db.session, days=3, now=day3 + timedelta(days=7), limit=10) == []


def test_default_weights_decay_linearly(app, ids, store_kind):
    store = (SqlPopularity(app.extensions["mailer.settings"]) if store_kind == "sql"
             else app.extensions["mailer"].popularity)
    a, b, _ = ids
    views(store, a, 7, DAY1)
    views(store, b, 2, DAY1 + timedelta(days=6))
    # Default 7-day window: today counts 7/7, six days ago 1/7.
    ranking = store.ranking(db.session, days=7, now=DAY1 + timedelta(days=6), limit=5)
    assert ranking == [(b, 2.0), (a, 1.0)]


def test_one_reader_counts_once_per_article_per_day(store, ids):
    a, b, _ = ids
    with time_machine.travel(DAY1, tick=False):
        counted = [store.record_view(db.session, a, "same-reader", DAY1) for _ in range(1000)]
        db.session.commit()
    assert counted.count(True) == 1 and counted[0] is True
    # The same reader on another article, and on the next day, counts again.
    assert store.record_view(db.session, b, "same-reader", DAY1)
    day2 = DAY1 + timedelta(days=1)
    assert store.record_view(db.session, a, "same-reader", day2)
    db.session.commit()
    ranking = dict(store.ranking(db.session, days=2, now=day2, limit=5))
    assert ranking == {a: 1 + 0.5, b: 0.5}


def test_scanner_clicks_count_zero_and_a_click_then_a_view_count_once(store, ids):
    a, b, _ = ids
    delivered = DAY1
    settings_seconds = store.settings.scanner_seconds
    scanner_at = delivered + timedelta(seconds=settings_seconds - 1)
    assert not store.record_click(db.session, a, "scanner", scanner_at, delivered)
    reader_at = delivered + timedelta(minutes=20)
    assert store.record_click(db.session, a, "reader", reader_at, delivered)
    # The click lands the reader on the page, whose beacon fires: still one reader.
    assert not store.record_view(db.session, a, "reader", reader_at)
    assert not store.record_click(db.session, a, "reader", reader_at, delivered)
    # A click from a digest whose delivery time is unknown counts like any click.
    assert store.record_click(db.session, b, "other", reader_at, None)
    db.session.commit()
    assert store.ranking(db.session, days=1, now=reader_at, limit=5) == [(b, 1.0), (a, 1.0)]
    end_of_day(store, DAY1)
    stat = db.session.scalar(select(ArticleStat).where(ArticleStat.article_id == a))
    assert (stat.views, stat.clicks) == (0, 1)


def test_deleted_articles_leave_the_ranking(store, ids):
    a, b, _ = ids
    views(store, a, 2, DAY1)
    views(store, b, 1, DAY1)
    db.session.execute(delete(Article).where(Article.id == a))
    db.session.commit()
    assert store.ranking(db.session, days=1, now=DAY1, limit=5) == [(b, 1.0)]


def test_rollup_task_rolls_finished_days(app, ids):
    rt = app.extensions["mailer"]
    a, _, _ = ids
    with app.app_context():
        views(rt.popularity, a, 3, DAY1)
        with time_machine.travel(DAY1 + timedelta(days=1, minutes=1), tick=False):
            rollup_window()
            rollup_window()  # idempotent
    db.session.remove()
    stat = db.session.scalar(select(ArticleStat).where(ArticleStat.article_id == a))
    assert (stat.day, stat.views, stat.clicks) == (DAY1.date(), 3, 0)
    # The embedded store's de-duplication rows of finished days are gone.
    assert db.session.scalar(select(func.count()).select_from(VisitorSeen)) == 0


@pytest.mark.redis
def test_a_redis_flush_loses_at_most_the_current_day(weighted, ids, redis_server):
    store = weighted.extensions["mailer"].popularity
    a, b, c = ids
    views(store, a, 4, DAY1)
    end_of_day(store, DAY1)
    day2 = DAY1 + timedelta(days=1)
    views(store, b, 4, day2)
    end_of_day(store, day2)
    day3 = DAY1 + timedelta(days=2)
    views(store, c, 10, day3)
    assert store.ranking(db.session, days=3, now=day3, limit=5) == [(c, 10.0), (b, 2.0), (a, 1.0)]

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    # Days 1 and 2 were rolled up; only today's counts are gone.
    assert store.ranking(db.session, days=3, now=day3, limit=5) == [(b, 2.0), (a, 1.0)]
    # Counting goes on after the flush.
    views(store, c, 1, day3, prefix="after")
    assert store.ranking(db.session, days=3, now=day3, limit=5) == [(b, 2.0), (c, 1.0), (a, 1.0)]


@pytest.mark.redis
def test_redis_keys_expire_and_rollup_never_lowers_counts(weighted, ids, redis_server):
    store = weighted.extensions["mailer"].popularity
    a, _, _ = ids
    views(store, a, 3, DAY1)
    client = redis.Redis.from_url(redis_server.url)
    day = DAY1.date()
    assert 0 < client.ttl(RedisPopularity.key(day, "seen")) <= 2 * 86400
    assert 7 * 86400 < client.ttl(RedisPopularity.key(day, "views")) <= 9 * 86400
    end_of_day(store, DAY1)
    client.delete(RedisPopularity.key(day, "views"))
    client.close()
    end_of_day(store, DAY1)  # a partial Redis does not undo what SQL has
    stat = db.session.scalar(select(ArticleStat).where(ArticleStat.article_id == a))
    assert stat.views == 3


BOTS = [
    None, "", "   ",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "Twitterbot/1.0",
    "WhatsApp/2.23.20.0 A",
    "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
    "TelegramBot (like TwitterBot)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/126.0.0.0 Safari/537.36",
    "curl/8.5.0", "Wget/1.21.4", "python-requests/2.32.3", "Go-http-client/1.1",
    "Java/17.0.2", "okhttp/4.12.0",
    "Mozilla/5.0 (compatible; MJ12bot/v1.4.8; http://mj12bot.com/)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/125.0.0.0 Safari/537.36 Edg/125.0 BingPreview/1.0b",
]
PEOPLE = [
    BROWSER_UA,
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 10; CUBOT X30) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
]


@pytest.mark.parametrize("agent", BOTS)
def test_bots_previews_and_tools_are_bots(agent):
    assert popularity.is_bot(agent)


@pytest.mark.parametrize("agent", PEOPLE)
def test_browsers_are_people(agent):
    assert not popularity.is_bot(agent)


def test_visitor_ids_are_keyed_daily_hashes_without_the_address():
    tokens = Tokens("a-test-secret-key-of-enough-length")
    day, next_day = date(2024, 5, 6), date(2024, 5, 7)
    one = popularity.visitor_id(tokens, "203.0.113.9", BROWSER_UA, day)
    assert one == popularity.visitor_id(tokens, "203.0.113.9", BROWSER_UA, day)
    assert "203.0.113" not in one and len(one) == 32
    assert one != popularity.visitor_id(tokens, "203.0.113.9", BROWSER_UA, next_day)
    assert one != popularity.visitor_id(tokens, "203.0.113.10", BROWSER_UA, day)
    assert one != popularity.visitor_id(tokens, "203.0.113.9", PEOPLE[1], day)
    # Without the key nobody can recompute it from a guessed address.
    other = Tokens("another-secret-key-of-enough-length")
    assert one != popularity.visitor_id(other, "203.0.113.9", BROWSER_UA, day)


def test_one_network_counts_a_bounded_number_of_readers(store, ids):
    a, b, _ = ids
    tokens = Tokens("a-test-secret-key-of-enough-length")
    day = DAY1.date()
    # A script on one address inventing a new browser for every request ...
    rotating = [popularity.visitor_id(tokens, "203.0.113.9", f"{BROWSER_UA} r{n}", day)
                for n in range(popularity.PER_NETWORK + 30)]
    counted = [store.record_view(db.session, a, v, DAY1) for v in rotating]
    assert counted.count(True) == popularity.PER_NETWORK
    # ... or every address of its IPv6 /64.
    v6 = [popularity.visitor_id(tokens, f"2001:db8:5:7::{n:x}", BROWSER_UA, day)
          for n in range(1, popularity.PER_NETWORK + 11)]
    counted = [store.record_view(db.session, b, v, DAY1) for v in v6]
    assert counted.count(True) == popularity.PER_NETWORK
    # Other networks, and the same network on another article, still count.
    assert store.record_view(db.session, a, popularity.visitor_id(
        tokens, "198.51.100.1", BROWSER_UA, day), DAY1)
    assert store.record_view(db.session, b, rotating[0], DAY1)
    db.session.commit()
    assert dict(store.ranking(db.session, days=1, now=DAY1, limit=5)) == {
        a: popularity.PER_NETWORK + 1.0, b: popularity.PER_NETWORK + 1.0}
