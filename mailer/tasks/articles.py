"""Feed sync and the popularity roll-up, periodic through the beat; also used by the CLI."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from celery import shared_task

from mailer.clock import utcnow
from mailer.config import Settings
from mailer.db import db
from mailer.feeds import FeedError, Fetched, FetchState, Source, source_for
from mailer.runtime import runtime
from mailer.services import articles
from mailer.services.articles import SyncReport
from mailer.tasks.base import enqueue, register_tick_step

if TYPE_CHECKING:
    from mailer.feeds.http import Http

log = logging.getLogger(__name__)


def http_client(settings: Settings) -> Http:
    # Imported here: a worker that only sends never loads the HTTP client.
    from mailer.feeds.http import Http

    return Http(timeout=settings.feed_timeout, max_bytes=settings.feed_max_bytes,
                user_agent=f"mailer feed reader (+{settings.base_url})")


def fetch_source(source: Source, http: Http, *, full: bool = False, now: datetime | None = None,
                 claim_every: timedelta | None = None) -> Fetched | None:
    """Fetch outside any transaction; None when another process has this sync already.

    A failure is noted on the feed (last_error) and raised as FeedError.
    """
    now = now or utcnow()
    with db.transaction() as s:
        if claim_every and not articles.claim_feed(s, source.url, source.kind, now, claim_every):
            return None
        state = FetchState() if full else articles.feed_state(s, source.url)
    try:
        return source.fetch(http, state)
    except FeedError as e:
        with db.transaction() as s:
            articles.record_failure(s, source.url, source.kind, str(e), now)
        raise


def store_fetched(source: Source, fetched: Fetched, *, now: datetime | None = None,
                  on_item: Callable[[], object] | None = None) -> SyncReport:
    """One transaction per feed: every article of it and its fetch state, or nothing."""
    now = now or utcnow()
    with db.transaction() as s:
        if fetched.not_modified:
            report = SyncReport(not_modified=True)
        else:
            report = articles.ingest(s, fetched.parsed, source=source.url, now=now, on_item=on_item)
        articles.record_fetch(s, source.url, source.kind, fetched, now)
    return report


@shared_task(name="mailer.sync_feeds", acks_late=False)
def sync_feeds(urls: list[str] | None = None, every_seconds: float | None = None) -> dict:
    """Sync every feed of MAILER_FEEDS (or the ones named) that no other process synced in
    the last half period (or the last `every_seconds` / 2: "Sync now" asks for a fresh one)."""
    settings = runtime().settings
    every = (timedelta(seconds=every_seconds) if every_seconds is not None
             else timedelta(minutes=max(settings.feed_sync_minutes, 1)))
    done = {}
    with http_client(settings) as http:
        for url in urls if urls is not None else settings.feeds:
            source = source_for(url)
            try:
                fetched = fetch_source(source, http, claim_every=every)
                if fetched is None:
                    done[url] = "synced elsewhere"
                    continue
                done[url] = store_fetched(source, fetched).summary()
            except FeedError as e:
                log.warning("feed %s: %s", url, e)
                done[url] = f"failed: {e}"
    return done


def sync_new_feeds() -> int:
    """A tick step: hand out a sync of the configured feeds never checked yet, so a fresh
    install (or a feed just added to MAILER_FEEDS) has articles within a tick, not after
    the first sync period."""
    settings = runtime().settings
    if not settings.feeds:
        return 0
    with db.transaction() as s:
        new = articles.feeds_never_checked(s, settings.feeds)
    if new:
        enqueue(sync_feeds, new)
    return len(new)


register_tick_step(sync_new_feeds)


def rollup_window(now: datetime | None = None) -> int:
    """Roll every finished day of the window into SQL; idempotent, so running it hourly
    makes a missed night cost nothing."""
    rt = runtime()
    today = (now or utcnow()).date()
    days = max(rt.settings.popularity_days, 1)
    written = 0
    with db.transaction() as s:
        for back in range(days, 0, -1):
            written += rt.popularity.rollup(s, today - timedelta(days=back))
    return written


@shared_task(name="mailer.popularity_rollup", acks_late=False)
def popularity_rollup() -> int:
    return rollup_window()
