"""Articles in the API: a CMS pushes on publish (bearer token); the site's page-view beacon."""

from __future__ import annotations

import json
import logging
import time

from flask import Blueprint, current_app, jsonify, request
from sqlalchemy.exc import IntegrityError, OperationalError

from mailer.clock import utcnow
from mailer.db import db
from mailer.errors import MailerError, ValidationError
from mailer.feeds import FeedError, parse_document
from mailer.feeds.push import parse_pushed
from mailer.models import Role
from mailer.runtime import runtime
from mailer.services import articles, popularity
from mailer.web.api.requests import FORM_TYPES, cors
from mailer.web.auth import bearer_user
from mailer.web.extensions import client_ip, settings

log = logging.getLogger(__name__)

bp = Blueprint("articles", __name__)
# The same CORS answer as the signup API: the site's own pages may call these endpoints.
bp.before_request(cors)

FEED_TYPES = ("application/rss+xml", "application/atom+xml", "application/xml", "text/xml")


class UnsupportedBody(MailerError):
    status = 415


def _json_body():
    try:
        return json.loads(request.get_data() or b"null")
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        raise ValidationError("body", "The body is not valid JSON.") from None


@bp.post("/articles")
def push():
    """Create or update articles: JSON (one, a list, {"articles": [...]}, WordPress posts) or
    an RSS/Atom document. Answers the ids and what was new, updated and skipped."""
    # A pushed article carries its whole content: allow what a feed may weigh (nothing has
    # read the body yet).
    request.max_content_length = settings().feed_max_bytes
    user = bearer_user(Role.EDITOR, Role.OPS)
    mimetype = request.mimetype
    try:
        if mimetype == "application/json":
            parsed = parse_pushed(_json_body())
        elif mimetype in FEED_TYPES:
            parsed = parse_document(request.get_data())
        else:
            raise UnsupportedBody("Send articles as JSON, or an RSS or Atom document.")
    except FeedError as e:
        raise ValidationError("body", str(e)) from None
    if not parsed.items:
        reasons = "; ".join(f"item {s.position}: {s.reason}" for s in parsed.skipped[:5])
        raise ValidationError("body", f"No article could be used ({reasons or 'none given'}).")
    source = f"api: {user.email}"
    for attempt in range(2):
        try:
            report = articles.ingest(db.session, parsed, source=source)
            db.session.commit()
            break
        except IntegrityError:
            # A feed sync inserted the same article at the same moment: retry as an update.
            db.session.rollback()
            if attempt:
                raise
    if not report.new and not report.updated and not report.unchanged:
        reasons = "; ".join(f"item {s.position}: {s.reason}" for s in report.skipped[:5])
        raise ValidationError("body", f"No article could be used ({reasons}).")
    return jsonify(report.as_dict()), 201 if report.new else 200


def _page_url() -> str:
    """The canonical page address from JSON, a form, or the text/plain JSON of sendBeacon."""
    if request.mimetype in FORM_TYPES:
        value = request.form.get("url")
    elif request.mimetype in ("application/json", "text/plain", ""):
        data = _json_body()
        if not isinstance(data, dict):
            raise ValidationError("body", 'Send {"url": "<the article address>"}.')
        value = data.get("url")
    else:
        raise UnsupportedBody("Send the address as JSON or as the form field url.")
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("url", "Send the article's address in the url field.")
    if len(value) > articles.URL_MAX:
        raise ValidationError("url", f"url is longer than {articles.URL_MAX} characters.")
    canonical = articles.canonical_url(value)
    if canonical is None:
        raise ValidationError("url", "url must be an http or https address.")
    return canonical


class AddressCache:
    """Page address -> article id for a few minutes, so most beacons touch no SQL at all.

    Unknown addresses are remembered for a shorter time: a page synced a minute later
    starts counting soon. One per app, bounded; the GIL keeps the dict consistent.
    """

    def __init__(self, size: int = 50_000, ttl: float = 300.0, miss_ttl: float = 60.0):
        self.size, self.ttl, self.miss_ttl = size, ttl, miss_ttl
        self._ids: dict[str, tuple[int | None, float]] = {}

    def article_id(self, url: str) -> int | None:
        now = time.monotonic()
        hit = self._ids.get(url)
        if hit and hit[1] > now:
            return hit[0]
        found = articles.id_for_url(db.session, url)
        if len(self._ids) >= self.size:
            self._ids.clear()
        self._ids[url] = (found, now + (self.ttl if found is not None else self.miss_ttl))
        return found


def _address_cache() -> AddressCache:
    return current_app.extensions.setdefault("mailer.article_ids", AddressCache())


def _no_content():
    return "", 204, {"Cache-Control": "no-store"}


@bp.route("/pageviews", methods=["POST", "HEAD"])
def pageview():
    """The site's view beacon: always 204 for well-formed requests, counted or not."""
    if request.method == "HEAD":
        return _no_content()  # link checkers and prefetchers are not readers
    url = _page_url()
    user_agent = request.headers.get("User-Agent", "")
    if popularity.is_bot(user_agent):
        return _no_content()
    try:
        article_id = _address_cache().article_id(url)
        if article_id is not None:
            rt = runtime()
            now = utcnow()
            visitor = popularity.visitor_id(rt.tokens, client_ip(), user_agent,
                                            popularity.utc_day(now))
            rt.popularity.record_view(db.session, article_id, visitor, now)
            db.session.commit()
    except (OperationalError, IntegrityError) as e:
        # Popularity is best effort: the site's page must never see an error from us. (The
        # store does without Redis by itself: one warning, then no wait while it is down.)
        db.session.rollback()
        log.warning("page view not counted: %s", e)
    return _no_content()


@bp.errorhandler(ValidationError)
def _invalid(e: ValidationError):
    return jsonify({"error": "invalid", "field": e.field, "message": e.message}), 400
