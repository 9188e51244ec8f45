"""Readers: subscribers, their consent records, their history, and the suppression list."""

from __future__ import annotations

import enum
import secrets
from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from mailer.clock import utcnow
from mailer.db import Base, BigId, UTCDateTime, enum_column


class SubscriberStatus(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


class Frequency(enum.StrEnum):
    WEEKLY = "weekly"
    DAILY = "daily"


def new_uid() -> str:
    """The random public handle signed into a reader's links (never the row id)."""
    return secrets.token_urlsafe(16)


def sections_key(sections) -> str:
    """Canonical form of a set of section slugs: sorted, comma-joined; '' means all sections."""
    return ",".join(sorted({s.strip() for s in sections or () if s and s.strip()}))


def sections_list(key: str | None) -> list[str]:
    return [s for s in (key or "").split(",") if s]


# Percent of each page of `subscribers` that inserts fill (0016).
SUBSCRIBERS_FILLFACTOR = 90


class Subscriber(Base):
    __tablename__ = "subscribers"
    __table_args__ = (
        Index("ix_subscribers_audience", "status", "frequency", "id"),
        # Room on each page for the new version of a row the confirmation's claim updates
        # (its sent time, in no index): PostgreSQL then writes it on the same page without
        # an entry in any of the four indexes (a HOT update), as for most claims of a
        # signup moments old; without room, a third of them wrote all four.
        {"postgresql_with": {"fillfactor": SUBSCRIBERS_FILLFACTOR}},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    uid: Mapped[str] = mapped_column(String(32), unique=True, default=new_uid)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[SubscriberStatus] = mapped_column(
        enum_column(SubscriberStatus), default=SubscriberStatus.PENDING
    )
    # What a reader gets is each Subscription's frequency and sections (0013); these two keep
    # the person's last choice (a signup's, a preferences change's) for webhook payloads and
    # the older export columns, and are read by no audience.
    frequency: Mapped[Frequency] = mapped_column(enum_column(Frequency), default=Frequency.WEEKLY)
    # Canonical section key (see sections_key); '' = every section.
    sections: Mapped[str] = mapped_column(String(500), default="")
    source: Mapped[str] = mapped_column(String(200), default="form")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    unsubscribed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    bounced_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Temporary bounces scored at most once a day (services.bounces); at the soft limit the
    # reader is bounced. The server default fills rows inserted by statements that list
    # their columns (the PostgreSQL signup, bulk inserts).
    bounce_score: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_bounce_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the reader last reported our mail as spam: only a signup made after it, then
    # confirmed, makes them active again.
    complained_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A confirmation mail is owed while requested > sent (sent holds the request time it
    # served); the sweeper re-enqueues it if the broker was unreachable after the commit.
    confirm_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    confirm_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A new address waiting for its own confirmation before it replaces `email`.
    pending_email: Mapped[str | None] = mapped_column(String(320))

    consents: Mapped[list[ConsentRecord]] = relationship(
        back_populates="subscriber", cascade="all, delete-orphan", passive_deletes=True,
        order_by="ConsentRecord.id",
    )
    events: Mapped[list[SubscriberEvent]] = relationship(
        back_populates="subscriber", cascade="all, delete-orphan", passive_deletes=True,
        order_by="SubscriberEvent.id",
    )

    @property
    def section_list(self) -> list[str]:
        return sections_list(self.sections)


class ConsentRecord(Base):
    """Proof of consent: when, from where, through which form, and the words shown."""

    __tablename__ = "consents"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(20))  # signup | confirm | import
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ip: Mapped[str | None] = mapped_column(String(45))
    user_agent: Mapped[str | None] = mapped_column(String(500))
    source: Mapped[str] = mapped_column(String(200))
    wording: Mapped[str] = mapped_column(Text, default="")

    subscriber: Mapped[Subscriber] = relationship(back_populates="consents")


# The history lines that count readers who joined or left, by day (services.reports).
JOINED_KINDS = ("confirmed", "imported")
LEFT_KINDS = ("unsubscribed", "bounced", "complained")
_COUNTED = text("kind IN ({})".format(", ".join(f"'{k}'" for k in JOINED_KINDS + LEFT_KINDS)))


class SubscriberEvent(Base):
    """One line of a reader's history (signed up, confirmed, unsubscribed, bounced, ...)."""

    __tablename__ = "subscriber_events"
    # Only the kinds the report counts (0016): a signup's line, the most frequent kind,
    # writes no entry here.
    __table_args__ = (
        Index("ix_subscriber_events_kind_at", "kind", "at",
              postgresql_where=_COUNTED, sqlite_where=_COUNTED),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(40))
    detail: Mapped[str | None] = mapped_column(String(1000))

    subscriber: Mapped[Subscriber] = relationship(back_populates="events")


class Suppression(Base):
    """Addresses that imports must not re-add, kept only as a keyed hash."""

    __tablename__ = "suppressions"

    email_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
