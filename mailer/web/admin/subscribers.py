"""Readers in the console (ops): search, one reader's records, import, export, erase, and the
suppression list."""

from __future__ import annotations

import csv
import io

from flask import (
    Blueprint,
    Response,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)

from mailer.clock import utcnow
from mailer.db import db
from mailer.errors import ValidationError
from mailer.models import Role, SubscriberStatus
from mailer.runtime import runtime
from mailer.services import bounces, digests
from mailer.services import subscriber_admin as admin
from mailer.services import subscriptions as subs
from mailer.tasks import enqueue
from mailer.web import auth
from mailer.web.admin.console import page_count, paging

bp = Blueprint("admin_subscribers", __name__, url_prefix="/admin/subscribers")

PER_PAGE = 50
OPS = (Role.OPS,)


def _filters() -> tuple[dict[str, str], dict]:
    """The list's filters as its links repeat them, and as the search takes them (the
    chosen newsletter by id)."""
    args = request.args
    out = {"q": args.get("q", "").strip()[:200], "status": args.get("status", ""),
           "section": args.get("section", "")}
    if out["section"] and out["section"] not in runtime().settings.section_labels:
        raise ValidationError("section", f"Unknown section: {out['section'][:40]}.")
    letter = digests.newsletter_filter(db.session, args.get("newsletter"))
    criteria = {**out, "newsletter_id": letter.id if letter else None}
    out["newsletter"] = letter.slug if letter else ""
    return out, criteria


@bp.get("")
@auth.login_required(*OPS)
def index():
    filters, criteria = _filters()
    page, offset = paging(PER_PAGE)
    readers, total = admin.search(db.session, offset=offset, limit=PER_PAGE, **criteria)
    return render_template(
        "admin/subscribers.html",
        rows=admin.list_rows(db.session, readers, criteria["newsletter_id"]),
        total=total, page=page, pages=page_count(total, PER_PAGE), filters=filters,
        pager_args={k: v for k, v in filters.items() if v},
        statuses=[s.value for s in SubscriberStatus],
        sections=runtime().settings.sections, section_labels=runtime().settings.section_labels,
        counts=admin.counts_by_status(db.session, criteria["newsletter_id"]),
        newsletters=digests.newsletter_options(db.session), newsletter=filters["newsletter"],
        filtered=any(filters.values()),
    )


@bp.get("/export.csv")
@auth.login_required(*OPS)
def export():
    """The readers the list shows (all of them without filters), as CSV."""
    _, criteria = _filters()

    def rows():
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(admin.EXPORT_FIELDS)
        for n, row in enumerate(admin.export_rows(db.session, **criteria)):
            writer.writerow(row)
            if n % 500 == 0:
                yield out.getvalue()
                out.seek(0)
                out.truncate()
        yield out.getvalue()

    name = f"subscribers-{utcnow():%Y%m%d-%H%M}.csv"
    return Response(stream_with_context(rows()), mimetype="text/csv",
                    headers={"Content-Disposition": f"attachment; filename={name}"})


@bp.get("/<int:subscriber_id>")
@auth.login_required(*OPS)
def show(subscriber_id: int):
    sub = admin.get_subscriber(db.session, subscriber_id)
    page, offset = paging(PER_PAGE)
    sent, total = admin.deliveries_of(db.session, sub.id, offset, PER_PAGE)
    bounce_history = bounces.history(db.session, sub.id)
    return render_template(
        "admin/subscriber.html", sub=sub, consents=sub.consents, deliveries=sent, total=total,
        events=admin.events_of(db.session, sub.id), page=page,
        pages=page_count(total, PER_PAGE), pager_args={"subscriber_id": sub.id},
        section_labels=runtime().settings.section_labels,
        subscriptions=subs.subscriptions_by_reader(db.session, [sub.id]).get(sub.id, []),
        bounce_history=bounce_history,
        bounce_newsletters=admin.newsletter_names(db.session, (b["issue"] for b in bounce_history)),
    )


@bp.post("/<int:subscriber_id>/reactivate")
@auth.login_required(*OPS)
def reactivate(subscriber_id: int):
    """A bounced reader's address works again (an operator checked): active, score 0."""
    sub = admin.get_subscriber(db.session, subscriber_id)
    bounces.reactivate(db.session, sub, by=f"console: {auth.current_user().email}")
    db.session.commit()
    flash(f"{sub.email} is active again.")
    return redirect(url_for("admin_subscribers.show", subscriber_id=subscriber_id))


@bp.get("/<int:subscriber_id>/data.json")
@auth.login_required(*OPS)
def data(subscriber_id: int):
    """Everything held about the reader (what they get from 'download my data')."""
    sub = admin.get_subscriber(db.session, subscriber_id)
    resp = jsonify(subs.export_data(db.session, sub))
    resp.headers["Content-Disposition"] = f"attachment; filename=reader-{sub.id}.json"
    return resp


@bp.post("/<int:subscriber_id>/unsubscribe")
@auth.login_required(*OPS)
def unsubscribe(subscriber_id: int):
    sub = admin.get_subscriber(db.session, subscriber_id)
    if subs.unsubscribe_all(db.session, sub, f"console: {auth.current_user().email}"):
        db.session.commit()
        flash(f"{sub.email} is unsubscribed.")
    else:
        flash(f"{sub.email} was not subscribed.", "error")
    return redirect(url_for("admin_subscribers.show", subscriber_id=subscriber_id))


@bp.route("/<int:subscriber_id>/erase", methods=["GET", "POST"])
@auth.login_required(*OPS)
def erase(subscriber_id: int):
    """Delete a reader's data for good, after typing their address as confirmation."""
    sub = admin.get_subscriber(db.session, subscriber_id)
    error = None
    if request.method == "POST":
        typed = request.form.get("confirm", "").strip().lower()
        if typed != sub.email:
            error = "Type the reader's address exactly to confirm; nothing was erased."
        else:
            email = sub.email
            subs.erase(db.session, sub, runtime().email_hash)
            db.session.commit()
            flash(f"{email} is erased; only a keyed hash stays so an import cannot add them back.")
            return redirect(url_for("admin_subscribers.index"))
    return render_template("admin/subscriber_erase.html", sub=sub, error=error), (
        400 if error else 200)


# --- import -----------------------------------------------------------------------------------


@bp.route("/import", methods=["GET", "POST"])
@auth.login_required(*OPS)
def import_csv():
    from mailer.tasks.console import import_subscribers

    error, form = None, {}
    if request.method == "POST":
        form = request.form
        upload = request.files.get("file")
        try:
            if upload is None or not upload.filename:
                raise ValidationError("file", "Choose a CSV file to import.")
            imp = admin.create_import(db.session, filename=upload.filename, data=upload.read(),
                                      source=form.get("source", ""),
                                      user_id=auth.current_user().id)
            db.session.commit()
        except ValidationError as e:
            db.session.rollback()
            error = e.message
        else:
            if not enqueue(import_subscribers, imp.id):
                flash("The task queue cannot be reached right now; the import starts as soon as "
                      "it can.", "error")
            return redirect(url_for("admin_subscribers.import_status", import_id=imp.id))
    return render_template(
        "admin/import.html", error=error, form=form, imports=admin.list_imports(db.session),
        sections=runtime().settings.sections,
    ), 400 if error else 200


@bp.get("/imports/<int:import_id>")
@auth.login_required(*OPS)
def import_status(import_id: int):
    imp = admin.get_import(db.session, import_id)
    return render_template("admin/import_status.html", imp=imp,
                           progress=admin.import_progress(imp))


@bp.get("/imports/<int:import_id>/status")
@auth.login_required(*OPS)
def import_poll(import_id: int):
    data = admin.import_progress(admin.get_import(db.session, import_id))
    data["state"], data["final"] = data["status"], data["finished"]
    data["fields"] = {k: data[k] for k in ("done", "total", "percent", "added", "existing",
                                           "suppressed", "invalid")}
    data["fields"]["percent_text"] = f"{data['percent']}%"
    data["fields"]["status_text"] = data["status"]
    resp = jsonify(data)
    resp.headers["Cache-Control"] = "no-store"
    return resp


# --- suppression list -----------------------------------------------------------------------


@bp.route("/suppressions", methods=["GET", "POST"])
@auth.login_required(*OPS)
def suppressions():
    rt = runtime()
    error = checked = None
    email = request.values.get("email", "").strip()
    if request.method == "POST":
        try:
            address = subs.normalize_email(email)
            subs.suppress(db.session, rt.email_hash(address), "manual")
            existing = subs.by_email(db.session, address)
            db.session.commit()
        except ValidationError as e:
            db.session.rollback()
            error = e.message
        else:
            note = (" They are still on the list as a reader: unsubscribe or erase them too."
                    if existing is not None else "")
            flash(f"{address} is suppressed: imports will not add it.{note}")
            return redirect(url_for("admin_subscribers.suppressions"))
    elif email:
        try:
            address = subs.normalize_email(email)
            checked = (address, admin.suppression_for(db.session, address, rt.email_hash))
        except ValidationError as e:
            error = e.message
    page, offset = paging(PER_PAGE)
    rows, total = admin.suppressions(db.session, offset, PER_PAGE)
    return render_template(
        "admin/suppressions.html", rows=rows, total=total, page=page,
        pages=page_count(total, PER_PAGE), error=error, checked=checked, email=email,
    ), 400 if error else 200
