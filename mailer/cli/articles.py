"""The site's articles: `mailer articles sync | list | popular`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from urllib.parse import urlsplit

import click
from sqlalchemy import select

from mailer.cli import Context, cli, fail, pass_ctx, progress
from mailer.clock import utcnow
from mailer.db import db
from mailer.feeds import FeedError, parse_document, source_for
from mailer.models import Article
from mailer.services import articles as svc
from mailer.services.articles import SyncReport


@cli.group()
def articles():
    """The site's articles: sync feeds, list them, rank them by popularity."""


def _is_url(value: str) -> bool:
    return urlsplit(value).scheme in ("http", "https")


def _show(label: str, outcome: dict, as_json: bool, several: bool) -> None:
    if as_json:
        return
    if outcome["status"] == "failed":
        if several:  # a single failure is the command's one-line reason instead
            click.echo(f"{label}: failed: {outcome['error']}", err=True)
        return
    click.echo(f"{label}: {outcome['summary']}")
    for skipped in outcome["skipped"]:
        click.echo(f"  item {skipped['item']} skipped: {skipped['reason']}", err=True)


def _outcome(report: SyncReport) -> dict:
    return {"status": "not_modified" if report.not_modified else "ok",
            "summary": report.summary(), **report.as_dict()}


def _sync_url(ctx: Context, url: str, full: bool) -> dict:
    from mailer.tasks.articles import fetch_source, http_client, store_fetched

    source = source_for(url)
    try:
        with http_client(ctx.settings) as http:
            fetched = fetch_source(source, http, full=full)
    except FeedError as e:
        return {"status": "failed", "error": str(e)}
    items = len(fetched.parsed.items) if fetched.parsed else 0
    with progress(length=items, label=f"Syncing {url}") as bar:
        report = store_fetched(source, fetched, on_item=lambda: bar.update(1))
    return _outcome(report)


def _sync_file(ctx: Context, path: Path) -> dict:
    limit = ctx.settings.feed_max_bytes
    if path.stat().st_size > limit:
        return {"status": "failed",
                "error": f"larger than the limit of {limit} bytes (MAILER_FEED_MAX_BYTES)"}
    try:
        parsed = parse_document(path.read_bytes())
    except FeedError as e:
        return {"status": "failed", "error": str(e)}
    with progress(length=len(parsed.items), label=f"Syncing {path.name}") as bar:
        with db.transaction() as s:
            report = svc.ingest(s, parsed, source=f"file:{path.name}",
                                on_item=lambda: bar.update(1))
    return _outcome(report)


@articles.command("sync")
@click.argument("source", required=False)
@click.option("--full", is_flag=True,
              help="Read everything again: ignore the saved ETag, Last-Modified and the "
                   "WordPress modified_after of earlier syncs.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def sync(ctx: Context, source: str | None, full: bool, as_json: bool):
    """Ingest a feed: SOURCE is an RSS/Atom or WordPress REST URL, or a saved feed file.

    Without SOURCE, every feed of MAILER_FEEDS is synced. New articles are added, changed
    ones updated; malformed items are skipped with their reason, and a feed that cannot be
    read at all changes nothing and makes the command exit 1.
    """
    if source is None:
        if not ctx.settings.feeds:
            fail("no SOURCE given and MAILER_FEEDS is empty: pass a feed URL or file")
        targets = list(ctx.settings.feeds)
    elif _is_url(source):
        targets = [source]
    elif Path(source).is_file():
        targets = [Path(source)]
    else:
        fail(f"{source} is neither an http(s) address nor a readable file")
    # The command reports skipped items itself; the service's warnings would repeat them.
    logging.getLogger("mailer.services.articles").addHandler(logging.NullHandler())

    results = []
    with ctx.app.app_context():
        for target in targets:
            label = str(target)
            outcome = (_sync_file(ctx, target) if isinstance(target, Path)
                       else _sync_url(ctx, target, full))
            _show(label, outcome, as_json, several=len(targets) > 1)
            results.append({"source": label, **outcome})
    failed = [r for r in results if r["status"] == "failed"]
    total = {key: sum(r.get(key, 0) for r in results) for key in ("new", "updated", "unchanged")}
    if as_json:
        click.echo(json.dumps({**total, "feeds": results}, indent=2))
    elif len(targets) > 1:
        click.echo(f"all feeds: {total['new']} new, {total['updated']} updated, "
                   f"{total['unchanged']} unchanged, {len(failed)} failed")
    if failed:
        only = failed[0]
        fail(f"{only['source']}: {only['error']}" if len(targets) == 1
             else f"{len(failed)} of {len(targets)} feeds failed")


def _when(d) -> str:
    return d.strftime("%Y-%m-%d %H:%M") if d else "-"


@articles.command("list")
@click.option("--limit", type=click.IntRange(min=1), help="Show only the newest N.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def list_(ctx: Context, limit: int | None, as_json: bool):
    """List articles, newest first (all of them unless --limit); times are UTC."""
    with ctx.app.app_context(), db.transaction() as s:
        rows = svc.newest(s, limit)
        items = [svc.as_dict(a, ctx.settings) for a in rows]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("No articles yet. Run `mailer articles sync URL`, or set MAILER_FEEDS and "
                   "the scheduler syncs them.")
        return
    click.echo(f"{'ID':>6}  {'PUBLISHED (UTC)':16}  TITLE")
    for a, item in zip(rows, items, strict=True):
        click.echo(f"{a.id:>6}  {_when(a.published_at):16}  {svc.shorten(a.title, 70)}")
        click.echo(f"{'':>6}  {'':16}  {item['url']}")


@articles.command("popular")
@click.option("--days", type=click.IntRange(1, 366),
              help="Length of the rolling window in days (default: MAILER_POPULARITY_DAYS, 7).")
@click.option("--limit", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def popular(ctx: Context, days: int | None, limit: int, as_json: bool):
    """The most read articles: page views and digest clicks, once per reader per day,
    recent days weighted more (MAILER_POPULARITY_WEIGHTS)."""
    days = days or ctx.settings.popularity_days
    with ctx.app.app_context(), db.transaction() as s:
        ranking = ctx.runtime.popularity.ranking(s, days=days, now=utcnow(), limit=limit)
        by_id = {a.id: a for a in s.scalars(
            select(Article).where(Article.id.in_([i for i, _ in ranking]))
        )}
        items = [{"rank": rank, "score": score, **svc.as_dict(by_id[article_id], ctx.settings)}
                 for rank, (article_id, score) in enumerate(ranking, 1)]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo(f"No counted page views or clicks in the last {days} days. Add the beacon "
                   "snippet (/static/beacon.js) to the site's article template.")
        return
    click.echo(f"{'RANK':>4}  {'SCORE':>8}  {'ID':>6}  TITLE")
    for item in items:
        click.echo(f"{item['rank']:>4}  {item['score']:>8.2f}  {item['id']:>6}  "
                   f"{svc.shorten(item['title'], 60)}")
