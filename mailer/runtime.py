"""Per-process objects every layer shares: settings, tokens, links, notices, the transport."""

from __future__ import annotations

import os

from mailer.config import Settings
from mailer.links import Links
from mailer.mail.notices import Notices
from mailer.mail.transport import Transport, transport_from_settings
from mailer.tokens import Tokens


class Runtime:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.tokens = Tokens(settings.secret_key)
        self.links = Links(settings, self.tokens)
        self.notices = Notices(settings, self.links)
        self._transport: Transport | None = None
        self._pid: int | None = None
        self._popularity = None

    @property
    def transport(self) -> Transport:
        """One transport (one SMTP connection) per process, created after any fork."""
        if self._transport is None or self._pid != os.getpid():
            self._transport = transport_from_settings(self.settings)
            self._pid = os.getpid()
        return self._transport

    @property
    def popularity(self):
        """The popularity store, built on first use: Redis in production, SQL when embedded."""
        if self._popularity is None:
            from mailer.services.popularity import store_from_settings

            self._popularity = store_from_settings(self.settings)
        return self._popularity

    @property
    def limiter(self):
        """MAILER_RATE_LIMIT's shared bucket (Redis, or a file when embedded), per process."""
        if getattr(self, "_limiter", None) is None or self._limiter_pid != os.getpid():
            from mailer.mail.ratelimit import limiter_from_settings

            self._limiter = limiter_from_settings(self.settings)
            self._limiter_pid = os.getpid()
        return self._limiter

    @property
    def dkim(self):
        """The DKIM signer for MAILER_DKIM_*, or None; keys are read once per process."""
        if not hasattr(self, "_dkim"):
            from mailer.mail.dkim import signer_from_settings

            self._dkim = signer_from_settings(self.settings)
        return self._dkim

    def email_hash(self, email: str) -> str:
        return self.tokens.keyed_hash("suppression", email)


def runtime() -> Runtime:
    from flask import current_app

    return current_app.extensions["mailer"]
