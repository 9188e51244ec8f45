"""Newsletters (separate products of one site) and each reader's subscription to them.

A reader (`Subscriber`) is one person: one address, one consent history, one suppression and
bounce state. What they read is a `Subscription` per newsletter, with its own status,
frequency and sections. A reader gets an issue of newsletter N when the person is `active`
and their subscription to N is `active`.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    column,
    func,
    select,
    table,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from mailer.clock import utcnow
from mailer.db import Base, BigId, UTCDateTime, enum_column
from mailer.models.subscribers import Frequency, Subscriber, sections_list

# The look a newsletter has until an editor changes it (the colours of the templates before
# newsletters had a look of their own).
DEFAULT_ACCENT = "#1d4ed8"
DEFAULT_FONT = "georgia"


# An issue or schedule inserted without a newsletter (a row made by hand, an older script)
# belongs to the first newsletter, as everything did before there were several.
FIRST_NEWSLETTER = (
    select(func.min(column("id"))).select_from(table("newsletters")).scalar_subquery()
)


class SubscriptionStatus(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"


class Newsletter(Base):
    __tablename__ = "newsletters"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    slug: Mapped[str] = mapped_column(String(60), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    # None = the address and name of MAILER_FROM.
    from_name: Mapped[str | None] = mapped_column(String(200))
    from_address: Mapped[str | None] = mapped_column(String(320))
    reply_to: Mapped[str | None] = mapped_column(String(320))
    # None = derived from the slug and the sending domain (or MAILER_LIST_ID for the first).
    list_id: Mapped[str | None] = mapped_column(String(200))
    # Hidden newsletters are not offered on public forms or in the public archive list.
    public: Mapped[bool] = mapped_column(Boolean, default=True)
    # Chosen for a signup that names no newsletter (the site's old snippet, the plain API).
    signup_default: Mapped[bool] = mapped_column(Boolean, default=False)
    # Archived: no new issues; its sent issues stay in the archive.
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Digest defaults.
    latest_n: Mapped[int] = mapped_column(Integer, default=10)
    popular_m: Mapped[int] = mapped_column(Integer, default=5)
    min_items: Mapped[int] = mapped_column(Integer, default=1)
    # Sections key of the sections readers may choose in this newsletter; '' = all of the
    # site's sections.
    sections: Mapped[str] = mapped_column(String(500), default="")
    # The look, applied to its emails and its public pages.
    logo_file: Mapped[str | None] = mapped_column(String(200))  # stored by the mailer
    logo_url: Mapped[str | None] = mapped_column(String(2000))  # or an https URL
    masthead_title: Mapped[str | None] = mapped_column(String(200))  # None = the name
    accent_color: Mapped[str] = mapped_column(String(7), default=DEFAULT_ACCENT)
    header_font: Mapped[str] = mapped_column(String(40), default=DEFAULT_FONT)
    footer_md: Mapped[str] = mapped_column(Text, default="")  # Markdown, sandboxed
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    @property
    def section_list(self) -> list[str]:
        return sections_list(self.sections)

    @property
    def takes_readers(self) -> bool:
        """Offered to anyone without an invitation: public and not archived (the condition
        of services.newsletters.offered, for one newsletter at hand)."""
        return self.public and self.archived_at is None


class Subscription(Base):
    """One reader's subscription to one newsletter."""

    __tablename__ = "subscriptions"
    __table_args__ = (
        UniqueConstraint("subscriber_id", "newsletter_id"),
        Index("ix_subscriptions_audience", "newsletter_id", "status", "frequency", "subscriber_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # (Looked up through the unique constraint's index, which it leads.)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    newsletter_id: Mapped[int] = mapped_column(ForeignKey("newsletters.id", ondelete="CASCADE"))
    status: Mapped[SubscriptionStatus] = mapped_column(
        enum_column(SubscriptionStatus), default=SubscriptionStatus.PENDING
    )
    frequency: Mapped[Frequency] = mapped_column(enum_column(Frequency), default=Frequency.WEEKLY)
    # Canonical sections key (models.subscribers.sections_key); '' = every section offered.
    sections: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    unsubscribed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    subscriber: Mapped[Subscriber] = relationship()
    newsletter: Mapped[Newsletter] = relationship()

    @property
    def section_list(self) -> list[str]:
        return sections_list(self.sections)
