"""The WordPress REST API: /wp-json/wp/v2/posts?_embed, paged, incremental with modified_after."""

from __future__ import annotations

import html
import json
from datetime import timedelta
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from mailer.feeds.base import (
    FeedError,
    Fetched,
    FetchState,
    Item,
    Parsed,
    parse_date,
    parse_each,
)
from mailer.feeds.html import first_image, html_to_text

if TYPE_CHECKING:
    from mailer.feeds.http import Http

PER_PAGE = 100
MAX_PAGES = 100  # 10,000 posts a sync; the next sync continues from the newest one seen
# modified_after is compared with the site's local time on some WordPress versions; a day
# of overlap covers every time zone, and re-read posts only count as unchanged.
OVERLAP = timedelta(days=1)


def is_wordpress_api(url: str) -> bool:
    parts = urlsplit(url)
    return "/wp-json/" in parts.path + "/" or "rest_route=" in parts.query


class WordPressSource:
    """A WordPress site's posts endpoint, e.g. https://news.example/wp-json/wp/v2/posts."""

    kind = "wordpress"

    def __init__(self, url: str):
        self.url = url

    def fetch(self, http: Http, state: FetchState) -> Fetched:
        params = {"_embed": "1", "per_page": str(PER_PAGE), "orderby": "modified", "order": "asc"}
        if state.modified_after:
            since = (state.modified_after - OVERLAP).replace(tzinfo=None)
            params["modified_after"] = since.isoformat(timespec="seconds")
        parsed = Parsed()
        newest = state.modified_after
        page, pages = 1, 1
        while page <= pages:
            r = http.get(self.url, params={**params, "page": str(page)}, accept="application/json")
            posts = _json_list(r.body, self.url)
            if page == 1:
                pages = min(_total_pages(r.headers.get("x-wp-totalpages")), MAX_PAGES)
            offset = len(parsed.items) + len(parsed.skipped)
            page_parsed = parse_posts(posts, base=r.url, first_position=offset + 1)
            parsed.items += page_parsed.items
            parsed.skipped += page_parsed.skipped
            for post in posts:
                modified = parse_date(post.get("modified_gmt")) if isinstance(post, dict) else None
                if modified and (newest is None or modified > newest):
                    newest = modified
            page += 1
        return Fetched(parsed, FetchState(modified_after=newest))


def _json_list(body: bytes, url: str) -> list:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise FeedError(
            f"{url} did not answer with JSON: is it a WordPress posts endpoint?"
        ) from None
    if not isinstance(data, list):
        message = data.get("message") if isinstance(data, dict) else None
        detail = f": {message}" if isinstance(message, str) else ""
        raise FeedError(f"{url} did not answer with a list of posts{detail}")
    return data


def _total_pages(header: str | None) -> int:
    try:
        return max(1, int(header or 1))
    except ValueError:
        return 1


def parse_posts(posts: list, base: str | None, first_position: int = 1) -> Parsed:
    """Items of a list of REST post objects (as /wp/v2/posts?_embed returns them)."""
    return parse_each(posts, lambda post: parse_post(post, base), first_position)


def _rendered(post: dict, key: str) -> str:
    value = post.get(key)
    if isinstance(value, dict):
        value = value.get("rendered")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{key} is not text")
    return value


def parse_post(post, base: str | None) -> Item:
    """One REST post; ValueError says why it cannot be used."""
    if not isinstance(post, dict):
        raise ValueError("the post is not a JSON object")
    link = post.get("link")
    if not isinstance(link, str) or not link.strip():
        raise ValueError("the post has no link")
    link = urljoin(base, link.strip()) if base else link.strip()
    embedded = post.get("_embedded") if isinstance(post.get("_embedded"), dict) else {}
    excerpt, content = _rendered(post, "excerpt"), _rendered(post, "content")
    # date_gmt carries no zone and is UTC; `date` is the site's local time.
    published = parse_date(_str(post.get("date_gmt"))) or parse_date(_str(post.get("date")))
    return Item(
        link=link,
        guid=_rendered(post, "guid") or None,
        title=html_to_text(_rendered(post, "title")),
        summary_html=excerpt,
        content_html=content,
        author=_author(embedded),
        categories=_terms(embedded),
        image_url=first_image(excerpt) or first_image(content) or _featured(embedded),
        published=published,
        updated=parse_date(_str(post.get("modified_gmt"))),
    )


def _str(value) -> str | None:
    return value if isinstance(value, str) else None


def _list(value) -> list:
    # A site (or a CMS push) may send anything here; what is not a list holds nothing usable.
    return value if isinstance(value, list) else []


def _author(embedded: dict) -> str | None:
    for author in _list(embedded.get("author")):
        if isinstance(author, dict) and isinstance(author.get("name"), str):
            return html.unescape(author["name"]).strip() or None
    return None


def _terms(embedded: dict) -> list[str]:
    """Categories, then tags: RSS mixes both into <category> too."""
    names = []
    for group in _list(embedded.get("wp:term")):
        for term in group if isinstance(group, list) else ():
            if isinstance(term, dict) and term.get("taxonomy") in ("category", "post_tag"):
                if isinstance(term.get("name"), str):
                    names.append(html.unescape(term["name"]))
    return names


def _featured(embedded: dict) -> str | None:
    for media in _list(embedded.get("wp:featuredmedia")):
        if isinstance(media, dict) and isinstance(media.get("source_url"), str):
            if media.get("media_type", "image") == "image":
                return media["source_url"]
    return None
