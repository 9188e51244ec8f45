"""Bounces and complaints as received: one row per report, recorded once (its key)."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from mailer.clock import utcnow
from mailer.db import Base, BigId, UTCDateTime, enum_column


class BounceKind(enum.StrEnum):
    """What a stored report was (the same words as mailer.bounces.Kind, less `ignored`)."""

    HARD = "hard"
    SOFT = "soft"
    COMPLAINT = "complaint"


class BounceEvent(Base):
    """A bounce (hard or soft) or a complaint about one reader, kept for their history and
    the issue's counts. Ignored reports are logged, not stored."""

    __tablename__ = "bounce_events"
    __table_args__ = (
        Index("ix_bounce_events_subscriber_at", "subscriber_id", "at"),
        Index("ix_bounce_events_issue_kind", "issue_id", "kind"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # Report.key: the provider's event id or a digest of the message and the recipient's
    # place in it. UNIQUE, so the same report recorded by two processes at once counts once.
    key: Mapped[str] = mapped_column(String(200), unique=True)
    # NULL once the reader erased their data (the row stays for the issue's counts, without
    # the diagnostic, which may quote the address).
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscribers.id", ondelete="SET NULL")
    )
    delivery_id: Mapped[int | None] = mapped_column(
        ForeignKey("deliveries.id", ondelete="SET NULL")
    )
    issue_id: Mapped[int | None] = mapped_column(ForeignKey("issues.id", ondelete="SET NULL"))
    kind: Mapped[BounceKind] = mapped_column(enum_column(BounceKind))
    # mailer.bounces.Source's value: pipe, imap, smtp, or a provider's name.
    source: Mapped[str] = mapped_column(String(20))
    status: Mapped[str | None] = mapped_column(String(20))  # enhanced status code, e.g. 5.1.1
    diagnostic: Mapped[str | None] = mapped_column(String(1000))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)  # when it happened
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BounceReportCount(Base):
    """How many reports came in, per way in and what became of them (recorded, ignored,
    duplicate, refused): /metrics' mailer_bounce_reports_total, summed over every process
    that received one (workers, web, the MTA's pipe), Redis or not."""

    __tablename__ = "bounce_report_counts"

    source: Mapped[str] = mapped_column(String(20), primary_key=True)
    result: Mapped[str] = mapped_column(String(20), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0)
