"""The composer: issues list, a new issue, and one screen to edit, preview and test a draft."""

from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, Response, abort, flash, redirect, render_template, request, url_for
from sqlalchemy import func, select

from mailer.clock import utcnow
from mailer.db import db
from mailer.errors import InvalidTransition, MailerError, NotFound, ValidationError
from mailer.models import Issue, IssueItem, IssueStatus, ItemSection, Role
from mailer.runtime import runtime
from mailer.services import articles, digests, issue_edits, issue_states, render, reports
from mailer.services.subscriptions import normalize_email
from mailer.tasks import enqueue
from mailer.web import auth
from mailer.web.admin.console import page_count, paging, sandboxed_preview

bp = Blueprint("admin_issues", __name__, url_prefix="/admin/issues")

PER_PAGE = 25
MAX_TEST_RECIPIENTS = 10
SECTION_NAMES = {ItemSection.LATEST: "Latest", ItemSection.POPULAR: "Most popular"}
# Where an issue's page is, by its state: drafts are composed, the rest are followed.
EDITOR_ROLES = (Role.EDITOR,)
READER_ROLES = (Role.EDITOR, Role.OPS)


def issue_home(issue: Issue) -> str:
    if issue.status in issue_states.EDITABLE:
        return url_for("admin_issues.compose", issue_id=issue.id)
    if issue.status in (IssueStatus.SENDING, IssueStatus.PAUSED):
        return url_for("admin_sending.sending", issue_id=issue.id)
    if issue.status == IssueStatus.SKIPPED:
        return url_for("admin_issues.index", status="skipped")
    return url_for("admin_sending.report", issue_id=issue.id)


def newsletters_taking_issues():
    """The newsletters that take new issues (queried only when a page asks)."""
    return [n for n in digests.newsletter_options(db.session) if n.archived_at is None]


@bp.app_context_processor
def _helpers():
    return {"issue_home": issue_home, "newsletters_taking_issues": newsletters_taking_issues}


@bp.get("")
@auth.login_required(*READER_ROLES)
def index():
    status = request.args.get("status", "")
    statuses = None
    if status:
        try:
            statuses = [IssueStatus(status)]
        except ValueError:
            raise ValidationError("status", "Unknown issue status.") from None
    letter = digests.newsletter_filter(db.session, request.args.get("newsletter"))
    page, offset = paging(PER_PAGE)
    stmt = select(func.count()).select_from(Issue)
    if statuses:
        stmt = stmt.where(Issue.status.in_(statuses))
    if letter is not None:
        stmt = stmt.where(Issue.newsletter_id == letter.id)
    total = db.session.scalar(stmt) or 0
    issues = digests.list_issues(db.session, limit=PER_PAGE, offset=offset, statuses=statuses,
                                 newsletter_id=letter.id if letter else None)
    ids = [i.id for i in issues]
    settings = runtime().settings
    options = digests.newsletter_options(db.session)
    open_ = [n for n in options if n.archived_at is None]
    pager_args = {"status": status} if status else {}
    if letter is not None:
        pager_args["newsletter"] = letter.slug
    return render_template(
        "admin/issues.html", issues=issues, counts=reports.issue_counts(db.session, ids),
        subjects=reports.sent_subjects(db.session, ids), status=status,
        statuses=[s.value for s in IssueStatus], total=total, page=page,
        pages=page_count(total, PER_PAGE), pager_args=pager_args,
        sections=settings.sections, newsletters=options, open_newsletters=open_,
        newsletter=letter.slug if letter else "",
        can_edit=auth.allowed(auth.current_user(), EDITOR_ROLES),
    )


def _count(form, name: str, default: int | None) -> int | None:
    raw = (form.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(name, f"{name.capitalize()} must be a whole number.") from None
    if not 0 <= value <= 100:
        raise ValidationError(name, f"{name.capitalize()} must be between 0 and 100.")
    return value


@bp.post("/new")
@auth.login_required(*EDITOR_ROLES)
def create():
    """Compose a new issue from the latest and most popular articles, then edit it."""
    rt = runtime()
    form = request.form
    issue = digests.create_issue(
        db.session, rt.settings, rt.popularity, now=utcnow(),
        newsletter=form.get("newsletter") or None,
        audience_frequency=issue_edits.check_frequency(form.get("frequency") or "weekly"),
        audience_sections=form.getlist("sections"),
        latest_n=_count(form, "latest", None),
        popular_m=_count(form, "popular", None),
        # The editor decides what is worth sending: a hand-made issue is never skipped.
        min_items=0,
        author_id=auth.current_user().id,
    )
    db.session.commit()
    return redirect(url_for("admin_issues.compose", issue_id=issue.id))


def _items(issue: Issue):
    items = list(db.session.scalars(
        select(IssueItem).where(IssueItem.issue_id == issue.id)
        .order_by(IssueItem.section, IssueItem.position, IssueItem.id)
    ))
    shown = {s: [i for i in items if i.section == s and not i.excluded] for s in ItemSection}
    return shown, [i for i in items if i.excluded]


@bp.get("/<int:issue_id>")
@auth.login_required(*READER_ROLES)
def compose(issue_id: int):
    """The composer for drafts; any other issue's link leads to its progress or report."""
    issue = issue_edits.get_issue(db.session, issue_id)
    if issue.status in issue_states.EDITABLE and not auth.allowed(auth.current_user(), EDITOR_ROLES):
        abort(403, "Only editors can open a draft issue.")
    return _compose_page(issue_id)


def _compose_page(issue_id: int, error: ValidationError | None = None, typed=None,
                  status: int = 200):
    rt = runtime()
    issue = issue_edits.get_issue(db.session, issue_id)
    if issue.status not in issue_states.EDITABLE:
        return redirect(issue_home(issue))
    view = request.args.get("preview", "desktop")
    if view not in ("desktop", "mobile", "text"):
        view = "desktop"
    preview = render.render_preview(db.session, issue, "", rt.settings)
    shown, dropped = _items(issue)
    q = request.args.get("q", "")
    text = typed or {"subject": issue.subject, "preheader": issue.preheader,
                     "intro": issue.intro, "greeting": issue.greeting}
    return render_template(
        "admin/compose.html", issue=issue, shown=shown, dropped=dropped,
        section_names=SECTION_NAMES, preview=preview, view=view, q=q, text=text, error=error,
        candidates=reports.candidates(db.session, issue.id, q),
        audience=reports.audience(db.session, issue, rt.settings),
        section_labels=rt.settings.section_labels, me=auth.current_user(),
        variables=digests.TEMPLATE_VARIABLES,
        newest=articles.newest_published(db.session), feeds=rt.settings.feeds,
        popularity_days=rt.settings.popularity_days,
        reading_data=bool(rt.popularity.ranking(
            db.session, days=rt.settings.popularity_days, now=utcnow(), limit=1)),
        # After the ranking just made: True when it was made without Redis's live counts.
        live_counts_missing=rt.popularity.live_counts_missing(),
    ), status


def _back(issue_id: int, anchor: str = ""):
    return redirect(url_for("admin_issues.compose", issue_id=issue_id) + anchor)


def _refused(issue_id: int, e: MailerError, anchor: str = ""):
    """An edit refused: the issue moved on (its page says where it is now), or the input was
    wrong (the composer again, with the reason, and a 4xx)."""
    db.session.rollback()
    if isinstance(e, InvalidTransition):
        issue = issue_edits.get_issue(db.session, issue_id)
        flash(f"Issue {issue_id} is {issue.status} and can no longer be edited.", "error")
        return redirect(issue_home(issue))
    error = e if isinstance(e, ValidationError) else ValidationError(anchor.lstrip("#"), str(e))
    return _compose_page(issue_id, error, status=e.status)


@bp.post("/<int:issue_id>/text")
@auth.login_required(*EDITOR_ROLES)
def save_text(issue_id: int):
    form = request.form
    try:
        issue_edits.set_text(db.session, issue_id, subject=form.get("subject", ""),
                             preheader=form.get("preheader", ""), intro=form.get("intro", ""),
                             greeting=form.get("greeting") == "on")
        db.session.commit()
    except ValidationError as e:
        # Keep what was typed: the form is shown again with the reason, nothing saved.
        db.session.rollback()
        typed = {k: form.get(k, "") for k in ("subject", "preheader", "intro")}
        typed["greeting"] = form.get("greeting") == "on"
        return _compose_page(issue_id, e, typed, 400)
    except InvalidTransition as e:
        return _refused(issue_id, e)
    flash("Text saved.")
    return _back(issue_id, "#text")


ITEM_ACTIONS = ("pin", "unpin", "exclude", "include", "up", "down", "move")


@bp.post("/<int:issue_id>/items/<int:item_id>/<any(" + ", ".join(ITEM_ACTIONS) + "):action>")
@auth.login_required(*EDITOR_ROLES)
def item(issue_id: int, item_id: int, action: str):
    """Pin, drop, restore or move one item; JSON for the drag-and-drop script."""
    row = db.session.get(IssueItem, item_id)
    if row is None or row.issue_id != issue_id:
        raise NotFound(f"Issue {issue_id} has no item {item_id}.")
    article_id = row.article_id
    try:
        if action in ("pin", "unpin", "exclude", "include"):
            getattr(issue_edits, action)(db.session, issue_id, article_id)
        elif action in ("up", "down"):
            position = max(0, row.position + (-1 if action == "up" else 1))
            issue_edits.move(db.session, issue_id, item_id, position)
        else:
            issue_edits.move(db.session, issue_id, item_id,
                             _position(request.form.get("position")),
                             _section(request.form.get("section")))
        db.session.commit()
    except (ValidationError, InvalidTransition, NotFound) as e:
        if request.accept_mimetypes.best == "application/json":
            raise
        return _refused(issue_id, e, "#items")
    if request.accept_mimetypes.best == "application/json":
        return {"ok": True}
    return _back(issue_id, f"#item-{item_id}")


def _position(raw) -> int:
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ValidationError("position", "The position must be a whole number.") from None
    if value < 0:
        raise ValidationError("position", "The position must be 0 or more.")
    return value


def _section(raw) -> ItemSection | None:
    if not raw:
        return None
    try:
        return ItemSection(raw)
    except ValueError:
        raise ValidationError("section", "The section must be latest or popular.") from None


@bp.post("/<int:issue_id>/articles/<int:article_id>")
@auth.login_required(*EDITOR_ROLES)
def add_article(issue_id: int, article_id: int):
    """Add an article the proposal left out; it is pinned, so proposing again keeps it."""
    try:
        issue_edits.pin(db.session, issue_id, article_id, _section(request.form.get("section")))
        db.session.commit()
    except (ValidationError, InvalidTransition, NotFound) as e:
        return _refused(issue_id, e, "#add")
    flash("Article added and pinned.")
    return _back(issue_id, "#items")


@bp.post("/<int:issue_id>/recompose")
@auth.login_required(*EDITOR_ROLES)
def recompose(issue_id: int):
    days = request.form.get("look_back_days")
    try:
        look_back = None
        if days is not None:
            if not days.isdigit() or not 1 <= int(days) <= 365:
                raise ValidationError("look_back_days", "Look back between 1 and 365 days.")
            look_back = timedelta(days=int(days))
        rt = runtime()
        digests.recompose(db.session, rt.settings, rt.popularity, issue_id, now=utcnow(),
                          look_back=look_back)
        db.session.commit()
    except (InvalidTransition, ValidationError) as e:
        return _refused(issue_id, e)
    if look_back is not None:
        flash(f"Proposed again from the articles of the last {days} days; pinned and dropped "
              "items stayed.")
        return _back(issue_id, "#items")
    flash("Proposed again from the newest articles and ranking; pinned and dropped items stayed.")
    return _back(issue_id, "#items")


def _preview(issue_id: int):
    rt = runtime()
    issue = issue_edits.get_issue(db.session, issue_id)
    sections = issue_edits.check_sections(request.args.get("sections", ""), rt.settings)
    return digests.preview(db.session, issue, sections, rt.settings)


@bp.get("/<int:issue_id>/preview.html")
@auth.login_required(*READER_ROLES)
def preview_html(issue_id: int):
    _, html, _ = _preview(issue_id)
    return sandboxed_preview(html)


@bp.get("/<int:issue_id>/preview.txt")
@auth.login_required(*READER_ROLES)
def preview_text(issue_id: int):
    _, _, text = _preview(issue_id)
    return Response(text, mimetype="text/plain")


@bp.post("/<int:issue_id>/test")
@auth.login_required(*EDITOR_ROLES)
def test_send(issue_id: int):
    """Mail the preview to a few addresses (the editor's own inboxes), through the worker."""
    from mailer.tasks.digest import send_test

    raw = request.form.get("to", "")
    parts = [p for p in raw.replace(";", ",").replace("\n", ",").split(",") if p.strip()]
    try:
        if not parts:
            raise ValidationError("to", "Give at least one address to send the test to.")
        if len(parts) > MAX_TEST_RECIPIENTS:
            raise ValidationError("to", f"At most {MAX_TEST_RECIPIENTS} test addresses.")
        addresses = sorted({normalize_email(p) for p in parts})
        _preview(issue_id)
    except (ValidationError, NotFound) as e:
        return _refused(issue_id, e, "#test")
    sent = [enqueue(send_test, issue_id, address, "") for address in addresses]
    if not all(sent):
        flash("The task queue cannot be reached; try again in a minute.", "error")
    else:
        flash(f"Test sent to {', '.join(addresses)}. It arrives in a moment, subject "
              "marked [Test].")
    return _back(issue_id, "#test")
