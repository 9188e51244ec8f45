"""The OpenAPI 3.1 document of the JSON API under /api/v1, and GET /api/v1/openapi.json.

The document is built here as Python data rather than shipped as a YAML file: its limits
(maximum lengths, ranges, state names) come from the constants the code enforces, so the
document cannot promise one length while the service checks another, and no YAML parser
or package-data entry is needed. tests/web/test_openapi.py keeps it honest: every route is
documented, the document validates as OpenAPI 3.1, and generated requests get answers of
the documented codes and shapes.
"""

from __future__ import annotations

from functools import cache

from flask import Blueprint, jsonify

from mailer.feeds.push import MAX_ARTICLES
from mailer.models import DeliveryStatus, Frequency, IssueStatus, ItemSection
from mailer.services.articles import URL_MAX
from mailer.services.issue_edits import INTRO_MAX, SUBJECT_MAX
from mailer.services.schedules import LIMITS, MAX_GRACE_HOURS
from mailer.services.subscriptions import EMAIL_MAX, NAME_MAX
from mailer.web.api_digest import MAX_TEST_RECIPIENTS
from mailer.web.extensions import settings
from mailer.web.signup import HONEYPOT, WORDING_MAX

bp = Blueprint("api_openapi", __name__, url_prefix="/api/v1")

FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")
FEEDS = ("application/rss+xml", "application/atom+xml", "application/xml", "text/xml")
# The signup API's own limit on its `source` field (mailer/web/api.py).
SOURCE_MAX = 100


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


def _enum(values) -> dict:
    return {"type": "string", "enum": [str(v) for v in values]}


def _json_body(schema: dict, *, forms: bool = False, extra: dict | None = None) -> dict:
    content = {"application/json": {"schema": schema}}
    if forms:
        content.update({media: {"schema": schema} for media in FORMS})
    content.update(extra or {})
    return {"required": True, "content": content}


def _answer(description: str, schema: dict | None = None, headers: dict | None = None) -> dict:
    out: dict = {"description": description}
    if schema is not None:
        out["content"] = {"application/json": {"schema": schema}}
    if headers:
        out["headers"] = headers
    return out


ERRORS = {
    400: ("BadRequest", "Invalid input: `field` names the offending field. Nothing was written."),
    401: ("Unauthorized", "No bearer token, or one that is unknown or belongs to a disabled user."),
    403: ("Forbidden", "The token's user does not have the role this operation needs."),
    404: ("NotFound", "There is no such issue, item, article or schedule."),
    409: ("Conflict", "The current state does not allow this (e.g. the issue is already sending)."),
    413: ("TooLarge", "The body is larger than MAILER_MAX_BODY_BYTES (articles: MAILER_FEED_MAX_BYTES)."),
    415: ("UnsupportedMediaType", "The body is neither JSON nor one of the forms this operation takes."),
    429: ("TooManyRequests", "Too many signups from this address or network; see Retry-After."),
    503: ("Unavailable", "The task queue is unreachable; try again in a minute."),
}


def _errors(*codes: int) -> dict:
    return {str(c): {"$ref": f"#/components/responses/{ERRORS[c][0]}"} for c in codes}


def _op(summary: str, tag: str, op_id: str, responses: dict, *, public: bool = False,
        body: dict | None = None, params: list | None = None, description: str = "") -> dict:
    op: dict = {"summary": summary, "operationId": op_id, "tags": [tag], "responses": responses}
    if description:
        op["description"] = description
    if body is not None:
        op["requestBody"] = body
    if params:
        op["parameters"] = params
    if public:
        op["security"] = []
    return op


def _path_id(name: str, what: str) -> dict:
    return {"name": name, "in": "path", "required": True, "description": f"The {what}'s id.",
            "schema": {"type": "integer", "minimum": 1}}


def _query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


ISSUE = _path_id("issue_id", "issue")
SCHEDULE = _path_id("schedule_id", "schedule")
ITEM = _path_id("item_id", "issue item")
SECTIONS = {
    "description": "Section slugs of MAILER_SECTIONS: a list or one comma-separated string; "
                   "none (or all) means every section.",
    "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
}
WHEN = _nullable({"type": "string", "format": "date-time"})
COUNT = {"type": "integer", "minimum": 0, "maximum": 100}


def _schemas() -> dict:
    low, high = LIMITS["latest_n"]
    return {
        "Error": {
            "type": "object",
            "required": ["error", "message"],
            "additionalProperties": False,
            "properties": {
                "error": {"type": "string", "description": "A short label of the kind of error."},
                "message": {"type": "string", "description": "What went wrong, for people."},
                "field": {"type": "string", "description": "The input field at fault."},
            },
        },
        "Signup": {
            "type": "object",
            "required": ["email"],
            "properties": {
                "email": {"type": "string", "maxLength": EMAIL_MAX},
                "name": {"type": "string", "maxLength": NAME_MAX},
                "frequency": {**_enum(Frequency), "default": "weekly"},
                "sections": SECTIONS,
                "source": {"type": "string", "maxLength": SOURCE_MAX,
                           "description": "Which form on the site this is; kept with the consent."},
                "consent": {"type": "string", "maxLength": WORDING_MAX,
                            "description": "The words shown next to the box; kept with the consent."},
                HONEYPOT: {"type": "string", "description": "Leave empty: bots fill it and are ignored."},
            },
        },
        "SignupAccepted": {
            "type": "object",
            "required": ["status", "message"],
            "additionalProperties": False,
            "properties": {"status": {"const": "ok"}, "message": {"type": "string"}},
        },
        "Article": {
            "type": "object",
            "required": ["url"],
            "additionalProperties": False,
            "properties": {
                "url": {"type": "string", "maxLength": URL_MAX,
                        "description": "The article's public http(s) address."},
                "title": {"type": "string"},
                "guid": {"type": "string", "description": "The CMS's own stable id."},
                "summary": {"type": "string", "description": "HTML or plain text."},
                "content": {"type": "string", "description": "HTML; sanitized before it is kept."},
                "author": {"type": "string"},
                "categories": {"anyOf": [{"type": "string"},
                                         {"type": "array", "items": {"type": "string"}}]},
                "image_url": {"type": "string"},
                "published": {"type": "string", "description": "ISO 8601; no zone means UTC."},
                "updated": {"type": "string", "description": "ISO 8601; no zone means UTC."},
            },
        },
        "WordPressPost": {
            "type": "object",
            "description": "A WordPress REST post object (as /wp/v2/posts?_embed returns it).",
            "required": ["link"],
            "properties": {
                "link": {"type": "string"},
                "title": {"type": "object", "properties": {"rendered": {"type": "string"}}},
                "excerpt": {"type": "object", "properties": {"rendered": {"type": "string"}}},
                "content": {"type": "object", "properties": {"rendered": {"type": "string"}}},
                "date_gmt": {"type": "string"},
                "modified_gmt": {"type": "string"},
                "_embedded": {
                    "type": "object",
                    "properties": {
                        "author": {"type": "array", "items": {"type": "object"}},
                        "wp:term": {"type": "array", "items": {"type": "array"}},
                        "wp:featuredmedia": {"type": "array", "items": {"type": "object"}},
                    },
                },
            },
        },
        "ArticlePush": {
            "description": "One article, a list of them, or {\"articles\": [...]}; WordPress "
                           "post objects are read too.",
            "anyOf": [
                _ref("Article"),
                _ref("WordPressPost"),
                {"type": "array", "minItems": 1, "maxItems": MAX_ARTICLES,
                 "items": {"anyOf": [_ref("Article"), _ref("WordPressPost")]}},
                {"type": "object", "required": ["articles"], "additionalProperties": False,
                 "properties": {"articles": {
                     "type": "array", "minItems": 1, "maxItems": MAX_ARTICLES,
                     "items": {"anyOf": [_ref("Article"), _ref("WordPressPost")]}}}},
            ],
        },
        "ArticleReport": {
            "type": "object",
            "additionalProperties": False,
            "required": ["new", "updated", "unchanged", "skipped", "ids", "not_modified"],
            "properties": {
                "new": {"type": "integer"},
                "updated": {"type": "integer"},
                "unchanged": {"type": "integer"},
                "skipped": {"type": "array", "items": {
                    "type": "object", "required": ["item", "reason"], "additionalProperties": False,
                    "properties": {"item": {"type": "integer", "description": "1-based position."},
                                   "reason": {"type": "string"}}}},
                "ids": {"type": "array", "items": {"type": "integer"},
                        "description": "The articles created or changed."},
                "not_modified": {"type": "boolean"},
            },
        },
        "PageView": {
            "type": "object",
            "required": ["url"],
            "properties": {"url": {"type": "string", "maxLength": URL_MAX,
                                   "description": "The page's canonical http(s) address."}},
        },
        "IssueCreate": {
            "type": "object",
            "properties": {
                "subject": {"type": "string", "maxLength": SUBJECT_MAX,
                            "description": "One line; a template (`{{ top_story }}` ...). "
                                           "Default: `{{ list_name }}: {{ top_story }}`."},
                "preheader": {"type": "string", "maxLength": SUBJECT_MAX},
                "intro": {"type": "string", "maxLength": INTRO_MAX,
                          "description": "Markdown; a template that may also use `{{ name }}`."},
                "frequency": {**_enum(Frequency), "default": "weekly"},
                "sections": SECTIONS,
                "latest": {**COUNT, "description": "Latest articles (MAILER_DIGEST_LATEST)."},
                "popular": {**COUNT, "description": "Most popular (MAILER_DIGEST_POPULAR)."},
                "min_items": {**COUNT, "description": "Fewer new articles: the issue is skipped."},
            },
        },
        "IssueEdit": {
            "type": "object",
            "description": "Fields left out (or null) stay as they are.",
            "properties": {
                "subject": _nullable({"type": "string", "maxLength": SUBJECT_MAX}),
                "preheader": _nullable({"type": "string", "maxLength": SUBJECT_MAX}),
                "intro": _nullable({"type": "string", "maxLength": INTRO_MAX}),
            },
        },
        "ItemAdd": {
            "type": "object",
            "required": ["article_id"],
            "properties": {
                "article_id": {"type": "integer", "minimum": 1},
                "section": _nullable(_enum(ItemSection)),
            },
        },
        "ItemEdit": {
            "type": "object",
            "description": "At least one of the fields; null leaves it as it is.",
            "minProperties": 1,
            "properties": {
                "pinned": _nullable({"type": "boolean"}),
                "excluded": _nullable({"type": "boolean"}),
                "position": _nullable({"type": "integer", "minimum": 0,
                                       "description": "0 = the top of its section."}),
                "section": _nullable(_enum(ItemSection)),
            },
        },
        "TestSend": {
            "type": "object",
            "required": ["to"],
            "properties": {
                "to": {"anyOf": [
                    {"type": "string", "maxLength": EMAIL_MAX},
                    {"type": "array", "minItems": 1, "maxItems": MAX_TEST_RECIPIENTS,
                     "items": {"type": "string", "maxLength": EMAIL_MAX}},
                ]},
                "sections": SECTIONS,
            },
        },
        "TestQueued": {
            "type": "object",
            "additionalProperties": False,
            "required": ["queued", "to", "sections"],
            "properties": {
                "queued": {"const": True},
                "to": {"type": "array", "items": {"type": "string"}},
                "sections": {"type": "string", "description": "Comma-separated; '' = all."},
            },
        },
        "IssueSummary": {
            "type": "object",
            "additionalProperties": False,
            "required": ["id", "status", "status_reason", "subject", "frequency", "sections",
                         "latest", "popular", "created_at", "started_at", "finished_at"],
            "properties": {
                "id": {"type": "integer"},
                "status": _enum(IssueStatus),
                "status_reason": _nullable({"type": "string"}),
                "subject": {"type": "string"},
                "frequency": _enum(Frequency),
                "sections": {"type": "array", "items": {"type": "string"}},
                "latest": {"type": "integer", "description": "Items in Latest (not excluded)."},
                "popular": {"type": "integer", "description": "Items in Most popular."},
                "created_at": {"type": "string", "format": "date-time"},
                "started_at": WHEN,
                "finished_at": WHEN,
            },
        },
        "IssueList": {
            "type": "object",
            "additionalProperties": False,
            "required": ["issues", "limit", "offset"],
            "properties": {
                "issues": {"type": "array", "items": _ref("IssueSummary")},
                "limit": {"type": "integer"},
                "offset": {"type": "integer"},
            },
        },
        "IssueItem": {
            "type": "object",
            "additionalProperties": False,
            "required": ["id", "article_id", "section", "position", "pinned", "excluded",
                         "title", "url", "published_at"],
            "properties": {
                "id": {"type": "integer"},
                "article_id": {"type": "integer"},
                "section": _enum(ItemSection),
                "position": {"type": "integer"},
                "pinned": {"type": "boolean"},
                "excluded": {"type": "boolean"},
                "title": {"type": "string"},
                "url": {"type": "string"},
                "published_at": WHEN,
            },
        },
        "Issue": {
            "type": "object",
            "additionalProperties": False,
            "required": ["id", "status", "status_reason", "subject", "preheader", "intro",
                         "audience", "latest_n", "popular_m", "min_items", "window_start",
                         "window_end", "schedule_id", "author_id", "created_at", "started_at",
                         "finished_at", "archive_url", "items"],
            "properties": {
                "id": {"type": "integer"},
                "status": _enum(IssueStatus),
                "status_reason": _nullable({"type": "string"}),
                "subject": {"type": "string"},
                "preheader": {"type": "string"},
                "intro": {"type": "string"},
                "audience": {
                    "type": "object", "additionalProperties": False,
                    "required": ["frequency", "sections"],
                    "properties": {"frequency": _enum(Frequency),
                                   "sections": {"type": "array", "items": {"type": "string"}}},
                },
                "latest_n": {"type": "integer"},
                "popular_m": {"type": "integer"},
                "min_items": {"type": "integer"},
                "window_start": WHEN,
                "window_end": WHEN,
                "schedule_id": _nullable({"type": "integer"}),
                "author_id": _nullable({"type": "integer"}),
                "created_at": {"type": "string", "format": "date-time"},
                "started_at": WHEN,
                "finished_at": WHEN,
                "archive_url": _nullable({"type": "string"}),
                "items": {"type": "array", "items": _ref("IssueItem")},
            },
        },
        "Preview": {
            "type": "object",
            "additionalProperties": False,
            "required": ["subject", "html", "text", "sections"],
            "properties": {
                "subject": {"type": "string"},
                "html": {"type": "string"},
                "text": {"type": "string"},
                "sections": {"type": "string", "description": "Comma-separated; '' = all."},
            },
        },
        "DeliveryStatus": {
            "type": "object",
            "additionalProperties": False,
            "required": ["issue", "status", "reason", "total", "counts", "done", "remaining",
                         "withdrawn", "skipped_no_items", "rate", "eta_seconds", "started_at",
                         "finished_at"],
            "properties": {
                "issue": {"type": "integer"},
                "status": _enum(IssueStatus),
                "reason": _nullable({"type": "string"}),
                "total": {"type": "integer"},
                "counts": {"type": "object", "additionalProperties": False,
                           "required": [str(s) for s in DeliveryStatus],
                           "properties": {str(s): {"type": "integer"} for s in DeliveryStatus}},
                "done": {"type": "integer"},
                "remaining": {"type": "integer"},
                "withdrawn": {"type": "integer",
                              "description": "Readers who left before their turn."},
                "skipped_no_items": {"type": "integer",
                                     "description": "Readers whose sections had no articles."},
                "rate": {"type": "number", "description": "Messages per second just now."},
                "eta_seconds": _nullable({"type": "integer"}),
                "started_at": WHEN,
                "finished_at": WHEN,
                "variants": {"type": "integer", "description": "Only when sending starts."},
            },
        },
        "ScheduleCreate": {
            "type": "object",
            "required": ["name", "cron"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "maxLength": NAME_MAX,
                         "description": "Unique; not only digits."},
                "cron": {"type": "string",
                         "description": "Five cron fields (`0 7 * * mon`) or `mon 07:00`, "
                                        "`weekdays 06:30`, `daily 06:30`; at most hourly."},
                "timezone": {"type": "string", "default": "UTC",
                             "description": "An IANA zone, e.g. Europe/Berlin."},
                "frequency": _nullable(_enum(Frequency)),
                "sections": _nullable(SECTIONS),
                "latest_n": _nullable({"type": "integer", "minimum": low, "maximum": high}),
                "popular_m": _nullable({"type": "integer", "minimum": low, "maximum": high}),
                "min_items": _nullable({"type": "integer", "minimum": low, "maximum": high}),
                "subject": _nullable({"type": "string", "maxLength": SUBJECT_MAX}),
                "grace_hours": _nullable({"type": "number", "exclusiveMinimum": 0,
                                          "maximum": MAX_GRACE_HOURS}),
            },
        },
        "ScheduleRun": {
            "type": "object",
            "additionalProperties": False,
            "required": ["id", "period_start", "period_local", "status", "reason", "issue_id",
                         "reported_at"],
            "properties": {
                "id": {"type": "integer"},
                "period_start": {"type": "string", "format": "date-time"},
                "period_local": {"type": "string", "format": "date-time"},
                "status": {"type": "string", "enum": ["issued", "skipped", "missed"]},
                "reason": _nullable({"type": "string"}),
                "issue_id": _nullable({"type": "integer"}),
                "reported_at": WHEN,
            },
        },
        "Schedule": {
            "type": "object",
            "additionalProperties": False,
            "required": ["id", "name", "cron", "description", "timezone", "frequency",
                         "sections", "subject", "latest_n", "popular_m", "min_items",
                         "grace_hours", "active", "status", "next_runs", "last_run",
                         "created_at"],
            "properties": {
                "id": {"type": "integer"},
                "name": {"type": "string"},
                "cron": {"type": "string"},
                "description": {"type": "string"},
                "timezone": {"type": "string"},
                "frequency": _enum(Frequency),
                "sections": {"type": "array", "items": {"type": "string"}},
                "subject": {"type": "string", "description": "'' = the default subject."},
                "latest_n": {"type": "integer"},
                "popular_m": {"type": "integer"},
                "min_items": {"type": "integer"},
                "grace_hours": _nullable({"type": "number"}),
                "active": {"type": "boolean"},
                "status": {"type": "string", "enum": ["active", "paused"]},
                "next_runs": {"type": "array",
                              "items": {"type": "string", "format": "date-time"}},
                "last_run": _nullable(_ref("ScheduleRun")),
                "created_at": {"type": "string", "format": "date-time"},
                "recent_runs": {"type": "array", "items": _ref("ScheduleRun"),
                                "description": "Only when one schedule is shown."},
            },
        },
        "ScheduleList": {
            "type": "object",
            "additionalProperties": False,
            "required": ["schedules"],
            "properties": {"schedules": {"type": "array", "items": _ref("Schedule")}},
        },
        "NextRuns": {
            "type": "object",
            "additionalProperties": False,
            "required": ["id", "timezone", "next_runs"],
            "properties": {
                "id": {"type": "integer"},
                "timezone": {"type": "string"},
                "next_runs": {"type": "array",
                              "items": {"type": "string", "format": "date-time"}},
            },
        },
        "RunList": {
            "type": "object",
            "additionalProperties": False,
            "required": ["total", "runs"],
            "properties": {"total": {"type": "integer"},
                           "runs": {"type": "array", "items": _ref("ScheduleRun")}},
        },
    }


def _responses() -> dict:
    out = {}
    for name, description in ERRORS.values():
        out[name] = _answer(description, _ref("Error"))
    out["TooManyRequests"]["headers"] = {
        "Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait."}}
    return out


def _subscribers_and_articles() -> dict:
    no_content = {"description": "Received (counted or not).",
                  "headers": {"Cache-Control": {"schema": {"const": "no-store"}}}}
    return {
        "/api/v1/subscribe": {"post": _op(
            "Sign a reader up (double opt-in)", "subscribers", "subscribe", public=True,
            description="The site's signup form or snippet: JSON or an ordinary form post; "
                        "CORS for MAILER_CORS_ORIGINS. The same answer whether the address "
                        "was new, pending, active or unsubscribed.",
            body=_json_body(_ref("Signup"), forms=True),
            responses={"202": _answer("Accepted; a confirmation mail is on its way.",
                                      _ref("SignupAccepted")),
                       **_errors(400, 413, 415, 429)})},
        "/api/v1/articles": {"post": _op(
            "Create or update articles (a CMS on publish)", "articles", "pushArticles",
            description="JSON (see ArticlePush) or an RSS/Atom document. Items that cannot "
                        "be used are listed in `skipped`; if none can, the answer is 400.",
            body=_json_body(_ref("ArticlePush"), extra={
                media: {"schema": {"type": "string"}} for media in FEEDS}),
            responses={"201": _answer("At least one article is new.", _ref("ArticleReport")),
                       "200": _answer("Articles updated or unchanged.", _ref("ArticleReport")),
                       **_errors(400, 401, 413, 415)})},
        "/api/v1/pageviews": {
            "post": _op(
                "Count a page view (the site's beacon)", "articles", "recordPageview",
                public=True,
                description="JSON, the form field `url`, or JSON sent as text/plain "
                            "(navigator.sendBeacon). Always 204 for well-formed requests.",
                body=_json_body(_ref("PageView"), forms=True, extra={
                    "text/plain": {"schema": {"type": "string"}}}),
                responses={"204": no_content, **_errors(400, 413, 415)}),
            "head": _op("Link checkers and prefetchers (never counted)", "articles",
                        "headPageviews", public=True, responses={"204": no_content}),
        },
    }


def _issues() -> dict:
    issue = _ref("Issue")
    editor = _errors(401, 403, 404, 409)
    return {
        "/api/v1/issues": {
            "post": _op(
                "Compose a new issue", "issues", "createIssue",
                description="A draft, or `skipped` (with status_reason) when fewer than "
                            "min_items new articles exist. Editor role.",
                body=_json_body(_ref("IssueCreate")),
                responses={"201": _answer("The issue.", issue, {"Location": {
                    "required": True, "schema": {"type": "string"}}}),
                           **_errors(400, 401, 403, 413, 415)}),
            "get": _op(
                "List issues, newest first", "issues", "listIssues",
                params=[
                    _query("status", {"type": "string"},
                           "Comma-separated states: " + ", ".join(map(str, IssueStatus)) + "."),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 500,
                                     "default": 50}, "Page size (clamped to 1-500)."),
                    _query("offset", {"type": "integer", "minimum": 0, "default": 0}, "Skip."),
                ],
                responses={"200": _answer("A page of issues.", _ref("IssueList")),
                           **_errors(400, 401)}),
        },
        "/api/v1/issues/{issue_id}": {
            "parameters": [ISSUE],
            "get": _op("Show an issue with its items", "issues", "showIssue",
                       responses={"200": _answer("The issue.", issue), **_errors(401, 404)}),
            "patch": _op(
                "Change subject, preheader or intro", "issues", "editIssue",
                description="Only while draft or scheduled. Editor role.",
                body=_json_body(_ref("IssueEdit")),
                responses={"200": _answer("The issue.", issue),
                           **_errors(400, 413, 415), **editor}),
        },
        "/api/v1/issues/{issue_id}/recompose": {"parameters": [ISSUE], "post": _op(
            "Propose the items again", "issues", "recomposeIssue",
            description="Pinned items stay, excluded ones stay out. Editor role.",
            responses={"200": _answer("The issue.", issue), **editor})},
        "/api/v1/issues/{issue_id}/items": {"parameters": [ISSUE], "post": _op(
            "Add an article, pinned", "issues", "addIssueItem",
            description="Pinned items survive re-composing. Editor role.",
            body=_json_body(_ref("ItemAdd")),
            responses={"201": _answer("The issue.", issue), **_errors(400, 413, 415), **editor})},
        "/api/v1/issues/{issue_id}/items/{item_id}": {"parameters": [ISSUE, ITEM], "patch": _op(
            "Pin, unpin, exclude, include or move an item", "issues", "editIssueItem",
            description="Editor role.",
            body=_json_body(_ref("ItemEdit")),
            responses={"200": _answer("The issue.", issue), **_errors(400, 413, 415), **editor})},
        "/api/v1/issues/{issue_id}/preview": {"parameters": [ISSUE], "get": _op(
            "What a reader gets, with sample values", "issues", "previewIssue",
            params=[
                _query("sections", {"type": "string"},
                       "The reader's sections, comma-separated (default: all)."),
                _query("format", {"type": "string", "enum": ["json", "html", "text"],
                                  "default": "json"}, "json, or the HTML or text part alone."),
            ],
            responses={
                "200": {"description": "The preview.", "content": {
                    "application/json": {"schema": _ref("Preview")},
                    "text/html": {"schema": {"type": "string"}},
                    "text/plain": {"schema": {"type": "string"}}}},
                **_errors(400, 401, 404)})},
        "/api/v1/issues/{issue_id}/test": {"parameters": [ISSUE], "post": _op(
            "Send the preview to a few addresses", "issues", "testSendIssue",
            description="Sent by the worker, subject marked [Test]. Editor role.",
            body=_json_body(_ref("TestSend")),
            responses={"202": _answer("Queued.", _ref("TestQueued")),
                       **_errors(400, 401, 403, 404, 413, 415, 503)})},
    }


def _delivery() -> dict:
    status = _ref("DeliveryStatus")

    def control(verb: str, op_id: str, code: int, what: str, roles: str) -> dict:
        return {"parameters": [ISSUE], "post": _op(
            verb, "delivery", op_id, description=roles,
            responses={str(code): _answer(what, status), **_errors(401, 403, 404, 409)})}

    return {
        "/api/v1/issues/{issue_id}/send": control(
            "Send the issue to its audience", "sendIssue", 202,
            "Sending; the audience is frozen.", "draft or scheduled → sending. Editor role."),
        "/api/v1/issues/{issue_id}/pause": control(
            "Pause sending", "pauseIssue", 200, "Paused.", "Editor or ops role."),
        "/api/v1/issues/{issue_id}/resume": control(
            "Resume sending", "resumeIssue", 202, "Sending again.", "Editor or ops role."),
        "/api/v1/issues/{issue_id}/cancel": control(
            "Cancel the issue", "cancelIssue", 200, "Cancelled; unsent rows stay unsent.",
            "Editor or ops role."),
        "/api/v1/issues/{issue_id}/status": {"parameters": [ISSUE], "get": _op(
            "Counts per delivery state, rate and time left", "delivery", "issueStatus",
            responses={"200": _answer("The status.", status), **_errors(401, 404)})},
    }


def _schedules() -> dict:
    one = _ref("Schedule")
    common = _errors(401, 403, 404)

    def integer(name, default, low, high, what):
        return _query(name, {"type": "integer", "minimum": low, "maximum": high,
                             "default": default}, what)

    return {
        "/api/v1/schedules": {
            "get": _op("List schedules", "schedules", "listSchedules",
                       responses={"200": _answer("Every schedule, by name.", _ref("ScheduleList")),
                                  **_errors(401, 403)}),
            "post": _op("Add a schedule", "schedules", "createSchedule",
                        body=_json_body(_ref("ScheduleCreate")),
                        responses={"201": _answer("The schedule (active).", one),
                                   **_errors(400, 401, 403, 409, 413, 415)}),
        },
        "/api/v1/schedules/{schedule_id}": {
            "parameters": [SCHEDULE],
            "get": _op("Show a schedule and its recent runs", "schedules", "showSchedule",
                       responses={"200": _answer("The schedule.", one), **common}),
            "delete": _op("Remove a schedule and its run history", "schedules",
                          "deleteSchedule", description="Its issues stay.",
                          responses={"204": {"description": "Removed."}, **common}),
        },
        "/api/v1/schedules/{schedule_id}/pause": {"parameters": [SCHEDULE], "post": _op(
            "Pause a schedule", "schedules", "pauseSchedule",
            responses={"200": _answer("The schedule.", one), **common, **_errors(409)})},
        "/api/v1/schedules/{schedule_id}/resume": {"parameters": [SCHEDULE], "post": _op(
            "Resume a schedule", "schedules", "resumeSchedule",
            description="Periods that passed while paused are not owed.",
            responses={"200": _answer("The schedule.", one), **common, **_errors(409)})},
        "/api/v1/schedules/{schedule_id}/next": {"parameters": [SCHEDULE], "get": _op(
            "The next firing times", "schedules", "nextRuns",
            params=[integer("count", 5, 1, 1000, "How many."),
                    _query("after", {"type": "string", "format": "date-time"},
                           "ISO 8601 (default: now); no zone means the schedule's zone.")],
            responses={"200": _answer("Firing times in the schedule's zone.", _ref("NextRuns")),
                       **_errors(400), **common})},
        "/api/v1/schedules/{schedule_id}/runs": {"parameters": [SCHEDULE], "get": _op(
            "Past runs, newest first", "schedules", "scheduleRuns",
            params=[integer("limit", 20, 1, 200, "Page size."),
                    integer("offset", 0, 0, 10**9, "Skip.")],
            responses={"200": _answer("A page of runs.", _ref("RunList")),
                       **_errors(400), **common})},
        "/api/v1/schedules/{schedule_id}/run-now": {"parameters": [SCHEDULE], "post": _op(
            "Fire the schedule now", "schedules", "runScheduleNow",
            description="Composes (and sends) an issue now; once per minute.",
            responses={"202": _answer("The run.", _ref("ScheduleRun")),
                       **common, **_errors(409)})},
    }


@cache
def _static_document() -> dict:
    paths = {**_subscribers_and_articles(), **_issues(), **_delivery(), **_schedules()}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Newsletter mailer API",
            "version": "1",
            "description": "Signup and page views (public), articles, digest issues, "
                           "sending and schedules (bearer tokens from `mailer user token "
                           "EMAIL`). Errors are JSON: `{\"error\", \"message\", \"field\"?}`.",
        },
        "tags": [{"name": n} for n in ("subscribers", "articles", "issues", "delivery",
                                       "schedules")],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "A token from `mailer user token EMAIL`. Issues: editor to "
                               "change, editor or ops to read and control sending; schedules: "
                               "ops; articles: any role; admin may do everything."}},
            "schemas": _schemas(),
            "responses": _responses(),
        },
    }


def document(base_url: str | None = None) -> dict:
    """The OpenAPI document; `servers` names this installation when base_url is given."""
    doc = dict(_static_document())
    if base_url:
        doc["servers"] = [{"url": base_url}]
    return doc


@bp.get("/openapi.json")
def openapi_json():
    """The document itself: public, so API clients and generators can fetch it."""
    return jsonify(document(settings().base_url))
