"""Provider webhooks: a signed request's token accepted once, and its reports recorded.

The web layer verifies a request (bounces.providers, bounces.sns) and owns the transaction;
this records what it carried. A request's token and its reports are written in the same
transaction, so a request that fails half-way leaves no token behind and the provider's
retry is accepted; a replay of a request that was committed is refused.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from mailer.bounces import Report, Source
from mailer.config import Settings
from mailer.models import WebhookToken
from mailer.services import bounces

# A token is remembered while its request's timestamp could still pass the freshness check
# (5 minutes either way), with a margin.
TOKEN_KEEP = timedelta(minutes=15)


def remember_token(session: Session, provider: str, token: str, now: datetime) -> bool:
    """Note a request token; False when it was seen before (a replay)."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    inserted = session.execute(
        dialect.insert(WebhookToken)
        .values(provider=provider, token=token, seen_at=now)
        .on_conflict_do_nothing(index_elements=["provider", "token"])
        .returning(WebhookToken.token)
    ).scalar()
    return inserted is not None


def forget_old_tokens(session: Session, now: datetime) -> int:
    """Drop tokens whose requests would be refused as stale anyway (the tick's step)."""
    return session.execute(
        delete(WebhookToken).where(WebhookToken.seen_at < now - TOKEN_KEEP)
    ).rowcount


def count_refused(session: Session, provider: str) -> None:
    """A request turned away (bad signature or credentials, stale, replayed): the
    `refused` result of mailer_bounce_reports_total."""
    bounces.count(session, Source(provider), "refused")


def record_reports(
    session: Session, settings: Settings, source: Source, reports: list[Report], now: datetime
) -> dict[str, int]:
    """Record each report once (services.bounces): counts per outcome.

    In the order of the addresses, so that two requests about the same readers lock their
    rows in the same order, and counted at the end (bounces.count_tally): a provider posting
    batches in parallel cannot make two requests wait on each other.
    """
    ordered = sorted(reports, key=lambda r: (r.addresses, r.key))
    outcomes = bounces.record_many(session, settings, source, ordered, now=now)
    return dict(Counter(o.result for o in outcomes))
