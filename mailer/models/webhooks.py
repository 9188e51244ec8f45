"""Tokens of signed webhook requests already accepted, so a replayed request is refused."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from mailer.db import Base, UTCDateTime


class WebhookToken(Base):
    """One row per accepted Mailgun request token, kept while its timestamp could still pass
    the freshness check (services.webhooks.TOKEN_DAYS); older rows are swept by the tick."""

    __tablename__ = "webhook_tokens"

    provider: Mapped[str] = mapped_column(String(20), primary_key=True)
    token: Mapped[str] = mapped_column(String(200), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
