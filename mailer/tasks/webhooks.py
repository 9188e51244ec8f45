"""The tick's step that forgets webhook request tokens too old to be replayed anyway."""

from __future__ import annotations

from mailer.clock import utcnow
from mailer.db import db
from mailer.services import webhooks
from mailer.tasks.base import register_tick_step


def forget_webhook_tokens() -> int:
    with db.transaction() as s:
        return webhooks.forget_old_tokens(s, utcnow())


register_tick_step(forget_webhook_tokens)
