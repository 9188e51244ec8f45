"""Clicks through a delivery's tracked links: where they may go and what they count for."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy import update
from sqlalchemy.orm import Session

from mailer import tokens as t
from mailer.errors import NotFound
from mailer.models import Click, Delivery, IssueItem
from mailer.services import popularity
from mailer.tokens import BadToken, Tokens

SAMPLE = "sample-"


@dataclass(frozen=True)
class Target:
    delivery: Delivery | None  # None: a test send's link, which counts for nobody
    item: IssueItem

    @property
    def url(self) -> str:
        return self.item.url


def resolve(session: Session, tokens: Tokens, token: str, item_id: int) -> Target:
    """The item a tracked link points at, only if it belongs to the delivery's issue.

    The redirect target is always the URL stored on the issue item, never anything taken
    from the request: a forged token, another issue's item or a non-web URL is a 404.
    """
    try:
        value = tokens.unsign(t.CLICK, token)
        sample = value.startswith(SAMPLE)
        number = int(value.removeprefix(SAMPLE))
    except (BadToken, ValueError):
        raise NotFound("This link is not valid.") from None
    # A test send's links (Links.sample_click_base) name the issue instead of a delivery.
    delivery = None if sample else session.get(Delivery, number)
    issue_id = number if sample else getattr(delivery, "issue_id", None)
    item = session.get(IssueItem, item_id)
    if item is None or issue_id is None or item.issue_id != issue_id:
        raise NotFound("This link is not valid.")
    if urlsplit(item.url).scheme not in ("http", "https"):
        raise NotFound("This link is not valid.")
    return Target(delivery, item)


def record(
    session: Session,
    tokens: Tokens,
    store: popularity.Popularity,
    target: Target,
    *,
    ip: str,
    user_agent: str,
    at: datetime,
) -> Click | None:
    """Store the click; it counts for popularity unless a bot or a mail scanner made it.
    A test send's click (no delivery) is not stored: it would count against nobody."""
    if target.delivery is None:
        return None
    counted = False
    if not popularity.is_bot(user_agent):
        visitor = popularity.visitor_id(tokens, ip, user_agent, at.date())
        # Scanners open every link within seconds of delivery: the delivery's sent_at lets
        # the popularity service tell them from readers. False too while Redis does not
        # answer: the click is stored all the same (the issue's report counts it), only not
        # known to count for popularity, and the reader is not kept waiting for it.
        counted = bool(
            store.record_click(
                session, target.item.article_id, visitor, at, target.delivery.sent_at
            )
        )
    click = Click(
        issue_id=target.item.issue_id,
        item_id=target.item.id,
        delivery_id=target.delivery.id,
        at=at,
        counted=counted,
    )
    session.add(click)
    session.flush()
    return click


def record_open(
    session: Session, tokens: Tokens, token: str, *, user_agent: str, at: datetime
) -> bool:
    """Note a delivery's first open (the pixel, only when enabled); bots are ignored."""
    try:
        delivery_id = int(tokens.unsign(t.CLICK, token))
    except (BadToken, ValueError):
        return False
    if popularity.is_bot(user_agent):
        return False
    done = session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.opened_at.is_(None))
        .values(opened_at=at)
        .execution_options(synchronize_session=False)
    ).rowcount
    return bool(done)
