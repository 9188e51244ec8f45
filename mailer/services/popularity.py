"""Article popularity: page views and digest clicks, each reader counted once per article per
UTC day, ranked over a rolling window of days whose weights favour recent days.

Two stores with the same behaviour: Redis in production (per-day sorted sets with expiry, a
per-day set of visitor/article pairs for de-duplication, rolled up daily into `article_stats`),
SQL in the embedded mode (`visitors_seen` and `article_stats` directly). A view and a click of
the same reader on the same day count once: the click brings the reader to the page whose
beacon then fires too. One network counts at most PER_NETWORK readers per article per day.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from mailer import redis_client
from mailer.clock import utcnow
from mailer.config import Settings
from mailer.models import Article, ArticleStat, VisitorSeen
from mailer.redis_client import Degrading
from mailer.services.articles import dialect_insert

log = logging.getLogger(__name__)

TIMEOUT = 0.5  # seconds: a reader's click, the beacon, a console page must not hang on Redis

# Substrings of user agents that are never a person reading: crawlers, link-preview fetchers
# (chat apps, social networks), headless browsers and automation, HTTP libraries and
# command-line clients, uptime monitors and mail security scanners.
_BOTS = re.compile(
    r"(?<!cu)bot\b|bot[/_;-]|crawl|spider|slurp|preview|facebookexternalhit|facebookcatalog"
    r"|meta-externalagent|whatsapp|embedly|quora link|outbrain|vkshare|w3c_validator"
    r"|headless|phantomjs|puppeteer|playwright|selenium|webdriver|lighthouse|pagespeed"
    r"|gtmetrix|pingdom|uptimerobot|statuscake|site24x7|curl|wget|httpie|python|httpx|aiohttp"
    r"|go-http-client|java/|okhttp|libwww|lwp-|perl|ruby|php/|axios|node-fetch|undici|scrapy"
    r"|postman|insomnia|feedfetcher|feedly|inoreader|newsblur|mediapartners|apis-google"
    r"|google-inspectiontool|googleother|google-read-aloud|yandex|baidu|applebot|petal"
    r"|semrush|ahrefs|mj12|dotbot|bytespider|gptbot|ccbot|claude|perplexity|amazonbot"
    r"|ia_archiver|archive\.org|nagios|zabbix|proofpoint|mimecast|barracuda|cloudmark"
    r"|symantec|trendmicro|forcepoint|safelinks",
    re.I,
)


@functools.lru_cache(maxsize=4096)
def is_bot(user_agent: str | None) -> bool:
    """True for agents that are not a person reading: known bots and preview fetchers,
    headless browsers, curl-like clients, and empty or non-browser user agents."""
    if not user_agent or not user_agent.strip():
        return True
    # Every browser and in-app web view announces itself as Mozilla/5.0 (Opera's old form
    # aside); anything else is a library or tool.
    if "mozilla/" not in user_agent.lower() and not user_agent.startswith("Opera/"):
        return True
    return _BOTS.search(user_agent) is not None


# At most this many readers of one network (an IPv4 address, an IPv6 /64) count for one
# article on one day: a script rotating user agents or IPv6 addresses gains little, while a
# large office or a mobile carrier's shared address still counts many people.
PER_NETWORK = 50
_NETWORK_CHARS = 12
_VISITOR = re.compile(r"[0-9a-f]{32}")


def _network(ip: str) -> str:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if address.version == 6 and address.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(getattr(address, "ipv4_mapped", None) or address)


def visitor_id(tokens, ip: str, user_agent: str, day: date) -> str:
    """A keyed hash of IP and user agent that changes every UTC day; the IP is never kept.

    32 hex digits: the first 12 hash the reader's network alone (for PER_NETWORK), the
    rest the address and the browser.
    """
    stamp = day.isoformat()
    network = tokens.keyed_hash("visitor-network", f"{stamp}\n{_network(ip)}")
    reader = tokens.keyed_hash("visitor", f"{stamp}\n{ip}\n{user_agent or ''}")
    return network[:_NETWORK_CHARS] + reader[: 32 - _NETWORK_CHARS]


def network_of(visitor: str) -> str | None:
    """The network part of a visitor id made by visitor_id (None for other ids)."""
    return visitor[:_NETWORK_CHARS] if _VISITOR.fullmatch(visitor) else None


def utc_day(at: datetime) -> date:
    return at.astimezone(UTC).date()


def day_weights(settings: Settings, days: int) -> list[float]:
    """Weight of each day of the window, today first: MAILER_POPULARITY_WEIGHTS (the last
    given weight repeats), or by default a linear decay from 1 (today) to 1/days."""
    given = list(settings.popularity_weights)
    if not given:
        return [(days - i) / days for i in range(days)]
    return [given[min(i, len(given) - 1)] for i in range(days)]


def _is_scanner(at: datetime, delivered_at: datetime | None, seconds: int) -> bool:
    # Mail security scanners follow every link within seconds of delivery; people do not.
    return delivered_at is not None and (at - delivered_at).total_seconds() < seconds


class Popularity:
    """What both stores do: count views and clicks, rank, roll up (the stores differ below)."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def record_click(self, session: Session, article_id: int, visitor: str, at: datetime,
                     delivered_at: datetime | None) -> bool:
        """Count a click from a digest email, unless a scanner made it right after delivery."""
        if _is_scanner(at, delivered_at, self.settings.scanner_seconds):
            return False
        return self._count(session, article_id, visitor, at, "clicks")

    def record_view(self, session: Session, article_id: int, visitor: str, at: datetime) -> bool:
        """Count a page view; True if counted (once per visitor per article per UTC day)."""
        return self._count(session, article_id, visitor, at, "views")

    def ranking(self, session: Session, *, days: int, now: datetime,
                limit: int) -> list[tuple[int, float]]:
        """Article ids with scores over the last `days` UTC days (today included), best first."""
        if days < 1 or limit < 1:
            return []
        today = utc_day(now)
        window = [today - timedelta(days=i) for i in range(days)]
        counts = self._sql_counts(session, window[-1], today)
        # Without the live counts (Redis down), the days rolled up into SQL rank alone.
        for key, n in (self._live_counts(window) or {}).items():
            # A rolled-up day is in both places with the same counts; after a lost Redis,
            # SQL keeps what was rolled up.
            counts[key] = max(counts.get(key, 0), n)
        weights = dict(zip(window, day_weights(self.settings, days), strict=True))
        scores: dict[int, float] = defaultdict(float)
        for (day, article_id), n in counts.items():
            scores[article_id] += weights[day] * n
        known = set(_existing(session, list(scores)))
        best = sorted(((i, round(s, 6)) for i, s in scores.items() if i in known and s > 0),
                      key=lambda pair: (-pair[1], -pair[0]))
        return best[:limit]

    def _sql_counts(self, session: Session, first: date, last: date) -> dict[tuple[date, int], int]:
        rows = session.execute(
            select(ArticleStat.day, ArticleStat.article_id, ArticleStat.views + ArticleStat.clicks)
            .where(ArticleStat.day >= first, ArticleStat.day <= last)
        )
        return {(day, article_id): n for day, article_id, n in rows}

    def _live_counts(self, window: list[date]) -> dict[tuple[date, int], int] | None:
        return {}

    def live_counts_missing(self) -> bool:
        """True while rankings are made without the counts not yet rolled up (today's,
        mostly): their store did not answer a moment ago."""
        return False


def _existing(session: Session, ids: list[int]) -> list[int]:
    found = []
    for i in range(0, len(ids), 1000):
        found += session.scalars(select(Article.id).where(Article.id.in_(ids[i : i + 1000])))
    return found


class SqlPopularity(Popularity):
    """The embedded mode's store: every counted view is a row in SQL at once."""

    def _count(self, session: Session, article_id: int, visitor: str, at: datetime,
               column: str) -> bool:
        day = utc_day(at)
        network = network_of(visitor)
        if network is not None:
            # Visitor ids start with their network's hash: a range scan of the primary key.
            readers = session.scalar(select(func.count()).select_from(VisitorSeen).where(
                VisitorSeen.day == day, VisitorSeen.article_id == article_id,
                VisitorSeen.visitor >= network, VisitorSeen.visitor < network + "g",
            ))
            if readers >= PER_NETWORK:
                return False
        # RETURNING tells whether the row went in (rowcount is not reliable for INSERTs).
        seen = session.execute(
            dialect_insert(session, VisitorSeen)
            .values(day=day, visitor=visitor, article_id=article_id)
            .on_conflict_do_nothing()
            .returning(VisitorSeen.day)
        ).first()
        if seen is None:
            return False
        insert = dialect_insert(session, ArticleStat).values(
            article_id=article_id, day=day, views=int(column == "views"),
            clicks=int(column == "clicks"),
        )
        session.execute(insert.on_conflict_do_update(
            index_elements=["article_id", "day"],
            set_={column: getattr(ArticleStat, column) + 1},
        ))
        return True

    def rollup(self, session: Session, day: date) -> int:
        """Counts are in SQL already; drop the de-duplication rows of finished days."""
        today = utc_day(utcnow())
        finished = min(day, today - timedelta(days=1))
        session.execute(delete(VisitorSeen).where(VisitorSeen.day <= finished))
        return session.scalar(
            select(func.count()).select_from(ArticleStat).where(ArticleStat.day == day)
        )


class RedisPopularity(Popularity):
    """Production store: one Lua call per view (de-duplicate, count, expire) on Redis.

    Counting and ranking degrade (redis_client.Degrading): with Redis down, restarting or
    stuck, one warning, at most one TIMEOUT per back-off, and meanwhile a view or a click is
    not counted and a ranking is made of the days rolled up into SQL. The reader still gets
    the article, the site's beacon its 204, the console and the API their pages. The
    roll-up does not degrade: its task fails and runs again (hourly, idempotent).
    """

    # KEYS: the day's seen-set, the day's counter, the day's readers per network and article.
    # ARGV: seen member, article id, expiry of the day's sets, expiry of the counter,
    # network field ('' when the visitor id has none), PER_NETWORK.
    _COUNT = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 0 end
if ARGV[5] ~= '' then
  local readers = redis.call('HINCRBY', KEYS[3], ARGV[5], 1)
  redis.call('EXPIRE', KEYS[3], ARGV[3])
  if readers > tonumber(ARGV[6]) then return 0 end
end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZINCRBY', KEYS[2], 1, ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self._live = Degrading("popularity counts", timeout=TIMEOUT, log=log,
                               health_check_interval=30)
        self.seen_ttl = int(timedelta(days=2).total_seconds())
        # Counters outlive the ranking window, so a roll-up missed for days loses nothing.
        self.count_ttl = int(timedelta(days=max(settings.popularity_days, 7) + 2).total_seconds())

    @property
    def redis(self):
        """This process's client for the roll-up (the store outlives a fork: a prefork
        worker, gunicorn's). Its failures raise: the roll-up's task runs again."""
        return redis_client.client(self.settings.redis_url, timeout=2, health_check_interval=30)

    @staticmethod
    def key(day: date, kind: str) -> str:
        # The braces make every key of a day land on one slot of a Redis Cluster.
        return f"mailer:pop:{{{day.isoformat()}}}:{kind}"

    def _count(self, session, article_id: int, visitor: str, at: datetime, column: str) -> bool:
        day = utc_day(at)
        network = network_of(visitor)

        def count(client):
            return redis_client.script(client, self._COUNT)(
                keys=[self.key(day, "seen"), self.key(day, column), self.key(day, "networks")],
                args=[f"{visitor}:{article_id}", article_id, self.seen_ttl, self.count_ttl,
                      f"{network}:{article_id}" if network else "", PER_NETWORK],
            )

        # None: Redis did not answer (or failed a moment ago). The view or click is then
        # not known to count and says so (False, a click's `counted`): a lost count, never
        # an error for the reader. A Redis that was only slow may still have counted it.
        return self._live.run(self.settings.redis_url, count) == 1

    def _day_counts(self, day: date) -> tuple[dict[int, int], dict[int, int]]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrange(self.key(day, "views"), 0, -1, withscores=True)
        pipe.zrange(self.key(day, "clicks"), 0, -1, withscores=True)
        views, clicks = pipe.execute()
        return ({int(m): int(s) for m, s in views}, {int(m): int(s) for m, s in clicks})

    def _live_counts(self, window: list[date]) -> dict[tuple[date, int], int] | None:
        def read(client):
            pipe = client.pipeline(transaction=False)
            for day in window:
                for kind in ("views", "clicks"):
                    pipe.zrange(self.key(day, kind), 0, -1, withscores=True)
            return pipe.execute()

        results = self._live.run(self.settings.redis_url, read)
        if results is None:
            return None
        counts: dict[tuple[date, int], int] = defaultdict(int)
        for i, day in enumerate(window):
            for member, score in results[2 * i] + results[2 * i + 1]:
                counts[(day, int(member))] += int(score)
        return counts

    def live_counts_missing(self) -> bool:
        return self._live.down(self.settings.redis_url)

    def rollup(self, session: Session, day: date) -> int:
        """Copy a day's counters into article_stats (idempotent: never lowers a count)."""
        views, clicks = self._day_counts(day)
        ids = set(_existing(session, sorted(set(views) | set(clicks))))
        if not ids:
            return 0
        rows = {r.article_id: r for r in session.scalars(
            select(ArticleStat).where(ArticleStat.day == day, ArticleStat.article_id.in_(ids))
        )}
        for article_id in ids:
            row = rows.get(article_id)
            if row is None:
                session.add(ArticleStat(article_id=article_id, day=day,
                                        views=views.get(article_id, 0),
                                        clicks=clicks.get(article_id, 0)))
            else:
                row.views = max(row.views, views.get(article_id, 0))
                row.clicks = max(row.clicks, clicks.get(article_id, 0))
        session.flush()
        return len(ids)


def store_from_settings(settings: Settings) -> Popularity:
    """Redis when MAILER_REDIS_URL is set, SQL in the embedded mode."""
    if settings.redis_url:
        return RedisPopularity(settings)
    return SqlPopularity(settings)
