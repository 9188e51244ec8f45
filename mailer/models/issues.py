"""Digest issues, their items, their rendered variants, deliveries and clicks."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from mailer.clock import utcnow
from mailer.db import Base, BigId, UTCDateTime, enum_column
from mailer.models.newsletters import FIRST_NEWSLETTER
from mailer.models.subscribers import Frequency

if TYPE_CHECKING:
    from mailer.models.newsletters import Newsletter


class IssueStatus(enum.StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    PAUSED = "paused"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


class ItemSection(enum.StrEnum):
    LATEST = "latest"
    POPULAR = "popular"


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED_TEMPORARY = "failed_temporary"
    FAILED_PERMANENT = "failed_permanent"
    UNCERTAIN = "uncertain"


class Issue(Base):
    __tablename__ = "issues"
    __table_args__ = (
        # One issue per schedule and period: the idempotency key of scheduled firings.
        UniqueConstraint("schedule_id", "period_start"),
        Index("ix_issues_status", "status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    subject: Mapped[str] = mapped_column(String(300), default="")
    preheader: Mapped[str] = mapped_column(String(300), default="")
    intro: Mapped[str] = mapped_column(Text, default="")  # Markdown typed by an editor
    # The automatic "Hello NAME," before the intro; off when the intro greets by itself.
    greeting: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    status: Mapped[IssueStatus] = mapped_column(enum_column(IssueStatus), default=IssueStatus.DRAFT)
    status_reason: Mapped[str | None] = mapped_column(String(1000))  # why skipped/paused/...
    audience_frequency: Mapped[Frequency] = mapped_column(
        enum_column(Frequency), default=Frequency.WEEKLY
    )
    # Sections key (see models.subscribers.sections_key); '' = readers of every section.
    audience_sections: Mapped[str] = mapped_column(String(500), default="")
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    schedule_id: Mapped[int | None] = mapped_column(
        ForeignKey("schedules.id", ondelete="SET NULL")
    )
    # Always set by the services. NULL is allowed by the column only because SQLite cannot add
    # a NOT NULL foreign key to an existing table in place (0013 fills every old issue).
    newsletter_id: Mapped[int | None] = mapped_column(
        ForeignKey("newsletters.id", ondelete="RESTRICT"), index=True,
        default=FIRST_NEWSLETTER,
    )
    newsletter: Mapped[Newsletter | None] = relationship()
    # The newsletter's look (JSON) frozen when the send started: the archive keeps showing
    # what readers got whatever the look becomes later. NULL until then.
    look: Mapped[str | None] = mapped_column(Text)
    period_start: Mapped[datetime | None] = mapped_column(UTCDateTime)
    latest_n: Mapped[int] = mapped_column(Integer, default=10)
    popular_m: Mapped[int] = mapped_column(Integer, default=5)
    min_items: Mapped[int] = mapped_column(Integer, default=1)
    # The publication window the Latest section was chosen from.
    window_start: Mapped[datetime | None] = mapped_column(UTCDateTime)
    window_end: Mapped[datetime | None] = mapped_column(UTCDateTime)
    send_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    items: Mapped[list[IssueItem]] = relationship(
        back_populates="issue", cascade="all, delete-orphan", passive_deletes=True,
        order_by="(IssueItem.section, IssueItem.position)",
    )


class IssueItem(Base):
    __tablename__ = "issue_items"
    __table_args__ = (UniqueConstraint("issue_id", "article_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # (Looked up through the unique constraint's index, which it leads.)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"))
    article_id: Mapped[int] = mapped_column(ForeignKey("articles.id", ondelete="CASCADE"))
    section: Mapped[ItemSection] = mapped_column(enum_column(ItemSection))
    position: Mapped[int] = mapped_column(Integer, default=0)
    pinned: Mapped[bool] = mapped_column(Boolean, default=False)
    excluded: Mapped[bool] = mapped_column(Boolean, default=False)
    # The one target the click redirect may send a reader to for this item.
    url: Mapped[str] = mapped_column(String(2000))

    issue: Mapped[Issue] = relationship(back_populates="items")
    article = relationship("Article", lazy="joined")


class IssueVariant(Base):
    """An issue rendered once for one section set, with per-reader placeholders left in."""

    __tablename__ = "issue_variants"
    __table_args__ = (UniqueConstraint("issue_id", "sections"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"))
    sections: Mapped[str] = mapped_column(String(500), default="")
    subject: Mapped[str] = mapped_column(String(300))
    html: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    # Readers frozen into this variant when the send started. An `empty` variant had no
    # items for its section set: its readers got no delivery row (skipped-no-items).
    readers: Mapped[int] = mapped_column(Integer, default=0)
    empty: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Delivery(Base):
    """One reader's copy of one issue; unique per (issue, subscriber): the exactly-once key."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("issue_id", "subscriber_id"),
        Index("ix_deliveries_issue_status", "issue_id", "status"),
        Index("ix_deliveries_status_next", "status", "next_attempt_at"),
        # The current sending rate (status, the console's progress) counts an issue's recent
        # messages: without this, every progress poll would read every sent row.
        Index(
            "ix_deliveries_sent_at", "issue_id", "sent_at",
            postgresql_where=text("status = 'sent'"), sqlite_where=text("status = 'sent'"),
        ),
        # The delivery engine hands out an issue's pending rows in id order; a partial index
        # keeps that lookup small however many rows are already sent.
        Index(
            "ix_deliveries_dispatch", "issue_id", "id",
            postgresql_where=text("status = 'pending'"), sqlite_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"))
    # NULL once the reader erased their data; the row stays for the issue's counts.
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscribers.id", ondelete="SET NULL"), index=True
    )
    variant_id: Mapped[int | None] = mapped_column(
        ForeignKey("issue_variants.id", ondelete="SET NULL")
    )
    status: Mapped[DeliveryStatus] = mapped_column(
        enum_column(DeliveryStatus), default=DeliveryStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # First load of the open pixel; only ever set when MAILER_OPEN_PIXEL=on (off by default).
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Click(Base):
    """A click through the redirect; `counted` is false for bots and mail scanners."""

    __tablename__ = "clicks"
    __table_args__ = (Index("ix_clicks_issue_item", "issue_id", "item_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("issue_items.id", ondelete="CASCADE"))
    delivery_id: Mapped[int | None] = mapped_column(
        ForeignKey("deliveries.id", ondelete="SET NULL")
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    counted: Mapped[bool] = mapped_column(Boolean, default=True)
