"""Readers put straight into the tables get their subscription as an upgraded database's do."""

from __future__ import annotations

from sqlalchemy import case, insert, literal, select
from sqlalchemy.orm import Session

from mailer.models import Subscriber, SubscriberStatus, Subscription, SubscriptionStatus
from mailer.services import newsletters


def subscribe_readers(session: Session, newsletter_id: int | None = None) -> None:
    """Every reader without a subscription to the newsletter (default: the first) gets one,
    with their own frequency and sections, by the rule of migration 0013: unsubscribed ->
    unsubscribed, pending -> pending, otherwise active (bounce and complaint states are the
    person's)."""
    newsletter_id = newsletter_id or newsletters.first(session).id
    status = case(
        (Subscriber.status == SubscriberStatus.UNSUBSCRIBED,
         literal(SubscriptionStatus.UNSUBSCRIBED.value)),
        (Subscriber.status == SubscriberStatus.PENDING, literal(SubscriptionStatus.PENDING.value)),
        else_=literal(SubscriptionStatus.ACTIVE.value),
    )
    missing = ~select(Subscription.id).where(
        Subscription.subscriber_id == Subscriber.id, Subscription.newsletter_id == newsletter_id
    ).exists()
    session.execute(insert(Subscription).from_select(
        ["subscriber_id", "newsletter_id", "status", "frequency", "sections", "created_at",
         "confirmed_at", "unsubscribed_at"],
        select(Subscriber.id, literal(newsletter_id), status, Subscriber.frequency,
               Subscriber.sections, Subscriber.created_at,
               Subscriber.confirmed_at, Subscriber.unsubscribed_at).where(missing),
    ))
    session.flush()
