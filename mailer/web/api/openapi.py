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

from mailer.models import IssueStatus
from mailer.services.newsletters import SLUG_MAX
from mailer.web.api.openapi_schemas import ref, schemas
from mailer.web.extensions import settings

bp = Blueprint("openapi", __name__)

FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")
FEEDS = ("application/rss+xml", "application/atom+xml", "application/xml", "text/xml")


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
    404: ("NotFound", "There is no such issue, item, article, schedule, webhook, delivery or "
                      "newsletter."),
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
NEWSLETTER_FILTER = _query("newsletter", {"type": "string"},
                           "Only this newsletter's (its slug); an unknown slug is a 404.")
SCHEDULE = _path_id("schedule_id", "schedule")
WEBHOOK = _path_id("webhook_id", "webhook endpoint")
HOOK_DELIVERY = _path_id("delivery_id", "webhook delivery")
ITEM = _path_id("item_id", "issue item")
NEWSLETTER = {"name": "slug", "in": "path", "required": True,
              "description": "The newsletter's slug.",
              "schema": {"type": "string", "minLength": 1, "maxLength": SLUG_MAX}}


def _responses() -> dict:
    """The error answers, each with the JSON error shape."""
    out = {}
    for name, description in ERRORS.values():
        out[name] = _answer(description, ref("Error"))
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
            body=_json_body(ref("Signup"), forms=True),
            responses={"202": _answer("Accepted; a confirmation mail is on its way.",
                                      ref("SignupAccepted")),
                       **_errors(400, 413, 415, 429)})},
        "/api/v1/articles": {"post": _op(
            "Create or update articles (a CMS on publish)", "articles", "pushArticles",
            description="JSON (see ArticlePush) or an RSS/Atom document. Items that cannot "
                        "be used are listed in `skipped`; if none can, the answer is 400.",
            body=_json_body(ref("ArticlePush"), extra={
                media: {"schema": {"type": "string"}} for media in FEEDS}),
            responses={"201": _answer("At least one article is new.", ref("ArticleReport")),
                       "200": _answer("Articles updated or unchanged.", ref("ArticleReport")),
                       **_errors(400, 401, 413, 415)})},
        "/api/v1/pageviews": {
            "post": _op(
                "Count a page view (the site's beacon)", "articles", "recordPageview",
                public=True,
                description="JSON, the form field `url`, or JSON sent as text/plain "
                            "(navigator.sendBeacon). Always 204 for well-formed requests.",
                body=_json_body(ref("PageView"), forms=True, extra={
                    "text/plain": {"schema": {"type": "string"}}}),
                responses={"204": no_content, **_errors(400, 413, 415)}),
            "head": _op("Link checkers and prefetchers (never counted)", "articles",
                        "headPageviews", public=True, responses={"204": no_content}),
        },
    }


def _issues() -> dict:
    issue = ref("Issue")
    editor = _errors(401, 403, 404, 409)
    return {
        "/api/v1/issues": {
            "post": _op(
                "Compose a new issue", "issues", "createIssue",
                description="A draft, or `skipped` (with status_reason) when fewer than "
                            "min_items new articles exist. Editor role.",
                body=_json_body(ref("IssueCreate")),
                responses={"201": _answer("The issue.", issue, {"Location": {
                    "required": True, "schema": {"type": "string"}}}),
                           **_errors(400, 401, 403, 404, 409, 413, 415)}),
            "get": _op(
                "List issues, newest first", "issues", "listIssues",
                params=[
                    _query("status", {"type": "string"},
                           "Comma-separated states: " + ", ".join(map(str, IssueStatus)) + "."),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 500,
                                     "default": 50}, "Page size (clamped to 1-500)."),
                    _query("offset", {"type": "integer", "minimum": 0, "default": 0}, "Skip."),
                    NEWSLETTER_FILTER,
                ],
                responses={"200": _answer("A page of issues.", ref("IssueList")),
                           **_errors(400, 401, 404)}),
        },
        "/api/v1/issues/{issue_id}": {
            "parameters": [ISSUE],
            "get": _op("Show an issue with its items", "issues", "showIssue",
                       responses={"200": _answer("The issue.", issue), **_errors(401, 404)}),
            "patch": _op(
                "Change subject, preheader, intro or greeting", "issues", "editIssue",
                description="Only while draft or scheduled. Editor role.",
                body=_json_body(ref("IssueEdit")),
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
            body=_json_body(ref("ItemAdd")),
            responses={"201": _answer("The issue.", issue), **_errors(400, 413, 415), **editor})},
        "/api/v1/issues/{issue_id}/items/{item_id}": {"parameters": [ISSUE, ITEM], "patch": _op(
            "Pin, unpin, exclude, include or move an item", "issues", "editIssueItem",
            description="Editor role.",
            body=_json_body(ref("ItemEdit")),
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
                    "application/json": {"schema": ref("Preview")},
                    "text/html": {"schema": {"type": "string"}},
                    "text/plain": {"schema": {"type": "string"}}}},
                **_errors(400, 401, 404)})},
        "/api/v1/issues/{issue_id}/test": {"parameters": [ISSUE], "post": _op(
            "Send the preview to a few addresses", "issues", "testSendIssue",
            description="Sent by the worker, subject marked [Test]. Editor role.",
            body=_json_body(ref("TestSend")),
            responses={"202": _answer("Queued.", ref("TestQueued")),
                       **_errors(400, 401, 403, 404, 413, 415, 503)})},
    }


def _delivery() -> dict:
    status = ref("DeliveryStatus")

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
            "Counts per delivery state, rate and time left (while sending, counts may be "
            "a moment old: docs/api.md)", "delivery", "issueStatus",
            responses={"200": _answer("The status.", status), **_errors(401, 404)})},
    }


def _schedules() -> dict:
    one = ref("Schedule")
    common = _errors(401, 403, 404)

    def integer(name, default, low, high, what):
        return _query(name, {"type": "integer", "minimum": low, "maximum": high,
                             "default": default}, what)

    return {
        "/api/v1/schedules": {
            "get": _op("List schedules", "schedules", "listSchedules",
                       params=[NEWSLETTER_FILTER],
                       responses={"200": _answer("Every schedule, by name.", ref("ScheduleList")),
                                  **_errors(401, 403, 404)}),
            "post": _op("Add a schedule", "schedules", "createSchedule",
                        body=_json_body(ref("ScheduleCreate")),
                        responses={"201": _answer("The schedule (active).", one),
                                   **_errors(400, 401, 403, 404, 409, 413, 415)}),
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
                    _query("after", {"type": "string", "anyOf": [
                        {"format": "date-time"}, {"format": "date"},
                        {"pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?$"}]},
                           "ISO 8601 (default: now); without an offset, the schedule's zone.")],
            responses={"200": _answer("Firing times in the schedule's zone.", ref("NextRuns")),
                       **_errors(400), **common})},
        "/api/v1/schedules/{schedule_id}/runs": {"parameters": [SCHEDULE], "get": _op(
            "Past runs, newest first", "schedules", "scheduleRuns",
            params=[integer("limit", 20, 1, 200, "Page size."),
                    integer("offset", 0, 0, 10**9, "Skip.")],
            responses={"200": _answer("A page of runs.", ref("RunList")),
                       **_errors(400), **common})},
        "/api/v1/schedules/{schedule_id}/run-now": {"parameters": [SCHEDULE], "post": _op(
            "Fire the schedule now", "schedules", "runScheduleNow",
            description="Composes (and sends) an issue now; once per minute.",
            responses={"202": _answer("The run.", ref("ScheduleRun")),
                       **common, **_errors(409)})},
    }


def _webhooks() -> dict:
    one = _answer("The endpoint.", ref("Webhook"))
    common = _errors(401, 403, 404)

    def action(summary: str, op_id: str, description: str = "", code: str = "200",
               answer: dict = one, more: tuple = ()) -> dict:
        return {"parameters": [WEBHOOK], "post": _op(
            summary, "webhooks", op_id, description=description,
            responses={code: answer, **common, **_errors(*more)})}

    return {
        "/api/v1/webhooks": {
            "get": _op("List webhook endpoints", "webhooks", "listWebhooks",
                       responses={"200": _answer("Every endpoint (no secrets).",
                                                 ref("WebhookList")), **_errors(401, 403)}),
            "post": _op("Add a webhook endpoint", "webhooks", "createWebhook",
                        description="The answer holds the endpoint's secret, shown this once. "
                                    "The URL must be https:// and resolve to a public address "
                                    "(unless MAILER_WEBHOOK_ALLOW_HTTP / _ALLOW_PRIVATE).",
                        body=_json_body(ref("WebhookCreate"), forms=True),
                        responses={"201": _answer("The endpoint, with its secret.",
                                                  ref("Webhook")),
                                   **_errors(400, 401, 403, 413, 415)}),
        },
        "/api/v1/webhooks/{webhook_id}": {
            "parameters": [WEBHOOK],
            "get": _op("Show a webhook endpoint", "webhooks", "showWebhook",
                       responses={"200": one, **common}),
            "delete": _op("Remove a webhook endpoint and its deliveries", "webhooks",
                          "deleteWebhook", responses={"204": {"description": "Removed."},
                                                      **common}),
        },
        "/api/v1/webhooks/{webhook_id}/enable": action(
            "Enable an endpoint", "enableWebhook",
            "Deliveries that waited while it was disabled go out at the next tick."),
        "/api/v1/webhooks/{webhook_id}/disable": action("Disable an endpoint", "disableWebhook"),
        "/api/v1/webhooks/{webhook_id}/rotate-secret": action(
            "Give the endpoint a new secret", "rotateWebhookSecret",
            "The old secret stops at once; the answer shows the new one, this once."),
        "/api/v1/webhooks/{webhook_id}/test": action(
            "Send a test event", "testWebhook", "A `webhook.test` event to this endpoint.",
            "202", _answer("The test delivery's id.", ref("WebhookTest")), (409,)),
        "/api/v1/webhooks/{webhook_id}/deliveries": {"parameters": [WEBHOOK], "get": _op(
            "The endpoint's last 100 deliveries, newest first", "webhooks", "webhookDeliveries",
            responses={"200": _answer("Deliveries.", ref("WebhookDeliveryList")), **common})},
        "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver": {
            "parameters": [WEBHOOK, HOOK_DELIVERY], "post": _op(
                "Deliver again", "webhooks", "redeliverWebhook",
                description="With the same webhook-id; the attempts start over.",
                responses={"202": _answer("The delivery.", ref("WebhookDelivery")),
                           **common})},
    }


def _newsletters() -> dict:
    one = ref("Newsletter")
    return {
        "/api/v1/newsletters": {
            "get": _op("List newsletters with their readers", "newsletters", "listNewsletters",
                       description="Every newsletter, archived ones too, oldest first. Editor "
                                   "or ops role.",
                       responses={"200": _answer("Every newsletter.", ref("NewsletterList")),
                                  **_errors(401, 403)}),
            "post": _op("Add a newsletter", "newsletters", "createNewsletter",
                        description="Ops role. Fields left out take the site's defaults "
                                    "(MAILER_FROM, MAILER_DIGEST_*, every section).",
                        body=_json_body(ref("NewsletterCreate")),
                        responses={"201": _answer("The newsletter.", one),
                                   **_errors(400, 401, 403, 409, 413, 415)}),
        },
        "/api/v1/newsletters/{slug}": {
            "parameters": [NEWSLETTER],
            "get": _op("Show a newsletter and its readers", "newsletters", "showNewsletter",
                       description="Editor or ops role.",
                       responses={"200": _answer("The newsletter.", one),
                                  **_errors(401, 403, 404)}),
            "patch": _op("Change a newsletter", "newsletters", "updateNewsletter",
                         description="Ops role. Fields left out stay as they are; `archived` "
                                     "true archives it (no new issues, its archive stays), "
                                     "false brings it back. The slug never changes.",
                         body=_json_body(ref("NewsletterUpdate")),
                         responses={"200": _answer("The newsletter.", one),
                                    **_errors(400, 401, 403, 404, 409, 413, 415)}),
        },
    }


@cache
def _static_document() -> dict:
    paths = {**_subscribers_and_articles(), **_issues(), **_delivery(), **_schedules(),
             **_webhooks(), **_newsletters()}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Newsletter mailer API",
            "version": "1",
            "description": "Signup and page views (public), articles, digest issues, "
                           "sending, schedules, webhooks and newsletters (bearer tokens from "
                           "`mailer user token EMAIL`). Errors are JSON: "
                           "`{\"error\", \"message\", \"field\"?}`.",
        },
        "tags": [{"name": n} for n in ("subscribers", "articles", "issues", "delivery",
                                       "schedules", "webhooks", "newsletters")],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "A token from `mailer user token EMAIL`. Issues: editor to "
                               "change, editor or ops to read and control sending; schedules: "
                               "ops; webhooks: ops; newsletters: editor or ops to read, ops to "
                               "change; articles: any role; admin may do everything."}},
            "schemas": schemas(),
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
