"""The console's newsletters: the list with their readers, adding one, and each one's page
(name, sender, List-Id, visibility, digest defaults, sections; archive, unarchive, remove).

Editors and ops see them (editors compose for them and change their look); ops change the
settings on these pages."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for

from mailer.db import db
from mailer.errors import MailerError
from mailer.models import Role
from mailer.services import newsletters
from mailer.web import auth
from mailer.web.extensions import settings

bp = Blueprint("admin_newsletters", __name__, url_prefix="/admin/newsletters")

TEXT_FIELDS = ("name", "description", "from", "reply_to", "list_id", "latest_n", "popular_m",
               "min_items")


def _form_data(form, *, with_slug: bool) -> dict:
    """The service's fields from the form; unticked boxes are false, no sections = all."""
    data = {k: form.get(k, "") for k in TEXT_FIELDS}
    data["public"] = form.get("public") == "on"
    data["signup_default"] = form.get("signup_default") == "on"
    data["sections"] = form.getlist("sections")
    if with_slug:
        data["slug"] = form.get("slug", "")
    return data


def _index(form=None, error: str | None = None, status: int = 200):
    cfg = settings()
    return render_template(
        "admin/newsletters.html", listed=newsletters.with_counts(db.session),
        sections=cfg.sections, defaults=(cfg.digest_latest, cfg.digest_popular,
                                         cfg.digest_min_items),
        site_from=str(cfg.from_address), domain=cfg.sender_domain, form=form, error=error,
    ), status


@bp.get("")
@auth.login_required(Role.EDITOR, Role.OPS)
def index():
    return _index()


@bp.post("")
@auth.login_required(Role.OPS)
def create():
    cfg = settings()
    try:
        created = newsletters.create(
            db.session, _form_data(request.form, with_slug=True),
            known_sections=cfg.section_labels, sender_domain=cfg.sender_domain,
            defaults=(cfg.digest_latest, cfg.digest_popular, cfg.digest_min_items))
    except MailerError as e:
        db.session.rollback()
        return _index(request.form, getattr(e, "message", str(e)), e.status)
    db.session.commit()
    flash(f"Newsletter {created.name!r} added.")
    return redirect(url_for("admin_newsletters.show", slug=created.slug))


def _show(newsletter, form=None, error: str | None = None, status: int = 200):
    cfg = settings()
    refused = newsletters.removal_refused(db.session, newsletter)
    return render_template(
        "admin/newsletter.html", newsletter=newsletter,
        item=newsletters.as_dict(newsletter),
        counts=newsletters.counts_for(db.session, newsletter),
        sender=str(newsletters.sender(newsletter, cfg)),
        list_id=newsletters.list_id(newsletter, cfg),
        sent=newsletters.sent_issues(db.session, newsletter),
        removal_refused=str(refused) if refused else None,
        derived_list_id=f"{newsletter.slug}.{cfg.sender_domain}",
        sections=cfg.sections, site_from=str(cfg.from_address), form=form, error=error,
    ), status


@bp.get("/<slug>")
@auth.login_required(Role.EDITOR, Role.OPS)
def show(slug: str):
    return _show(newsletters.by_slug(db.session, slug))


@bp.post("/<slug>")
@auth.login_required(Role.OPS)
def update(slug: str):
    found = newsletters.by_slug(db.session, slug)
    try:
        newsletters.update(db.session, found, _form_data(request.form, with_slug=False),
                           known_sections=settings().section_labels,
                           sender_domain=settings().sender_domain)
    except MailerError as e:
        db.session.rollback()
        return _show(newsletters.by_slug(db.session, slug), request.form,
                     getattr(e, "message", str(e)), e.status)
    db.session.commit()
    flash("Saved.")
    return redirect(url_for("admin_newsletters.show", slug=slug))


@bp.post("/<slug>/<any(archive, unarchive):action>")
@auth.login_required(Role.OPS)
def set_archived(slug: str, action: str):
    found = newsletters.by_slug(db.session, slug)
    newsletters.update(db.session, found, {"archived": action == "archive"})
    db.session.commit()
    flash("Archived: it takes no new issues; its archive stays online."
          if action == "archive" else "Back from the archive: it takes new issues again.")
    return redirect(url_for("admin_newsletters.show", slug=slug))


@bp.post("/<slug>/remove")
@auth.login_required(Role.OPS)
def remove(slug: str):
    found = newsletters.by_slug(db.session, slug)
    name = found.name
    try:
        newsletters.remove(db.session, found, settings=settings())
    except MailerError as e:
        db.session.rollback()
        flash(str(e), "error")
        return redirect(url_for("admin_newsletters.show", slug=slug))
    db.session.commit()  # its logo's file goes with it, unless another look shows it
    flash(f"Newsletter {name!r} removed.")
    return redirect(url_for("admin_newsletters.index"))
