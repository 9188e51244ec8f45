"""What every feed source produces: items, skipped items, fetch state, and the feed error."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from mailer.errors import MailerError

if TYPE_CHECKING:
    from mailer.feeds.http import Http


class FeedError(MailerError):
    """The feed cannot be fetched or parsed at all; nothing of it is ingested."""


@dataclass
class Item:
    """One article as a source describes it, before canonicalization and sanitizing."""

    link: str | None
    guid: str | None = None
    title: str = ""  # plain text
    summary_html: str = ""
    content_html: str = ""
    author: str | None = None
    categories: list[str] = field(default_factory=list)
    image_url: str | None = None
    published: datetime | None = None  # aware, UTC
    updated: datetime | None = None
    position: int = 0  # 1-based, in the order of the document (for skip reasons)


@dataclass
class Skipped:
    """An item left out, with the reason an operator can act on."""

    position: int  # 1-based, in the order of the document
    reason: str


@dataclass
class Parsed:
    items: list[Item] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    title: str | None = None


@dataclass
class FetchState:
    """What a source remembers between syncs (conditional GET, incremental REST)."""

    etag: str | None = None
    last_modified: str | None = None
    modified_after: datetime | None = None


@dataclass
class Fetched:
    parsed: Parsed | None  # None: the server said nothing changed (304)
    state: FetchState

    @property
    def not_modified(self) -> bool:
        return self.parsed is None


def parse_each(objects: Iterable, parse: Callable[[object], Item], first: int = 1) -> Parsed:
    """Items of a list of objects; one that `parse` refuses (ValueError) is skipped."""
    parsed = Parsed()
    for position, obj in enumerate(objects, first):
        try:
            item = parse(obj)
        except ValueError as e:
            parsed.skipped.append(Skipped(position, str(e)))
        else:
            item.position = position
            parsed.items.append(item)
    return parsed


class Source(Protocol):
    """A feed format: RSS/Atom, the WordPress REST API."""

    url: str
    kind: str

    def fetch(self, http: Http, state: FetchState) -> Fetched: ...


def utc_from_struct(value: time.struct_time | None) -> datetime | None:
    """feedparser's parsed dates are UTC struct_times."""
    if not value:
        return None
    try:
        return datetime(*value[:6], tzinfo=UTC)
    except (TypeError, ValueError):
        return None


def parse_date(raw: str | None) -> datetime | None:
    """An RFC 822 or ISO 8601 date as aware UTC; a date without a time zone is read as UTC."""
    if not raw or not raw.strip():
        return None
    raw = raw.strip()
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # year 1 east of UTC, or 9999 west of it: no such instant
        return None
