"""Newsletters under /api/v1/newsletters (bearer tokens): editors and ops read them, ops
(and admins) create and change them. The look has its own operations."""

from __future__ import annotations

from flask import Blueprint, jsonify

from mailer.db import db
from mailer.errors import MailerError
from mailer.models import Role
from mailer.services import newsletters
from mailer.web.api.requests import request_data
from mailer.web.auth import bearer_user
from mailer.web.extensions import settings

bp = Blueprint("newsletters_api", __name__, url_prefix="/newsletters")


def _item(newsletter) -> dict:
    return newsletters.as_dict(newsletter, newsletters.counts_for(db.session, newsletter))


@bp.get("")
def index():
    bearer_user(Role.EDITOR, Role.OPS)
    return jsonify({"newsletters": [newsletters.as_dict(n, counts)
                                    for n, counts in newsletters.with_counts(db.session)]})


@bp.post("")
def create():
    bearer_user(Role.OPS)
    data = dict(request_data())
    cfg = settings()
    try:
        created = newsletters.create(
            db.session, data, known_sections=cfg.section_labels, sender_domain=cfg.sender_domain,
            defaults=(cfg.digest_latest, cfg.digest_popular, cfg.digest_min_items))
    except MailerError:
        db.session.rollback()
        raise
    db.session.commit()
    return jsonify(_item(created)), 201


@bp.get("/<slug>")
def show(slug: str):
    bearer_user(Role.EDITOR, Role.OPS)
    return jsonify(_item(newsletters.by_slug(db.session, slug)))


@bp.patch("/<slug>")
def update(slug: str):
    bearer_user(Role.OPS)
    found = newsletters.by_slug(db.session, slug)
    data = dict(request_data())
    try:
        cfg = settings()
        newsletters.update(db.session, found, data, known_sections=cfg.section_labels,
                           sender_domain=cfg.sender_domain)
    except MailerError:
        db.session.rollback()
        raise
    db.session.commit()
    return jsonify(_item(found))
