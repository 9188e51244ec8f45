"""Helpers for driving the public pages through Flask's test client."""

from __future__ import annotations

import re


def form_fields(html: str) -> dict[str, str]:
    """The hidden inputs of the first form on a page (csrf_token, ts, ...)."""
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html))


def signup(client, email: str, **extra):
    page = client.get("/subscribe")
    data = {**form_fields(page.get_data(as_text=True)), "email": email, "frequency": "weekly"}
    data.update(extra)
    return client.post("/subscribe", data=data)


def post_form(client, url: str, **data):
    """GET a page, then POST its form back with the CSRF token and the given fields."""
    page = client.get(url)
    return client.post(url, data={**form_fields(page.get_data(as_text=True)), **data})


def link_with(mail, path: str) -> str:
    """The first link in a captured mail's text part whose path starts with `path`."""
    for url in mail.links():
        if url.split("/", 3)[-1].startswith(path.lstrip("/")):
            return url
    raise AssertionError(f"no {path} link in {mail.links()}")


def local(url: str) -> str:
    """Path of an absolute URL, for the test client."""
    return "/" + url.split("/", 3)[3]
