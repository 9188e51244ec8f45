"""The delivery API (bearer tokens): send, pause, resume and cancel an issue; follow it.

POST /api/v1/issues/<id>/send     202, the status (409 if it is already sending or sent)
POST /api/v1/issues/<id>/pause    200, the status
POST /api/v1/issues/<id>/resume   202, the status
POST /api/v1/issues/<id>/cancel   200, the status
GET  /api/v1/issues/<id>/status   200, counts per delivery state, rate, ETA
"""

from __future__ import annotations

from flask import Blueprint, jsonify

from mailer.db import db
from mailer.models import Role
from mailer.runtime import runtime
from mailer.services import deliveries, progress
from mailer.web.auth import bearer_user

bp = Blueprint("delivery", __name__, url_prefix="/issues")


def _status(issue_id: int, code: int = 200, **extra):
    body = deliveries.status(db.session, issue_id)
    body.update(extra)
    return jsonify(body), code


@bp.post("/<int:issue_id>/send")
def send(issue_id: int):
    bearer_user(Role.EDITOR)

    # The commit hands the first batches to the workers; a broker outage is left to the
    # sweeper.
    result = deliveries.start_send(db.session, issue_id, settings=runtime().settings)
    db.session.commit()
    return _status(issue_id, 202, variants=result.variants)


@bp.post("/<int:issue_id>/pause")
def pause(issue_id: int):
    bearer_user(Role.EDITOR, Role.OPS)
    deliveries.pause(db.session, issue_id)
    db.session.commit()
    return _status(issue_id)


@bp.post("/<int:issue_id>/resume")
def resume(issue_id: int):
    bearer_user(Role.EDITOR, Role.OPS)
    deliveries.resume(db.session, issue_id, runtime().settings)
    db.session.commit()
    return _status(issue_id, 202)


@bp.post("/<int:issue_id>/cancel")
def cancel(issue_id: int):
    bearer_user(Role.EDITOR, Role.OPS)
    deliveries.cancel(db.session, issue_id)
    db.session.commit()
    return _status(issue_id)


@bp.get("/<int:issue_id>/status")
def status(issue_id: int):
    bearer_user(Role.EDITOR, Role.OPS)
    # Polled while the issue is sent: a recent count (services.progress), not one per call.
    return jsonify(progress.watched_status(db.session, issue_id, runtime().settings.redis_url))
