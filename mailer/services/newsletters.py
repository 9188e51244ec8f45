"""Finding newsletters: by slug, the ones a public form offers, the ones a plain signup gets.

Every database has at least one newsletter (0013 makes the first: an older database's readers,
issues and schedules all belong to it).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer.errors import NotFound
from mailer.models import Newsletter


def first(session: Session) -> Newsletter:
    """The newsletter that existed before there were several: the one links signed before
    newsletters existed (unsubscribe, preferences, confirmations) are about."""
    found = session.scalar(select(Newsletter).order_by(Newsletter.id).limit(1))
    if found is None:  # only a database emptied by hand; 0013 always makes one
        raise NotFound("No newsletter is set up.")
    return found


def get(session: Session, newsletter_id: int) -> Newsletter:
    found = session.get(Newsletter, newsletter_id)
    if found is None:
        raise NotFound(f"No newsletter {newsletter_id}.")
    return found


def by_slug(session: Session, slug: str) -> Newsletter:
    found = session.scalar(select(Newsletter).where(Newsletter.slug == slug))
    if found is None:
        raise NotFound(f"No newsletter {slug[:60]!r}.")
    return found


def offered(session: Session) -> list[Newsletter]:
    """What public forms list: public and not archived, oldest first."""
    return list(session.scalars(
        select(Newsletter)
        .where(Newsletter.public.is_(True), Newsletter.archived_at.is_(None))
        .order_by(Newsletter.id)
    ))


def signup_defaults(session: Session) -> list[Newsletter]:
    """What a signup that names no newsletter subscribes to (an older form or snippet)."""
    found = list(session.scalars(
        select(Newsletter)
        .where(Newsletter.signup_default.is_(True), Newsletter.archived_at.is_(None))
        .order_by(Newsletter.id)
    ))
    return found or [first(session)]
