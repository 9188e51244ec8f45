"""Tracked links in digests: `/t/<token>/<item>` redirects to that issue item's own URL.

The open pixel (`/t/<token>/open.gif`) exists but is off by default (MAILER_OPEN_PIXEL=off):
opens are unreliable (image proxies, privacy protection) and readers did not ask to be
watched. With it off, the route answers 404 and digests carry no pixel.
"""

from __future__ import annotations

import base64
import logging

from flask import Blueprint, Response, abort, redirect, request
from sqlalchemy.exc import SQLAlchemyError

from mailer.clock import utcnow
from mailer.db import db
from mailer.runtime import runtime
from mailer.services import clicks
from mailer.web.extensions import client_ip

log = logging.getLogger(__name__)

bp = Blueprint("tracking", __name__)

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


@bp.route("/t/<token>/<int:item_id>", methods=["GET", "HEAD"])
def click(token: str, item_id: int):
    rt = runtime()
    target = clicks.resolve(db.session, rt, token, item_id)
    url = target.url
    # HEAD is a link checker asking whether the link works, not a reader: never counted.
    if request.method == "GET":
        try:
            clicks.record(
                db.session,
                rt,
                target,
                ip=client_ip(),
                user_agent=request.headers.get("User-Agent", ""),
                at=utcnow(),
            )
            db.session.commit()
        except SQLAlchemyError:
            # The reader still gets the article; a lost click only costs a count.
            db.session.rollback()
            log.exception("could not record a click on item %s", item_id)
    resp = redirect(url, code=302)
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.route("/t/<token>/open.gif", methods=["GET", "HEAD"])
def open_pixel(token: str):
    rt = runtime()
    if not rt.settings.open_pixel:
        abort(404)
    if request.method == "GET":
        try:
            ua = request.headers.get("User-Agent", "")
            clicks.record_open(db.session, rt, token, user_agent=ua, at=utcnow())
            db.session.commit()
        except SQLAlchemyError:
            db.session.rollback()
            log.exception("could not record an open")
    resp = Response(PIXEL, mimetype="image/gif")
    resp.headers["Cache-Control"] = "no-store, private"
    return resp
