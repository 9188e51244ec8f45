"""The look editor: each newsletter's logo, masthead title, accent colour, header font and
footer, with a live preview of a digest at desktop and phone widths."""

from __future__ import annotations

import re

from flask import Blueprint, flash, redirect, render_template, request, url_for
from werkzeug.exceptions import RequestEntityTooLarge

from mailer.db import db
from mailer.errors import ValidationError
from mailer.mail.look import FONTS, contrast_with_white
from mailer.models import Newsletter, Role
from mailer.runtime import runtime
from mailer.services import looks, newsletters
from mailer.services.render import render_look_sample
from mailer.web import auth
from mailer.web.admin.console import sandboxed_preview

bp = Blueprint("admin_looks", __name__, url_prefix="/admin/newsletters")

EDITORS = (Role.EDITOR,)
FIELDS = ("masthead_title", "accent_color", "header_font", "footer_md", "logo_url")
# What a preview URL may carry (the footer travels in the query string).
MAX_PREVIEW_FIELD = 6000


def _form_of(newsletter: Newsletter) -> dict:
    return {
        "masthead_title": newsletter.masthead_title or "",
        "accent_color": newsletter.accent_color,
        "header_font": newsletter.header_font,
        "footer_md": newsletter.footer_md or "",
        "logo_url": newsletter.logo_url or "",
    }


def _page(newsletter: Newsletter, form: dict, error: ValidationError | None = None,
          status: int = 200):
    rt = runtime()
    accent = form.get("accent_color", "")
    ratio = None
    if re.fullmatch(r"#[0-9a-fA-F]{6}", accent or ""):
        ratio = contrast_with_white(accent.lower())
    # By path: the console may be reached under another host name than MAILER_BASE_URL's.
    logo = f"/{looks.LOGO_DIR}/{newsletter.logo_file}" if newsletter.logo_file else None
    return render_template(
        "admin/look.html", newsletter=newsletter, form=form, error=error, fonts=FONTS,
        ratio=ratio, stored_logo=logo, max_logo=rt.settings.logo_max_bytes,
        preview_query={k: form.get(k, "") for k in FIELDS},
    ), status


@bp.get("/<slug>/look")
@auth.login_required(*EDITORS)
def edit(slug: str):
    newsletter = newsletters.by_slug(db.session, slug)
    return _page(newsletter, _form_of(newsletter))


@bp.post("/<slug>/look")
@auth.login_required(*EDITORS)
def save(slug: str):
    rt = runtime()
    newsletter = newsletters.by_slug(db.session, slug)
    try:
        form = {k: request.form.get(k, "") for k in FIELDS}
        upload = request.files.get("logo")
    except RequestEntityTooLarge:
        error = ValidationError("logo", "The upload is far too large: a logo may be at most "
                                        f"{rt.settings.logo_max_bytes // 1024} KB.")
        return _page(newsletter, _form_of(newsletter), error, 413)
    logo = None
    if upload is not None and upload.filename:
        try:
            upload.stream.seek(0, 2)
            refused = looks.too_large(rt.settings, upload.stream.tell())
            if refused is not None:
                return _page(newsletter, form, refused, 413)
            upload.stream.seek(0)
            logo = (upload.stream.read(), upload.filename)
        finally:
            upload.close()
    try:
        looks.update(db.session, rt.settings, newsletter, form, logo=logo,
                     remove_logo=bool(request.form.get("remove_logo")))
    except ValidationError as e:
        db.session.rollback()
        return _page(newsletter, form, e, 400)
    db.session.commit()  # a replaced logo's file goes with it, unless another look shows it
    flash(f"The look of {newsletter.name} is saved. Issues already sent keep the look "
          "their readers got.")
    return redirect(url_for("admin_looks.edit", slug=slug))


@bp.get("/<slug>/look/preview.html")
@auth.login_required(*EDITORS)
def preview(slug: str):
    """A made-up digest in the look typed so far (the editor's fields in the query)."""
    rt = runtime()
    newsletter = newsletters.by_slug(db.session, slug)
    fields = {k: request.args.get(k, "")[:MAX_PREVIEW_FIELD] for k in FIELDS}
    if "accent_color" not in request.args:
        fields = _form_of(newsletter)
    fields["remove_logo"] = request.args.get("remove_logo", "")
    try:
        look = looks.preview_look(rt.settings, newsletter, fields)
    except ValidationError as e:
        # A 200 all the same: the frame shows the reason where the preview would be.
        html = render_template("admin/look_refused.html", error=e)
    else:
        html = render_look_sample(rt.settings, look, newsletter.name)
    return sandboxed_preview(html)
