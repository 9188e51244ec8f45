"""Outgoing webhooks: the endpoints the site's other systems gave us, the events outbox, and
one delivery row per (event, endpoint) with its attempts.

The event row is written in the transaction of the change it tells about (services.hooks);
a delivery row is inserted beside it for every enabled endpoint that wants its type, so a
crash after the COMMIT leaves rows that the sweeper finds and hands out again.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from mailer.clock import utcnow
from mailer.db import Base, BigId, UTCDateTime, enum_column


class HookStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for its attempt (next_attempt_at = not before)
    SENDING = "sending"  # an attempt runs (claimed_until = its lease)
    DELIVERED = "delivered"  # the endpoint answered 2xx
    FAILED = "failed"  # every attempt failed, or the endpoint was removed or disabled


class HookEndpoint(Base):
    """A URL that gets the events it subscribed to, signed with its own secret."""

    __tablename__ = "hook_endpoints"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    # The event types, comma-joined with a comma on each side (",a,b,") so that one LIKE
    # finds the endpoints of a type, also inside the signup's single statement.
    events: Mapped[str] = mapped_column(String(1000))
    secret: Mapped[str] = mapped_column(String(100))  # whsec_<base64 of 24 random bytes>
    personal_data: Mapped[bool] = mapped_column(Boolean, default=False)  # address, name
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    description: Mapped[str] = mapped_column(String(200), default="")
    # When the failures without a success in between began; 3 days of it disable it.
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    disabled_reason: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    @property
    def event_types(self) -> list[str]:
        return [e for e in self.events.split(",") if e]


class HookEvent(Base):
    """One thing that happened, as it will be told: type, time, data (the outbox)."""

    __tablename__ = "hook_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    uid: Mapped[str] = mapped_column(String(40), unique=True)  # the webhook-id, msg_...
    type: Mapped[str] = mapped_column(String(40))
    # The reader it is about (no foreign key: the erasure event outlives the reader), so
    # an erasure can strip the address from events not yet delivered.
    subscriber_id: Mapped[int | None] = mapped_column(BigId, index=True)
    payload: Mapped[str] = mapped_column(Text)  # JSON: the `data` object, all of it
    # Indexed for the retention's prune (services.hooks.prune), which looks up old events.
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class HookDelivery(Base):
    """The delivery of one event to one endpoint, retried until 2xx or given up."""

    __tablename__ = "hook_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "endpoint_id"),
        Index("ix_hook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_hook_deliveries_endpoint", "endpoint_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("hook_events.id", ondelete="CASCADE"))
    endpoint_id: Mapped[int] = mapped_column(
        ForeignKey("hook_endpoints.id", ondelete="CASCADE")
    )
    status: Mapped[HookStatus] = mapped_column(enum_column(HookStatus), default=HookStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Handed to the broker at (or: due at, for a short countdown); the sweeper hands a
    # pending row out again once this is a lease old (the broker lost the task).
    handed_out_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    response_status: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    response_excerpt: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(String(300))
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class HookCount(Base):
    """Attempts by result since the start, for the mailer_webhook_deliveries_total counter
    (rows may be pruned, the count may not go down)."""

    __tablename__ = "hook_counts"

    result: Mapped[str] = mapped_column(String(20), primary_key=True)
    n: Mapped[int] = mapped_column(BigId, default=0)
