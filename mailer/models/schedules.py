"""Recurring digests and the record of each period they fired (or skipped) for."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from mailer.clock import utcnow
from mailer.db import Base, BigId, UTCDateTime, enum_column
from mailer.models.newsletters import FIRST_NEWSLETTER
from mailer.models.subscribers import Frequency

if TYPE_CHECKING:
    from mailer.models.newsletters import Newsletter


class Schedule(Base):
    __tablename__ = "schedules"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # Always set by the services (nullable in SQL only for SQLite's in-place ADD COLUMN).
    newsletter_id: Mapped[int | None] = mapped_column(
        ForeignKey("newsletters.id", ondelete="RESTRICT"), index=True,
        default=FIRST_NEWSLETTER,
    )
    newsletter: Mapped[Newsletter | None] = relationship()
    cron: Mapped[str] = mapped_column(String(100))  # five fields, in `timezone`
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    audience_frequency: Mapped[Frequency] = mapped_column(
        enum_column(Frequency), default=Frequency.WEEKLY
    )
    audience_sections: Mapped[str] = mapped_column(String(500), default="")
    subject: Mapped[str] = mapped_column(String(300), default="")
    latest_n: Mapped[int] = mapped_column(Integer, default=10)
    popular_m: Mapped[int] = mapped_column(Integer, default=5)
    min_items: Mapped[int] = mapped_column(Integer, default=1)
    grace_hours: Mapped[float | None] = mapped_column(Float)  # None = the global default
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class ScheduleRun(Base):
    """What happened for one (schedule, period): issued, skipped or missed. Unique per period."""

    __tablename__ = "schedule_runs"
    __table_args__ = (UniqueConstraint("schedule_id", "period_start"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    schedule_id: Mapped[int] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"))
    period_start: Mapped[datetime] = mapped_column(UTCDateTime)  # the firing time, in UTC
    status: Mapped[str] = mapped_column(String(20))  # issued | skipped | missed
    issue_id: Mapped[int | None] = mapped_column(ForeignKey("issues.id", ondelete="SET NULL"))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    reported_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
