"""The site's articles: canonical URLs, sanitized content, de-duplicated upserts, sections."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from urllib.parse import quote, unquote_plus, urljoin, urlsplit, urlunsplit

from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from mailer.clock import utcnow
from mailer.config import Settings
from mailer.feeds import Fetched, FetchState, Item, Parsed, Skipped
from mailer.feeds.html import html_to_text
from mailer.models import Article, Feed
from mailer.services.summaries import strip_filler

log = logging.getLogger(__name__)

URL_MAX = 2000
TITLE_MAX = 500
AUTHOR_MAX = 200
SUMMARY_MAX = 400
DERIVED_TITLE_MAX = 80
CATEGORY_MAX, CATEGORIES_MAX = 100, 50
# Click ids that only say where a reader came from; like utm_*, never part of an address.
TRACKING_PARAMS = {"fbclid", "gclid", "dclid", "msclkid", "mc_cid", "mc_eid", "_hsenc", "_hsmi"}
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_LINK_SCHEMES = {"http", "https", "mailto"}
# Added to nh3's own allow-list (nh3 is imported where it cleans: a process that only sends
# never loads it).
_LINK_ATTRIBUTES = {"a": {"href", "hreflang", "title"},
                    "img": {"src", "alt", "title", "width", "height"}}
# WordPress ends excerpts with "[…]" and Yoast SEO appends "The post … appeared first on …".


def dialect_insert(session: Session, model):
    """INSERT with ON CONFLICT support on both PostgreSQL and SQLite."""
    name = session.get_bind().dialect.name
    return (postgresql.insert if name == "postgresql" else sqlite.insert)(model)


# --- addresses and text -------------------------------------------------------------------


def canonical_url(url: str | None, base: str | None = None) -> str | None:
    """The address an article is known by: absolute http(s), lower-case host, no default port,
    no fragment, no utm_* or click-id parameters. None when it is no web address."""
    if not url or not url.strip():
        return None
    url = url.strip()
    if base:
        url = urljoin(base, url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port in (None, 80 if scheme == "http" else 443) else f"{host}:{port}"
    # Parameters are filtered as written, not re-encoded: re-encoding could change the address.
    query = "&".join(
        p for p in parts.query.split("&")
        if p and not _is_tracking(unquote_plus(p.partition("=")[0]).lower())
    )
    path = quote(parts.path or "/", safe=_PATH_SAFE)
    return urlunsplit((scheme, netloc, path, query, ""))


def _is_tracking(key: str) -> bool:
    return key.startswith("utm_") or key in TRACKING_PARAMS


def sanitize_html(markup: str | None, base: str | None) -> str:
    """Safe HTML for pages and email: nh3's allow-list; links and images made absolute."""
    if not markup:
        return ""

    def absolute(tag: str, attr: str, value: str) -> str | None:
        if attr not in ("href", "src"):
            return value
        resolved = urljoin(base, value.strip()) if base else value.strip()
        # nh3 checks schemes before this filter, so a resolved value is checked here again.
        return resolved if urlsplit(resolved).scheme.lower() in _LINK_SCHEMES else None

    import nh3

    return nh3.clean(markup, attributes={**nh3.ALLOWED_ATTRIBUTES, **_LINK_ATTRIBUTES},
                     url_schemes=_LINK_SCHEMES,
                     attribute_filter=absolute).strip()


def shorten(text: str, limit: int) -> str:
    """Cut at a word boundary and end with an ellipsis when the text is longer than limit."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-–—") + "…"


def summary_text(summary_html: str, content_html: str) -> str:
    """A plain-text summary of at most SUMMARY_MAX characters."""
    text = html_to_text(summary_html) or html_to_text(content_html)
    return shorten(strip_filler(text), SUMMARY_MAX)


def sections_for(categories: Iterable[str], settings: Settings) -> set[str]:
    """Section slugs for feed categories via settings.section_map (case-insensitive)."""
    mapping: dict[str, set[str]] = {}
    for category, slug in settings.section_map:
        mapping.setdefault(category.strip().casefold(), set()).add(slug)
    found: set[str] = set()
    for category in categories or ():
        found |= mapping.get(category.strip().casefold(), set())
    return found


# --- ingestion ---------------------------------------------------------------------------


@dataclass
class SyncReport:
    """What one sync did; `skipped` lists malformed and duplicate items with their reasons."""

    new: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)  # articles created or changed
    not_modified: bool = False

    def summary(self) -> str:
        if self.not_modified:
            return "not modified since the last sync: nothing to do"
        left_out = self.unchanged + len(self.skipped)
        return (f"{self.new} new, {self.updated} updated, {left_out} skipped "
                f"({self.unchanged} unchanged, {len(self.skipped)} malformed or duplicate)")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["skipped"] = [{"item": s.position, "reason": s.reason} for s in self.skipped]
        return d


def _without_nul(item: Item) -> Item:
    """The item without NUL characters: PostgreSQL text cannot hold them (a 500 on push)."""
    def clean(value):
        return value.replace("\x00", "") if isinstance(value, str) else value

    return replace(
        item, link=clean(item.link), guid=clean(item.guid), title=clean(item.title),
        summary_html=clean(item.summary_html), content_html=clean(item.content_html),
        author=clean(item.author), image_url=clean(item.image_url),
        categories=[clean(c) for c in item.categories],
    )


def prepare(item: Item) -> dict:
    """Column values for an item; ValueError says why the item cannot be used."""
    item = _without_nul(item)
    url = canonical_url(item.link)
    if url is None:
        raise ValueError(f"no usable link ({item.link!r})" if item.link else "no link")
    if len(url) > URL_MAX:
        raise ValueError(f"the link is longer than {URL_MAX} characters")
    summary = summary_text(item.summary_html, item.content_html)
    title = " ".join((item.title or "").split())
    if not title:
        # Microblog posts have no title (manton.rss); the start of the text stands in.
        title = shorten(summary.removesuffix("…"), DERIVED_TITLE_MAX)
        if not title:
            raise ValueError("neither a title nor any text")
    guid = (item.guid or "").strip() or None
    image = canonical_image(item.image_url, url)
    author = " ".join((item.author or "").split())
    return {
        "url": url,
        "guid": guid if guid and len(guid) <= URL_MAX else None,
        "title": shorten(title, TITLE_MAX),
        "summary": summary,
        "content": sanitize_html(item.content_html or item.summary_html, url),
        "author": shorten(author, AUTHOR_MAX) or None,
        "categories": _categories(item.categories),
        "image_url": image,
        "published_at": item.published or item.updated,
        # An article never changed was last updated when it was published (RSS has no
        # update date; Atom repeats the publication date).
        "updated_at": item.updated or item.published,
    }


def canonical_image(src: str | None, base: str) -> str | None:
    if not src:
        return None
    absolute = urljoin(base, src.strip())
    if urlsplit(absolute).scheme not in ("http", "https") or len(absolute) > URL_MAX:
        return None
    return absolute


def _categories(raw: Iterable[str]) -> list[str]:
    seen, out = set(), []
    for c in raw:
        c = " ".join(c.split())[:CATEGORY_MAX]
        if c and c.casefold() not in seen:
            seen.add(c.casefold())
            out.append(c)
    return out[:CATEGORIES_MAX]


# An item that carries no value keeps what the article had (an excerpt-only feed does not
# erase the content a CMS pushed).
_KEEP_IF_EMPTY = ("summary", "content", "author", "image_url", "guid", "published_at", "updated_at")


def _merge(article: Article, values: dict) -> bool:
    if article.updated_at and values["updated_at"] and values["updated_at"] < article.updated_at:
        return False  # an older copy of the article (a cached feed after a CMS push)
    changed = False
    for key, value in values.items():
        if key in _KEEP_IF_EMPTY and not value:
            continue
        if getattr(article, key) != value:
            setattr(article, key, value)
            changed = True
    return changed


def _chunks(values: list, size: int = 500):
    for i in range(0, len(values), size):
        yield values[i : i + size]


def ingest(session: Session, parsed: Parsed, *, source: str, now: datetime | None = None,
           on_item: Callable[[], object] | None = None) -> SyncReport:
    """Insert new articles and update changed ones; de-duplicated by canonical URL and guid."""
    now = now or utcnow()
    report = SyncReport(skipped=list(parsed.skipped))
    prepared: list[tuple[int, dict]] = []
    first_of: dict[tuple[str, str], int] = {}
    for item in parsed.items:
        try:
            values = prepare(item)
        except ValueError as e:
            report.skipped.append(Skipped(item.position, str(e)))
            continue
        keys = [("link", values["url"])] + ([("guid", values["guid"])] if values["guid"] else [])
        dup = next((k for k in keys if k in first_of), None)
        if dup:
            report.skipped.append(Skipped(item.position, f"same {dup[0]} as item {first_of[dup]}"))
            continue
        first_of.update({k: item.position for k in keys})
        prepared.append((item.position, values))

    urls = [v["url"] for _, v in prepared]
    guids = [v["guid"] for _, v in prepared if v["guid"]]
    by_url: dict[str, Article] = {}
    by_guid: dict[str, Article] = {}
    for chunk in _chunks(urls):
        found = session.scalars(select(Article).where(Article.url.in_(chunk)))
        by_url.update((a.url, a) for a in found)
    for chunk in _chunks(guids):
        for a in session.scalars(select(Article).where(Article.guid.in_(chunk))):
            by_guid.setdefault(a.guid, a)

    touched: dict[int, int] = {}  # id(article) -> position that matched it
    changed: list[Article] = []
    for position, values in prepared:
        article = by_url.get(values["url"]) or by_guid.get(values["guid"] or "")
        if article is None:
            values["published_at"] = values["published_at"] or now
            article = Article(**values, source=source[:URL_MAX])
            session.add(article)
            report.new += 1
            changed.append(article)
        elif id(article) in touched:
            report.skipped.append(
                Skipped(position, f"the same article as item {touched[id(article)]}")
            )
        elif _merge(article, values):
            report.updated += 1
            changed.append(article)
        else:
            report.unchanged += 1
        touched.setdefault(id(article), position)
        if on_item:
            on_item()
    session.flush()
    report.ids = [a.id for a in changed]
    report.skipped.sort(key=lambda s: s.position)
    for s in report.skipped:
        log.warning("%s: item %d skipped: %s", source, s.position, s.reason)
    return report


# --- reading -----------------------------------------------------------------------------


def newest(session: Session, limit: int | None = None) -> list[Article]:
    """Articles, newest published first."""
    query = select(Article).order_by(Article.published_at.desc(), Article.id.desc())
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def id_for_url(session: Session, url: str) -> int | None:
    """The article a page address belongs to, tolerant of a trailing slash and utm_* params."""
    canonical = canonical_url(url)
    if canonical is None:
        return None
    parts = urlsplit(canonical)
    path = parts.path
    other = path[:-1] if path.endswith("/") and len(path) > 1 else path + "/"
    candidates = [canonical, urlunsplit(parts._replace(path=other))]
    rows = session.execute(select(Article.url, Article.id).where(Article.url.in_(candidates))).all()
    found = dict(rows)
    return next((found[c] for c in candidates if c in found), None)


def as_dict(article: Article, settings: Settings) -> dict:
    """The public view of an article (CLI --json and the API); content left out."""
    iso = lambda d: d.isoformat() if d else None  # noqa: E731
    return {
        "id": article.id,
        "url": article.url,
        "title": article.title,
        "summary": article.summary,
        "author": article.author,
        "categories": article.categories,
        "sections": sorted(sections_for(article.categories, settings)),
        "image_url": article.image_url,
        "published_at": iso(article.published_at),
        "updated_at": iso(article.updated_at),
        "source": article.source,
    }


# --- fetch state of configured feeds -------------------------------------------------------


def _ensure_feed(session: Session, url: str, kind: str) -> None:
    session.execute(
        dialect_insert(session, Feed).values(url=url, kind=kind).on_conflict_do_nothing(
            index_elements=["url"]
        )
    )


def claim_feed(session: Session, url: str, kind: str, now: datetime, every: timedelta) -> bool:
    """Take the next sync of a feed: False when another worker or beat checked it recently."""
    _ensure_feed(session, url, kind)
    return session.execute(
        update(Feed)
        .where(Feed.url == url,
               or_(Feed.last_checked_at.is_(None), Feed.last_checked_at <= now - every / 2))
        .values(last_checked_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount == 1


def newest_published(session: Session) -> datetime | None:
    """When the newest article we hold was published (None: no article at all)."""
    return session.scalar(select(func.max(Article.published_at)))


def feeds_never_checked(session: Session, urls: Iterable[str]) -> list[str]:
    """The feeds among `urls` that no process has fetched (or started to fetch) yet."""
    urls = list(urls)
    checked = set(session.scalars(
        select(Feed.url).where(Feed.url.in_(urls), Feed.last_checked_at.is_not(None))
    ))
    return [u for u in urls if u not in checked]


@dataclass(frozen=True)
class FeedStatus:
    url: str
    kind: str
    last_checked_at: datetime | None
    last_success_at: datetime | None
    last_error: str | None
    articles: int


def feed_statuses(session: Session, urls: Iterable[str]) -> list[FeedStatus]:
    """Each configured feed with its last sync, its outcome and how many articles it gave."""
    urls = list(urls)
    feeds = {f.url: f for f in session.scalars(select(Feed).where(Feed.url.in_(urls)))}
    counts = dict(session.execute(
        select(Article.source, func.count()).where(Article.source.in_(urls))
        .group_by(Article.source)
    ).all())
    out = []
    for url in urls:
        f = feeds.get(url)
        out.append(FeedStatus(
            url=url, kind=f.kind if f else "", last_checked_at=f and f.last_checked_at,
            last_success_at=f and f.last_success_at, last_error=f and f.last_error,
            articles=counts.get(url, 0),
        ))
    return out


def feed_state(session: Session, url: str) -> FetchState:
    feed = session.scalar(select(Feed).where(Feed.url == url))
    if feed is None:
        return FetchState()
    return FetchState(feed.etag, feed.last_modified, feed.modified_after)


def record_fetch(session: Session, url: str, kind: str, fetched: Fetched, now: datetime) -> None:
    _ensure_feed(session, url, kind)
    values = {"last_checked_at": now, "last_success_at": now, "last_error": None, "kind": kind}
    if not fetched.not_modified:
        state = fetched.state
        values.update(etag=(state.etag or None) and state.etag[:500],
                      last_modified=(state.last_modified or None) and state.last_modified[:100],
                      modified_after=state.modified_after)
    session.execute(update(Feed).where(Feed.url == url).values(**values)
                    .execution_options(synchronize_session=False))


def record_failure(session: Session, url: str, kind: str, message: str, now: datetime) -> None:
    _ensure_feed(session, url, kind)
    session.execute(update(Feed).where(Feed.url == url)
                    .values(last_checked_at=now, last_error=message[:1000])
                    .execution_options(synchronize_session=False))
