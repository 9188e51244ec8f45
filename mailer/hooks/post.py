"""One webhook attempt: POST the signed body to the checked address, read a little back.

Ten seconds for all of it, no redirect followed (a 3xx is a failed attempt: following it
would go to an address nobody checked), at most 4 KB of the answer read and kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from mailer.hooks.addresses import AddressRefused, check_url, resolve

TIMEOUT = 10.0
EXCERPT = 4096


_clients: dict[int, httpx.Client] = {}


def _client() -> httpx.Client:
    """One client per process: building one loads the CA certificates (tens of ms). No
    connection is kept alive: connections are made to addresses, and a kept one could carry
    a request for another host name on the same address through the wrong TLS session."""
    import os

    client = _clients.get(os.getpid())
    if client is None:
        client = _clients[os.getpid()] = httpx.Client(
            timeout=httpx.Timeout(TIMEOUT), follow_redirects=False, trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )
    return client


@dataclass(frozen=True)
class Outcome:
    ok: bool  # a 2xx answer
    status: int | None  # the HTTP status, None when there was no answer
    latency_ms: int
    excerpt: str  # the first 4 KB of the answer, or what went wrong
    refused: bool = False  # the address check refused the URL (no connection made)


def post(url: str, body: bytes, headers: dict[str, str], *, allow_http: bool,
         allow_private: bool, timeout: float = TIMEOUT) -> Outcome:
    """One attempt; never raises for what the far side does."""
    start = time.monotonic()

    def took() -> int:
        return int((time.monotonic() - start) * 1000)

    try:
        scheme, host, port = check_url(url, allow_http=allow_http)
        ip = resolve(host, port, allow_private=allow_private)
    except AddressRefused as e:
        return Outcome(False, None, took(), str(e), refused=True)
    parts = urlsplit(url)
    netloc = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    target = urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))
    default_port = port == (443 if scheme == "https" else 80)
    host_header = parts.hostname if default_port else f"{parts.hostname}:{port}"
    if ":" in parts.hostname and default_port:
        host_header = f"[{parts.hostname}]"
    request_headers = {**headers, "host": host_header, "user-agent": "mailer-webhooks"}
    try:
        client = _client()
        # The TLS name (SNI and the certificate check) is the URL's host, not the address.
        request = client.build_request("POST", target, content=body, headers=request_headers,
                                       timeout=httpx.Timeout(timeout),
                                       extensions={"sni_hostname": parts.hostname})
        response = client.send(request, stream=True)
        try:
            data = b""
            for chunk in response.iter_raw():
                data += chunk
                if len(data) >= EXCERPT or time.monotonic() - start > timeout:
                    break
        finally:
            response.close()
        excerpt = data[:EXCERPT].decode("utf-8", "replace")
        status = response.status_code
    except (httpx.HTTPError, OSError, ValueError) as e:
        return Outcome(False, None, took(), f"{type(e).__name__}: {e}"[:EXCERPT])
    if 300 <= status < 400:
        location = response.headers.get("location", "")
        excerpt = f"redirect to {location[:500]} not followed\n{excerpt}"[:EXCERPT]
    return Outcome(200 <= status < 300, status, took(), excerpt)
