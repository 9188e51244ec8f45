"""Helpers shared by the feed and article tests: a local feed server, feeds."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import func, select

from mailer.db import db
from mailer.models import Article
from tests.helpers.servers import ROOT

FEEDS = ROOT / "tests" / "fixtures" / "feeds"
WORDPRESS_POSTS = ROOT / "tests" / "fixtures" / "wordpress" / "posts.json"
BROWSER_UA = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15"
)


@dataclass
class Seen:
    """One request the server received."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]


# A route answers (status, headers, body); the body may be an iterable of chunks, sent
# without Content-Length (the connection closes at its end, as HTTP/1.0 allows).
Route = Callable[[Seen], tuple[int, dict, bytes | Iterable[bytes]]]


@dataclass
class FeedServer:
    """http.server on 127.0.0.1 in a thread, serving whatever the test puts on its routes."""

    routes: dict[str, Route] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def start(self) -> FeedServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                parts = urlsplit(self.path)
                request = Seen(parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()},
                               {k.lower(): v for k, v in self.headers.items()})
                server.seen.append(request)
                route = server.routes.get(parts.path)
                status, headers, body = route(request) if route else (404, {}, b"not here")
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    if isinstance(body, bytes):
                        self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    for chunk in [body] if isinstance(body, bytes) else body:
                        self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a size limit or a timeout): that is the point

            def log_message(self, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"

    def requests_to(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    def serve_feed(self, path: str, body: bytes, etag: str | None = None,
                   last_modified: str | None = None, delay: float = 0.0) -> None:
        """A feed that answers 304 to a matching If-None-Match, like most web servers."""
        headers = {"Content-Type": "application/rss+xml; charset=utf-8"}
        if etag:
            headers["ETag"] = etag
        if last_modified:
            headers["Last-Modified"] = last_modified

        def route(request: Seen):
            if delay:
                time.sleep(delay)
            if etag and request.headers.get("if-none-match") == etag:
                return 304, {"ETag": etag}, b""
            return 200, headers, body

        self.routes[path] = route

    def serve_wordpress(self, path: str, posts: list[dict], per_page: int = 2) -> None:
        """A WordPress posts endpoint: pages of `per_page`, modified_after honoured."""

        def route(request: Seen):
            chosen = posts
            if "modified_after" in request.query:
                after = datetime.fromisoformat(request.query["modified_after"])
                chosen = [p for p in posts if datetime.fromisoformat(p["modified_gmt"]) > after]
            chosen = sorted(chosen, key=lambda p: p["modified_gmt"])
            pages = max(1, -(-len(chosen) // per_page))
            page = int(request.query.get("page", "1"))
            if page > pages:
                body = {"code": "rest_post_invalid_page_number", "message": "The page number "
                        "requested is larger than the number of pages available."}
                return 400, {"Content-Type": "application/json"}, json.dumps(body).encode()
            start = (page - 1) * per_page
            return 200, {
                "Content-Type": "application/json; charset=UTF-8",
                "X-WP-Total": str(len(chosen)),
                "X-WP-TotalPages": str(pages),
            }, json.dumps(chosen[start : start + per_page]).encode()

        self.routes[path] = route


def article_count() -> int:
    db.session.remove()
    return db.session.scalar(select(func.count()).select_from(Article))


def all_articles() -> list[Article]:
    """Every article as committed, newest first (a fresh session sees other sessions' work)."""
    db.session.remove()
    return list(db.session.scalars(
        select(Article).order_by(Article.published_at.desc(), Article.id.desc())
    ))


def by_url(url: str) -> Article | None:
    db.session.remove()
    return db.session.scalar(select(Article).where(Article.url == url))


def rss(items: str, encoding: str = "UTF-8", link: str = "https://daily.example/") -> bytes:
    """A small RSS 2.0 document around hand-written <item>s."""
    return (
        f'<?xml version="1.0" encoding="{encoding}"?>\n'
        '<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/"'
        ' xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:media="http://search.yahoo.com/mrss/">'
        f"<channel><title>The Daily</title><link>{link}</link><description>News</description>"
        f"{items}</channel></rss>\n"
    ).encode("utf-8")
