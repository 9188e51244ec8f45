"""Digest issues in the JSON API (bearer tokens): create, read, edit, preview, test-send."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from mailer.clock import utcnow
from mailer.db import db
from mailer.errors import MailerError, NotFound, ValidationError
from mailer.models import IssueItem, IssueStatus, ItemSection, Role
from mailer.runtime import runtime
from mailer.services import digests, issue_edits, render
from mailer.services.subscriptions import normalize_email
from mailer.tasks import enqueue
from mailer.web.api.requests import request_data
from mailer.web.auth import bearer_user
from mailer.web.errors import MAX_ID

bp = Blueprint("issues", __name__)

MAX_TEST_RECIPIENTS = 10


class ServiceUnavailable(MailerError):
    status = 503


def _int(data, key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(key, f"{key} must be a whole number.")
    return value


def _bool(data, key: str) -> bool | None:
    value = data.get(key)
    if value is not None and not isinstance(value, bool):
        raise ValidationError(key, f"{key} must be true or false.")
    return value


def _sections_arg(value):
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise ValidationError("sections", "sections must be a list of section names.")


def _section(value) -> ItemSection | None:
    if value is None:
        return None
    try:
        return ItemSection(value)
    except ValueError:
        raise ValidationError("section", "section must be latest or popular.") from None


def _slug(value) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValidationError("newsletter", "newsletter must be a newsletter's slug.")
    return value


def _describe(issue) -> dict:
    return digests.describe(db.session, issue, runtime().settings)


@bp.post("/issues")
def create():
    user = bearer_user(Role.EDITOR)
    data = request_data()
    rt = runtime()
    issue = digests.create_issue(
        db.session,
        rt.settings,
        rt.popularity,
        now=utcnow(),
        newsletter=_slug(data.get("newsletter")),
        subject=data.get("subject"),
        preheader=data.get("preheader") or "",
        intro=data.get("intro") or "",
        audience_frequency=issue_edits.check_frequency(data.get("frequency") or "weekly"),
        audience_sections=_sections_arg(data.get("sections")),
        latest_n=_int(data, "latest"),
        popular_m=_int(data, "popular"),
        min_items=_int(data, "min_items"),
        author_id=user.id,
    )
    db.session.commit()
    return jsonify(_describe(issue)), 201, {"Location": f"/api/v1/issues/{issue.id}"}


@bp.get("/issues")
def index():
    bearer_user(Role.EDITOR, Role.OPS)
    limit = min(max(request.args.get("limit", 50, type=int), 1), 500)
    offset = min(max(request.args.get("offset", 0, type=int), 0), MAX_ID)
    status = request.args.get("status")
    statuses = None
    if status:
        try:
            statuses = [IssueStatus(s) for s in status.split(",")]
        except ValueError:
            raise ValidationError("status", "Unknown issue status.") from None
    letter = digests.newsletter_filter(db.session, request.args.get("newsletter"))
    issues = digests.list_issues(db.session, limit=limit, offset=offset, statuses=statuses,
                                 newsletter_id=letter.id if letter else None)
    return jsonify(
        {
            "issues": [digests.summary(db.session, i) for i in issues],
            "limit": limit,
            "offset": offset,
        }
    )


@bp.get("/issues/<int:issue_id>")
def show(issue_id: int):
    bearer_user(Role.EDITOR, Role.OPS)
    return jsonify(_describe(issue_edits.get_issue(db.session, issue_id)))


@bp.patch("/issues/<int:issue_id>")
def edit(issue_id: int):
    bearer_user(Role.EDITOR)
    data = request_data()
    issue = issue_edits.set_text(
        db.session,
        issue_id,
        subject=data.get("subject"),
        preheader=data.get("preheader"),
        intro=data.get("intro"),
        greeting=_bool(data, "greeting"),
    )
    db.session.commit()
    return jsonify(_describe(issue))


@bp.post("/issues/<int:issue_id>/recompose")
def recompose(issue_id: int):
    bearer_user(Role.EDITOR)
    rt = runtime()
    issue = digests.recompose(db.session, rt.settings, rt.popularity, issue_id, now=utcnow())
    db.session.commit()
    return jsonify(_describe(issue))


@bp.post("/issues/<int:issue_id>/items")
def add_item(issue_id: int):
    """Add an article to the issue, pinned (it survives re-composing)."""
    bearer_user(Role.EDITOR)
    data = request_data()
    article_id = _int(data, "article_id")
    if article_id is None:
        raise ValidationError("article_id", "article_id is required.")
    if not 0 < article_id <= MAX_ID:
        # No article has such an id, and the database driver cannot even look it up.
        raise NotFound(f"There is no article {article_id}.")
    issue_edits.pin(db.session, issue_id, article_id, _section(data.get("section")))
    db.session.commit()
    return jsonify(_describe(issue_edits.get_issue(db.session, issue_id))), 201


@bp.patch("/issues/<int:issue_id>/items/<int:item_id>")
def edit_item(issue_id: int, item_id: int):
    """Pin, unpin, exclude, include or move one item."""
    bearer_user(Role.EDITOR)
    data = request_data()
    item = db.session.get(IssueItem, item_id)
    if item is None or item.issue_id != issue_id:
        raise NotFound(f"Issue {issue_id} has no item {item_id}.")
    pinned, excluded = _bool(data, "pinned"), _bool(data, "excluded")
    position, section = _int(data, "position"), _section(data.get("section"))
    if pinned is None and excluded is None and position is None and section is None:
        raise ValidationError("item", "Give pinned, excluded, position or section to change.")
    if excluded is True:
        issue_edits.exclude(db.session, issue_id, item.article_id)
    elif excluded is False:
        issue_edits.include(db.session, issue_id, item.article_id)
    if pinned is True:
        issue_edits.pin(db.session, issue_id, item.article_id)
    elif pinned is False:
        issue_edits.unpin(db.session, issue_id, item.article_id)
    if position is not None or section is not None:
        issue_edits.move(
            db.session, issue_id, item_id, position if position is not None else 0, section
        )
    db.session.commit()
    return jsonify(_describe(issue_edits.get_issue(db.session, issue_id)))


@bp.get("/issues/<int:issue_id>/preview")
def preview(issue_id: int):
    """What a reader of `sections` gets, with sample values: JSON, or ?format=html|text."""
    bearer_user(Role.EDITOR, Role.OPS)
    rt = runtime()
    issue = issue_edits.get_issue(db.session, issue_id)
    sections = issue_edits.check_sections(request.args.get("sections", ""), rt.settings)
    subject, html, text = digests.preview(db.session, issue, sections, rt.settings)
    fmt = request.args.get("format", "json")
    if fmt == "html":
        # A preview is shown to the editor as is; it must not run anything on our origin.
        resp = Response(html, mimetype="text/html")
        resp.headers["Content-Security-Policy"] = (
            "default-src 'none'; img-src http: https: data:; style-src 'unsafe-inline'; sandbox"
        )
        return resp
    if fmt == "text":
        return Response(text, mimetype="text/plain")
    if fmt != "json":
        raise ValidationError("format", "format must be json, html or text.")
    return jsonify({"subject": subject, "html": html, "text": text, "sections": sections})


@bp.post("/issues/<int:issue_id>/test")
def test_send(issue_id: int):
    """Send the preview to a few addresses (the editor's own inboxes), through the worker."""
    bearer_user(Role.EDITOR)
    rt = runtime()
    data = request_data()
    raw = data.get("to")
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw or not all(isinstance(a, str) for a in raw):
        raise ValidationError("to", "to must be a list of email addresses.")
    if len(raw) > MAX_TEST_RECIPIENTS:
        raise ValidationError("to", f"At most {MAX_TEST_RECIPIENTS} test recipients.")
    addresses = sorted({normalize_email(a) for a in raw})
    sections = issue_edits.check_sections(_sections_arg(data.get("sections")), rt.settings)
    issue = issue_edits.get_issue(db.session, issue_id)
    if render.render_preview(db.session, issue, sections, rt.settings) is None:
        raise NotFound("Readers of these sections would get no articles in this issue.")
    from mailer.tasks.digest import send_test

    if not all([enqueue(send_test, issue_id, address, sections) for address in addresses]):
        raise ServiceUnavailable("The task queue is unreachable; try again in a minute.")
    return jsonify({"queued": True, "to": addresses, "sections": sections}), 202
