"""Our own HTTP fetching for feeds: timeouts, a size limit, conditional GET."""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from mailer.feeds.base import FeedError

CHUNK = 64 * 1024


@dataclass
class Response:
    status: int
    body: bytes
    url: str  # after redirects
    headers: httpx.Headers

    @property
    def etag(self) -> str | None:
        return self.headers.get("etag")

    @property
    def last_modified(self) -> str | None:
        return self.headers.get("last-modified")


class Http:
    """One client per sync: reused connections across pages, closed by the context manager.

    `timeout` bounds every connect and read, and the whole body download too, so a server
    that trickles bytes cannot hold a worker. `max_bytes` bounds the decompressed body.
    """

    def __init__(self, timeout: float = 20.0, max_bytes: int = 10 * 1024 * 1024,
                 user_agent: str = "mailer feed reader"):
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            follow_redirects=True,
            max_redirects=5,
            headers={"User-Agent": user_agent, "Accept-Encoding": "gzip, deflate"},
        )

    def __enter__(self) -> Http:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def get(self, url: str, *, params: dict | None = None, accept: str = "*/*",
            etag: str | None = None, last_modified: str | None = None) -> Response:
        """GET a URL; 304 comes back as a Response, every other failure as a FeedError."""
        if urlsplit(url).scheme not in ("http", "https"):
            raise FeedError(f"{url} is not an http(s) address")
        headers = {"Accept": accept}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        deadline = time.monotonic() + self.timeout
        try:
            with self._client.stream("GET", url, params=params, headers=headers) as r:
                if r.status_code == 304:
                    return Response(304, b"", str(r.url), r.headers)
                if r.status_code >= 400:
                    raise FeedError(f"{url} answered HTTP {r.status_code}")
                return Response(r.status_code, self._read(url, r, deadline), str(r.url), r.headers)
        except httpx.TimeoutException:
            raise FeedError(f"{url} did not answer within {self.timeout:g} s") from None
        except httpx.HTTPError as e:
            raise FeedError(f"could not fetch {url}: {e or type(e).__name__}") from None

    def _read(self, url: str, r: httpx.Response, deadline: float) -> bytes:
        limit = self.max_bytes
        too_big = f"{url} is larger than the limit of {_size(limit)}"
        declared = r.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise FeedError(too_big)
        chunks, total = [], 0
        for chunk in r.iter_bytes(CHUNK):
            total += len(chunk)
            if total > limit:
                raise FeedError(too_big)
            if time.monotonic() > deadline:
                raise FeedError(f"{url} did not finish within {self.timeout:g} s")
            chunks.append(chunk)
        return b"".join(chunks)


def _size(n: int) -> str:
    return f"{n / 1024 / 1024:g} MB" if n >= 1024 * 1024 else f"{n / 1024:g} kB"
