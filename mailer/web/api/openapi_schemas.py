"""The schemas of the API's OpenAPI document: request bodies, answers, the error shape.

Limits come from the constants the code enforces (see mailer/web/api/openapi.py for why).
"""

from __future__ import annotations

from mailer.feeds.push import MAX_ARTICLES
from mailer.models import DeliveryStatus, Frequency, HookStatus, IssueStatus, ItemSection
from mailer.services.articles import URL_MAX
from mailer.services.hooks import EVENT_TYPES
from mailer.services.issue_edits import INTRO_MAX, SUBJECT_MAX
from mailer.services.newsletters import (
    COUNT_KEYS,
    DESCRIPTION_MAX,
    LIST_ID_MAX,
    SLUG_MAX,
)
from mailer.services.newsletters import LIMITS as NEWSLETTER_LIMITS
from mailer.services.newsletters import NAME_MAX as NEWSLETTER_NAME_MAX
from mailer.services.schedules import LIMITS, MAX_GRACE_HOURS
from mailer.services.subscriptions import EMAIL_MAX, NAME_MAX
from mailer.web.api.issues import MAX_TEST_RECIPIENTS
from mailer.web.signup import HONEYPOT, WORDING_MAX

# The signup API's own limit on its `source` field (mailer/web/api/signup.py).
SOURCE_MAX = 100


def ref(name: str) -> dict:
    """A reference to one of the schemas below."""
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict) -> dict:
    """The schema, or JSON null."""
    return {"anyOf": [schema, {"type": "null"}]}


def enum(values) -> dict:
    """A string that is one of the values of a state enum."""
    return {"type": "string", "enum": [str(v) for v in values]}


SECTIONS = {
    "description": "Section slugs of MAILER_SECTIONS: a list or one comma-separated string; "
                   "none (or all) means every section.",
    "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
}
WHEN = nullable({"type": "string", "format": "date-time"})
COUNT = {"type": "integer", "minimum": 0, "maximum": 100}


def _newsletter_fields() -> dict:
    """What a newsletter's create and update bodies take."""
    def number(field: str, what: str) -> dict:
        low, high = NEWSLETTER_LIMITS[field]
        return nullable({"type": "integer", "minimum": low, "maximum": high,
                         "description": what + " (null: the site's default)."})

    return {
        "name": {"type": "string", "minLength": 1, "maxLength": NEWSLETTER_NAME_MAX,
                 "examples": ["Morning Briefing"]},
        "description": nullable({"type": "string", "maxLength": DESCRIPTION_MAX}),
        "from": nullable({"type": "string", "maxLength": 600,
                          "description": "'Name <address>'; null or '' for MAILER_FROM.",
                          "examples": ["Morning Desk <morning@daily.example>"]}),
        "reply_to": nullable({"type": "string", "maxLength": 254,
                              "description": "An address; null or '' for none."}),
        "list_id": nullable({"type": "string", "maxLength": LIST_ID_MAX,
                             "description": "The List-Id identifier, e.g. "
                                            "morning.daily.example; null or '' for "
                                            "SLUG.<sender domain>."}),
        "public": {"type": "boolean", "description": "Offered on public forms and in the "
                                                    "archive (false: hidden)."},
        "signup_default": {"type": "boolean",
                           "description": "A signup that names no newsletter gets it."},
        "latest_n": number("latest_n", "How many of the latest articles"),
        "popular_m": number("popular_m", "How many of the most popular articles"),
        "min_items": number("min_items", "Fewer new articles than this skip the issue"),
        "sections": nullable({**SECTIONS, "description": "Sections readers may choose in it "
                                                         "(of MAILER_SECTIONS): a list or one "
                                                         "comma-separated string; none means "
                                                         "all."}),
        "archived": {"type": "boolean",
                     "description": "Archived: no new issues; its archive stays."},
    }


def _newsletter_schemas() -> dict:
    fields = _newsletter_fields()
    slug = {"type": "string", "minLength": 1, "maxLength": SLUG_MAX,
            "pattern": r"^[a-z0-9]+(-[a-z0-9]+)*$", "examples": ["morning-briefing"],
            "description": "Lowercase letters, digits and hyphens, not digits alone; it "
                           "never changes."}
    return {
        "NewsletterCreate": {
            "type": "object",
            "required": ["slug", "name"],
            "additionalProperties": False,
            "properties": {"slug": slug, **fields},
        },
        "NewsletterUpdate": {
            "type": "object",
            "additionalProperties": False,
            "properties": fields,
        },
        "Newsletter": {
            "type": "object",
            "additionalProperties": False,
            "required": ["id", "slug", "name", "description", "from", "reply_to", "list_id",
                         "public", "signup_default", "archived", "archived_at", "latest_n",
                         "popular_m", "min_items", "sections", "readers", "created_at",
                         "updated_at"],
            "properties": {
                "id": {"type": "integer"},
                "slug": {"type": "string"},
                "name": {"type": "string"},
                "description": {"type": "string"},
                "from": nullable({"type": "string", "description": "null: MAILER_FROM."}),
                "reply_to": nullable({"type": "string"}),
                "list_id": nullable({"type": "string",
                                     "description": "null: SLUG.<sender domain>."}),
                "public": {"type": "boolean"},
                "signup_default": {"type": "boolean"},
                "archived": {"type": "boolean"},
                "archived_at": WHEN,
                "latest_n": {"type": "integer"},
                "popular_m": {"type": "integer"},
                "min_items": {"type": "integer"},
                "sections": {"type": "array", "items": {"type": "string"},
                             "description": "[]: every section of MAILER_SECTIONS."},
                "readers": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": list(COUNT_KEYS),
                    "description": "Subscriptions: active (get the next issue), pending (not "
                                   "confirmed), unsubscribed, suppressed (subscribed, but the "
                                   "reader bounced or complained).",
                    "properties": {k: {"type": "integer", "minimum": 0} for k in COUNT_KEYS},
                },
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
            },
        },
        "NewsletterList": {
            "type": "object",
            "additionalProperties": False,
            "required": ["newsletters"],
            "properties": {"newsletters": {"type": "array", "items": ref("Newsletter")}},
        },
    }


def schemas() -> dict:
    """components.schemas of the document."""
    low, high = LIMITS["latest_n"]
    return {
        **_newsletter_schemas(),
        "Error": {
            "type": "object",
            "required": ["error", "message"],
            "additionalProperties": False,
            "properties": {
                "error": {
                    "type": "string",
                    "description": "A stable code: invalid (with `field`), bad_request, "
                    "unauthorized, forbidden, not_found, method_not_allowed, conflict, "
                    "too_large, unsupported_media_type, too_many_requests, unavailable.",
                },
                "message": {"type": "string", "description": "What went wrong, for people."},
                "field": {"type": "string", "description": "The input field at fault."},
            },
        },
        "Signup": {
            "type": "object",
            "required": ["email"],
            "properties": {
                "email": {"type": "string", "format": "email", "maxLength": EMAIL_MAX},
                "name": {"type": "string", "maxLength": NAME_MAX},
                "frequency": {**enum(Frequency), "default": "weekly"},
                "sections": SECTIONS,
                "newsletters": {
                    "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                    "description": "Slugs of the public newsletters chosen: a list or one "
                                   "comma-separated string (in a form: the field repeated); "
                                   "one confirmation starts them all. "
                                   "Without it: the newsletters marked as the default for "
                                   "plain signups. An unknown, hidden or archived slug is "
                                   "refused (400) by name."},
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
                "url": {"type": "string", "pattern": "^https?://", "maxLength": URL_MAX,
                        "description": "The article's public address."},
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
                ref("Article"),
                ref("WordPressPost"),
                {"type": "array", "minItems": 1, "maxItems": MAX_ARTICLES,
                 "items": {"anyOf": [ref("Article"), ref("WordPressPost")]}},
                {"type": "object", "required": ["articles"], "additionalProperties": False,
                 "properties": {"articles": {
                     "type": "array", "minItems": 1, "maxItems": MAX_ARTICLES,
                     "items": {"anyOf": [ref("Article"), ref("WordPressPost")]}}}},
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
            "properties": {"url": {"type": "string", "pattern": "^https?://",
                                   "maxLength": URL_MAX,
                                   "description": "The page's canonical address."}},
        },
        "IssueCreate": {
            "type": "object",
            "properties": {
                "newsletter": {"type": "string", "maxLength": 60,
                               "description": "The newsletter's slug. Default: the first "
                                              "newsletter. An archived one is refused (409)."},
                "subject": {"type": "string", "maxLength": SUBJECT_MAX,
                            "description": "One line; a template (`{{ top_story }}` ...). "
                                           "Default: `{{ list_name }}: {{ top_story }}`."},
                "preheader": {"type": "string", "maxLength": SUBJECT_MAX},
                "intro": {"type": "string", "maxLength": INTRO_MAX,
                          "description": "Markdown; a template that may also use `{{ name }}`."},
                "frequency": {**enum(Frequency), "default": "weekly"},
                "sections": SECTIONS,
                "latest": {**COUNT, "description": "Latest articles (default: the newsletter's)."},
                "popular": {**COUNT, "description": "Most popular (default: the newsletter's)."},
                "min_items": {**COUNT, "description": "Fewer new articles: the issue is skipped "
                                                      "(default: the newsletter's)."},
            },
        },
        "IssueEdit": {
            "type": "object",
            "description": "Fields left out (or null) stay as they are.",
            "properties": {
                "subject": nullable({"type": "string", "maxLength": SUBJECT_MAX}),
                "preheader": nullable({"type": "string", "maxLength": SUBJECT_MAX}),
                "intro": nullable({"type": "string", "maxLength": INTRO_MAX}),
                "greeting": nullable({"type": "boolean", "description":
                                      'Start with "Hello NAME," (default true).'}),
            },
        },
        "ItemAdd": {
            "type": "object",
            "required": ["article_id"],
            "properties": {
                "article_id": {"type": "integer", "minimum": 1},
                "section": nullable(enum(ItemSection)),
            },
        },
        "ItemEdit": {
            "type": "object",
            "description": "At least one of the fields; null leaves it as it is.",
            "minProperties": 1,
            "properties": {
                "pinned": nullable({"type": "boolean"}),
                "excluded": nullable({"type": "boolean"}),
                "position": nullable({"type": "integer", "minimum": 0,
                                       "description": "0 = the top of its section."}),
                "section": nullable(enum(ItemSection)),
            },
        },
        "TestSend": {
            "type": "object",
            "required": ["to"],
            "properties": {
                "to": {"anyOf": [
                    {"type": "string", "format": "email", "maxLength": EMAIL_MAX},
                    {"type": "array", "minItems": 1, "maxItems": MAX_TEST_RECIPIENTS,
                     "items": {"type": "string", "format": "email", "maxLength": EMAIL_MAX}},
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
            "required": ["id", "status", "status_reason", "subject", "newsletter", "frequency",
                         "sections", "latest", "popular", "created_at", "started_at",
                         "finished_at"],
            "properties": {
                "id": {"type": "integer"},
                "status": enum(IssueStatus),
                "status_reason": nullable({"type": "string"}),
                "subject": {"type": "string"},
                "newsletter": {"type": "string", "description": "The newsletter's slug."},
                "frequency": enum(Frequency),
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
                "issues": {"type": "array", "items": ref("IssueSummary")},
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
                "section": enum(ItemSection),
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
                         "greeting", "newsletter", "audience", "latest_n", "popular_m", "min_items", "window_start",
                         "window_end", "schedule_id", "author_id", "created_at", "started_at",
                         "finished_at", "archive_url", "items"],
            "properties": {
                "id": {"type": "integer"},
                "status": enum(IssueStatus),
                "status_reason": nullable({"type": "string"}),
                "subject": {"type": "string"},
                "preheader": {"type": "string"},
                "intro": {"type": "string"},
                "greeting": {"type": "boolean"},
                "newsletter": {"type": "string", "description": "The newsletter's slug."},
                "audience": {
                    "type": "object", "additionalProperties": False,
                    "required": ["frequency", "sections"],
                    "properties": {"frequency": enum(Frequency),
                                   "sections": {"type": "array", "items": {"type": "string"}}},
                },
                "latest_n": {"type": "integer"},
                "popular_m": {"type": "integer"},
                "min_items": {"type": "integer"},
                "window_start": WHEN,
                "window_end": WHEN,
                "schedule_id": nullable({"type": "integer"}),
                "author_id": nullable({"type": "integer"}),
                "created_at": {"type": "string", "format": "date-time"},
                "started_at": WHEN,
                "finished_at": WHEN,
                "archive_url": nullable({"type": "string"}),
                "items": {"type": "array", "items": ref("IssueItem")},
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
                         "finished_at", "bounced_hard", "bounced_soft", "complaints",
                         "bounced_hard_rate", "bounced_soft_rate", "complaints_rate"],
            "properties": {
                "issue": {"type": "integer"},
                "status": enum(IssueStatus),
                "reason": nullable({"type": "string"}),
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
                "eta_seconds": nullable({"type": "integer"}),
                "bounced_hard": {"type": "integer",
                                 "description": "Readers whose copy bounced permanently."},
                "bounced_soft": {"type": "integer",
                                 "description": "Readers whose copy bounced temporarily."},
                "complaints": {"type": "integer",
                               "description": "Readers who reported the issue as spam."},
                "bounced_hard_rate": {"type": "number",
                                      "description": "bounced_hard per message sent (0-1)."},
                "bounced_soft_rate": {"type": "number",
                                      "description": "bounced_soft per message sent (0-1)."},
                "complaints_rate": {"type": "number",
                                    "description": "complaints per message sent (0-1)."},
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
                "newsletter": nullable({"type": "string", "maxLength": 60,
                                        "description": "The slug of the newsletter its issues "
                                                       "belong to. Default: the first "
                                                       "newsletter. An archived one is refused "
                                                       "(409)."}),
                "cron": {"type": "string",
                         "examples": ["0 7 * * mon", "mon,thu 07:00", "weekdays 06:30"],
                         "description": "Five cron fields or a simple form like `mon 07:00` "
                                        "or `daily 06:30`; at most hourly."},
                "timezone": {"type": "string", "default": "UTC", "examples": ["Europe/Berlin"],
                             "description": "An IANA time zone."},
                "frequency": nullable(enum(Frequency)),
                "sections": nullable(SECTIONS),
                "latest_n": nullable({"type": "integer", "minimum": low, "maximum": high}),
                "popular_m": nullable({"type": "integer", "minimum": low, "maximum": high}),
                "min_items": nullable({"type": "integer", "minimum": low, "maximum": high}),
                "subject": nullable({"type": "string", "maxLength": SUBJECT_MAX}),
                "grace_hours": nullable({"type": "number", "exclusiveMinimum": 0,
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
                "reason": nullable({"type": "string"}),
                "issue_id": nullable({"type": "integer"}),
                "reported_at": WHEN,
            },
        },
        "Schedule": {
            "type": "object",
            "additionalProperties": False,
            "required": ["id", "name", "newsletter", "cron", "description", "timezone",
                         "frequency",
                         "sections", "subject", "latest_n", "popular_m", "min_items",
                         "grace_hours", "active", "status", "next_runs", "last_run",
                         "created_at"],
            "properties": {
                "id": {"type": "integer"},
                "name": {"type": "string"},
                "newsletter": {"type": "string", "description": "The newsletter's slug."},
                "cron": {"type": "string"},
                "description": {"type": "string"},
                "timezone": {"type": "string"},
                "frequency": enum(Frequency),
                "sections": {"type": "array", "items": {"type": "string"}},
                "subject": {"type": "string", "description": "'' = the default subject."},
                "latest_n": {"type": "integer"},
                "popular_m": {"type": "integer"},
                "min_items": {"type": "integer"},
                "grace_hours": nullable({"type": "number"}),
                "active": {"type": "boolean"},
                "status": {"type": "string", "enum": ["active", "paused"]},
                "next_runs": {"type": "array",
                              "items": {"type": "string", "format": "date-time"}},
                "last_run": nullable(ref("ScheduleRun")),
                "created_at": {"type": "string", "format": "date-time"},
                "recent_runs": {"type": "array", "items": ref("ScheduleRun"),
                                "description": "Only when one schedule is shown."},
            },
        },
        "WebhookCreate": {
            "type": "object",
            "required": ["url", "events"],
            "additionalProperties": False,
            "properties": {
                "url": {"type": "string", "maxLength": 2000,
                        "examples": ["https://crm.example.com/mailer-events"]},
                "events": {
                    "description": "Event types: a list or one comma-separated string; `*` "
                                   "for every type.",
                    "anyOf": [{"type": "string"},
                              {"type": "array", "items": {"type": "string",
                                                          "enum": [*EVENT_TYPES, "*"]}}],
                },
                "personal_data": {"type": "boolean", "default": False,
                                  "description": "Send readers' addresses and names."},
                "description": nullable({"type": "string", "maxLength": 200}),
            },
        },
        "Webhook": {
            "type": "object",
            "additionalProperties": False,
            "required": ["id", "url", "events", "personal_data", "enabled", "description",
                         "failing_since", "disabled_reason", "created_at"],
            "properties": {
                "id": {"type": "integer"},
                "url": {"type": "string"},
                "events": {"type": "array", "items": {"type": "string", "enum": list(EVENT_TYPES)}},
                "personal_data": {"type": "boolean"},
                "enabled": {"type": "boolean"},
                "description": {"type": "string"},
                "failing_since": WHEN,
                "disabled_reason": nullable({"type": "string"}),
                "created_at": {"type": "string", "format": "date-time"},
                "secret": {"type": "string", "pattern": "^whsec_",
                           "description": "Only when added or rotated: keep it now."},
            },
        },
        "WebhookList": {
            "type": "object",
            "additionalProperties": False,
            "required": ["webhooks"],
            "properties": {"webhooks": {"type": "array", "items": ref("Webhook")}},
        },
        "WebhookTest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["delivery_id"],
            "properties": {"delivery_id": {"type": "integer"}},
        },
        "WebhookDelivery": {
            "type": "object",
            "additionalProperties": False,
            "required": ["id", "event", "status", "attempts", "next_attempt_at",
                         "last_attempt_at", "response_status", "latency_ms", "response_excerpt",
                         "error", "delivered_at"],
            "properties": {
                "id": {"type": "integer"},
                "event": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["id", "type", "created_at"],
                    "properties": {
                        "id": {"type": "string", "description": "The webhook-id header."},
                        "type": {"type": "string"},
                        "created_at": {"type": "string", "format": "date-time"},
                    },
                },
                "status": enum(HookStatus),
                "attempts": {"type": "integer", "minimum": 0},
                "next_attempt_at": WHEN,
                "last_attempt_at": WHEN,
                "response_status": nullable({"type": "integer"}),
                "latency_ms": nullable({"type": "integer"}),
                "response_excerpt": nullable({"type": "string", "maxLength": 4096}),
                "error": nullable({"type": "string"}),
                "delivered_at": WHEN,
            },
        },
        "WebhookDeliveryList": {
            "type": "object",
            "additionalProperties": False,
            "required": ["deliveries"],
            "properties": {"deliveries": {"type": "array", "items": ref("WebhookDelivery")}},
        },
        "ScheduleList": {
            "type": "object",
            "additionalProperties": False,
            "required": ["schedules"],
            "properties": {"schedules": {"type": "array", "items": ref("Schedule")}},
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
                           "runs": {"type": "array", "items": ref("ScheduleRun")}},
        },
    }
