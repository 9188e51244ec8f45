"""Articles pushed by a CMS as JSON: our own small format, or WordPress REST post objects."""

from __future__ import annotations

from mailer.feeds.base import FeedError, Item, Parsed, parse_date, parse_each
from mailer.feeds.wordpress import parse_post

MAX_ARTICLES = 500

# field: what a pushed article may carry (all strings unless said otherwise)
FIELDS = {
    "url": "the article's public address (required)",
    "title": "plain text",
    "guid": "the CMS's own id for the article, stable across edits",
    "summary": "HTML or plain text; a plain-text summary is made from it",
    "content": "HTML; sanitized before it is kept",
    "author": "plain text",
    "categories": "a list of strings (or one comma-separated string)",
    "image_url": "the featured image",
    "published": "ISO 8601; without a time zone it is read as UTC",
    "updated": "ISO 8601; without a time zone it is read as UTC",
}


def parse_pushed(data) -> Parsed:
    """Items of a JSON body: one article, a list of them, or {"articles": [...]}."""
    if isinstance(data, dict) and "articles" in data:
        data = data["articles"]
    articles = data if isinstance(data, list) else [data]
    if not articles:
        raise FeedError("the body holds no articles")
    if len(articles) > MAX_ARTICLES:
        raise FeedError(f"send at most {MAX_ARTICLES} articles at a time")
    return parse_each(articles, _article)


def _looks_like_wordpress(obj: dict) -> bool:
    return isinstance(obj.get("title"), dict) or "_embedded" in obj or "date_gmt" in obj


def _article(obj) -> Item:
    if not isinstance(obj, dict):
        raise ValueError("an article must be a JSON object")
    if _looks_like_wordpress(obj):
        return parse_post(obj, None)
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}; known fields: {', '.join(FIELDS)}")
    text = {k: _text(obj, k) for k in FIELDS if k != "categories"}
    if not text["url"]:
        raise ValueError("url is required")
    dates = {}
    for key in ("published", "updated"):
        dates[key] = parse_date(text[key])
        if text[key] and dates[key] is None:
            raise ValueError(f"{key} is not an ISO 8601 date: {text[key][:40]!r}")
    return Item(
        link=text["url"],
        guid=text["guid"],
        title=text["title"] or "",
        summary_html=text["summary"] or "",
        content_html=text["content"] or "",
        author=text["author"],
        categories=_categories(obj.get("categories")),
        image_url=text["image_url"],
        published=dates["published"],
        updated=dates["updated"],
    )


def _text(obj: dict, key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    return value.strip() or None


def _categories(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [c.strip() for c in value.split(",") if c.strip()]
    if isinstance(value, list) and all(isinstance(c, str) for c in value):
        return value
    raise ValueError("categories must be a list of strings")
