"""Feed sources: fetching (our own HTTP client) and parsing of RSS/Atom and WordPress REST.

No database and no Flask here: a source turns a URL (or bytes) into `Item`s; the articles
service canonicalizes, sanitizes and stores them.
"""

from __future__ import annotations

import json

from mailer.feeds.base import (
    FeedError,
    Fetched,
    FetchState,
    Item,
    Parsed,
    Skipped,
    Source,
    parse_date,
)
from mailer.feeds.rss import FeedSource, parse_feed
from mailer.feeds.wordpress import WordPressSource, is_wordpress_api, parse_posts

__all__ = [
    "FeedError", "FeedSource", "Fetched", "FetchState", "Http", "Item", "Parsed", "Skipped",
    "Source", "WordPressSource", "parse_date", "parse_document", "source_for",
]


def __getattr__(name: str):
    # The HTTP client loads on first use: httpx (with the command-line helpers it imports)
    # is a fifth of a sending worker's memory, and a sending worker never fetches a feed.
    if name == "Http":
        from mailer.feeds.http import Http

        return Http
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def source_for(url: str) -> Source:
    """The source reading a configured URL: WordPress REST for /wp-json/ URLs, else RSS/Atom."""
    return WordPressSource(url) if is_wordpress_api(url) else FeedSource(url)


def parse_document(body: bytes, base: str | None = None) -> Parsed:
    """A saved feed: RSS/Atom, or the JSON a WordPress posts endpoint answers."""
    head = body.lstrip()[:1]
    if head in (b"[", b"{"):
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as e:
            raise FeedError(f"this is neither a feed nor valid JSON ({e})") from None
        if not isinstance(data, list):
            raise FeedError("JSON files must hold a list of WordPress posts")
        return parse_posts(data, base)
    return parse_feed(body, base)
