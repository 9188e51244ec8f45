"""What the newsletters' looks need on the public side: their logos, served under names that
change with their content, and a small stylesheet per accent colour and font (the site's CSP
allows no inline styles, so a page takes its look from /look/<accent>/<font>.css)."""

from __future__ import annotations

import re

from flask import Blueprint, Response, abort, request

from mailer.mail.look import FONTS
from mailer.runtime import runtime
from mailer.services import looks

bp = Blueprint("logos", __name__)

# Both are named by what they contain: cached for a year, never stale.
FOREVER = "public, max-age=31536000, immutable"


@bp.get("/logos/<name>")
def logo(name: str):
    found = looks.logo_file(runtime().settings, name)
    if found is None:
        abort(404)
    path, content_type = found
    # A logo is small (MAILER_LOGO_MAX_BYTES) and never changes under its name.
    resp = Response(path.read_bytes(), mimetype=content_type)
    resp.set_etag(name)
    if request.if_none_match.contains(name):
        return Response(status=304, headers={"ETag": f'"{name}"', "Cache-Control": FOREVER})
    resp.headers["Cache-Control"] = FOREVER
    resp.headers["X-Content-Type-Options"] = "nosniff"
    # Opened on its own, an image still runs nothing and embeds nothing.
    resp.headers["Content-Security-Policy"] = "default-src 'none'; img-src 'self'; sandbox"
    return resp


@bp.get("/look/<accent>/<font>.css")
def stylesheet(accent: str, font: str):
    if not re.fullmatch(r"[0-9a-f]{6}", accent) or font not in FONTS:
        abort(404)
    css = (
        f":root {{ --accent: #{accent}; --header-font: {FONTS[font][1]}; }}\n"
    )
    resp = Response(css, mimetype="text/css")
    resp.headers["Cache-Control"] = FOREVER
    return resp
