"""The settings page (ops): the configuration in effect, secrets hidden, and what is missing."""

from __future__ import annotations

import re

from flask import Blueprint, render_template
from markupsafe import Markup, escape

from mailer.config import GROUPS, VARIABLES, Settings
from mailer.db import db
from mailer.models import Role
from mailer.runtime import runtime
from mailer.services import reports
from mailer.web import auth

bp = Blueprint("admin_settings", __name__, url_prefix="/admin/settings")


def _help_html(text: str) -> Markup:
    """A variable's help text with its `code` in <code>."""
    parts = re.split(r"`([^`]*)`", text)
    return Markup("").join(
        Markup("<code>{}</code>").format(part) if odd else escape(part)
        for odd, part in ((i % 2 == 1, p) for i, p in enumerate(parts))
    )


def _groups(settings: Settings) -> list[tuple[str, list[tuple[str, str, Markup]]]]:
    """(title, [(variable, value shown, what it does)]) per group, as config.VARIABLES has them."""
    return [
        (title, [(v.name, v.shown(settings), _help_html(v.help))
                 for v in VARIABLES if v.group == group])
        for group, title in GROUPS.items()
    ]


@bp.get("")
@auth.login_required(Role.OPS)
def index():
    rt = runtime()
    return render_template(
        "admin/settings.html", groups=_groups(rt.settings), embedded=rt.settings.embedded,
        warnings=[w for w in reports.warnings(db.session, rt.settings, by_newsletter=[])
                  if w.kind in ("postal_address", "dkim", "feed")],
        instance=rt.settings.instance_path,
    )
