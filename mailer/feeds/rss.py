"""RSS 2.0 and Atom 1.0: fetched with conditional GET, parsed from bytes with feedparser."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import urljoin

from mailer.feeds.base import (
    FeedError,
    Fetched,
    FetchState,
    Item,
    Parsed,
    parse_date,
    utc_from_struct,
)
from mailer.feeds.html import first_image, html_to_text

if TYPE_CHECKING:
    from mailer.feeds.http import Http

ACCEPT = ("application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.8, "
          "*/*;q=0.1")
IMAGE_EXT = re.compile(r"\.(jpe?g|png|gif|webp|avif)(\?|$)", re.I)
# The closing tag of the root element, perhaps followed by comments (WP Super Cache adds one):
# a body without it was cut off on the way.
_ROOT_END = re.compile(
    rb"</\s*(?:[\w.-]+:)?(?:rss|feed|RDF)\s*>(?:\s|<!--.*?-->|<\?.*?\?>)*$", re.S
)


class FeedSource:
    """An RSS or Atom feed at a URL."""

    kind = "feed"

    def __init__(self, url: str):
        self.url = url

    def fetch(self, http: Http, state: FetchState) -> Fetched:
        r = http.get(self.url, accept=ACCEPT, etag=state.etag, last_modified=state.last_modified)
        if r.status == 304:
            return Fetched(None, state)
        return Fetched(
            parse_feed(r.body, base=r.url),
            FetchState(etag=r.etag, last_modified=r.last_modified),
        )


def parse_feed(body: bytes, base: str | None = None) -> Parsed:
    """Items of an RSS/Atom document; FeedError when the body is no feed at all or cut off."""
    # The content type is set so that feedparser takes the encoding from the XML
    # declaration (and its own detection), never from a server's often wrong charset.
    headers = {"content-type": "application/xml"}
    if base:
        headers["content-location"] = base
    # Our own sanitizer (nh3) and URL resolution run later; feedparser's are slow and redundant.
    import feedparser  # loaded when a feed is parsed, not by every process that knows feeds

    d = feedparser.parse(body, sanitize_html=False, resolve_relative_uris=False,
                         response_headers=headers)
    if not d.get("version"):
        reason = d.get("bozo_exception")
        detail = f" ({reason})" if reason else ""
        raise FeedError(f"this is not an RSS or Atom feed{detail}")
    if d.get("bozo") and not _ROOT_END.search(body[-4096:]):
        # feedparser's lenient parser would still return the items before the cut, the last
        # one truncated mid-text; a half-downloaded feed is refused whole instead.
        raise FeedError(f"the feed is cut off before its end ({d.get('bozo_exception')})")
    site = d.feed.get("link")
    if base and site:
        site = urljoin(base, site)
    parsed = Parsed(title=html_to_text(d.feed.get("title")) or None)
    for position, entry in enumerate(d.entries, 1):
        item = _item(entry, base or site)
        item.position = position
        parsed.items.append(item)
    return parsed


def _text(entry, key: str) -> str:
    detail = entry.get(f"{key}_detail") or {}
    value = entry.get(key) or ""
    if detail.get("type") == "text/plain":
        return " ".join(value.split())
    return html_to_text(value)


def _item(entry, base: str | None) -> Item:
    link = entry.get("link")
    if link and base:
        link = urljoin(base, link)
    contents = entry.get("content") or []
    content = next((c.value for c in contents if "html" in (c.get("type") or "")), None)
    if content is None and contents:
        content = contents[0].value
    summary = entry.get("summary") or ""
    if summary and summary == content:
        summary = ""
    detail = entry.get("author_detail") or {}
    author = detail.get("name") or entry.get("author")
    categories = [t.get("term") or t.get("label") for t in entry.get("tags") or ()]
    return Item(
        link=link,
        guid=entry.get("id") or None,
        title=_text(entry, "title"),
        summary_html=summary,
        content_html=content or "",
        author=author.strip() if author else None,
        categories=[c for c in categories if c],
        image_url=_image(entry, summary, content),
        published=utc_from_struct(entry.get("published_parsed"))
        or parse_date(entry.get("published")),
        # dict.get: feedparser's own get() answers `published` for a missing `updated`, with
        # a deprecation warning; a missing update date stays missing here.
        updated=utc_from_struct(dict.get(entry, "updated_parsed"))
        or parse_date(dict.get(entry, "updated")),
    )


def _image(entry, summary: str, content: str | None) -> str | None:
    """Featured image: media:content/thumbnail, an image enclosure, then the first picture."""
    for media in entry.get("media_content") or ():
        url = media.get("url")
        if url and _is_image(media.get("medium") or media.get("type") or "", url):
            return url
    for thumb in entry.get("media_thumbnail") or ():
        if thumb.get("url"):
            return thumb["url"]
    for enclosure in entry.get("enclosures") or ():
        url = enclosure.get("href") or enclosure.get("url")
        if url and _is_image(enclosure.get("type") or "", url):
            return url
    return first_image(summary) or first_image(content)


def _is_image(kind: str, url: str) -> bool:
    """A media type or medium that says image; without one, an image file name."""
    if kind:
        return kind == "image" or kind.startswith("image/")
    return IMAGE_EXT.search(url) is not None
