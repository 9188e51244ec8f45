"""Per-process objects the web, the workers and the CLI share: settings, tokens, links, the
composer (every message built and signed one way) and its notices, the transport, the rate
limiter, the DKIM signer and the popularity store.

Built once by create_app() (app.extensions["mailer"]); runtime() finds it from a request or
a task. Services never see it whole: callers hand them the parts they need.
"""

from __future__ import annotations

import os

from mailer.config import Settings
from mailer.links import Links
from mailer.mail.compiled import CompiledVariant
from mailer.mail.composer import Composer
from mailer.mail.dkim import DkimSigner, signer_from_settings
from mailer.mail.notices import Notices
from mailer.mail.ratelimit import Limiter, limiter_from_settings
from mailer.mail.sender import Sender
from mailer.mail.transport import Transport, transport_from_settings
from mailer.services.popularity import Popularity, store_from_settings
from mailer.tokens import SUPPRESSION, Tokens


class Runtime:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.tokens = Tokens(settings.secret_key)
        self.links = Links(settings, self.tokens)
        self._composer: Composer | None = None
        self._notices: Notices | None = None
        self._transport: Transport | None = None
        self._pid: int | None = None
        self._popularity = None
        self._limiter: Limiter | None = None

    @property
    def transport(self) -> Transport:
        """One transport (one SMTP connection) per process, created after any fork."""
        if self._transport is None or self._pid != os.getpid():
            self._transport = transport_from_settings(self.settings)
            self._pid = os.getpid()
        return self._transport

    @property
    def popularity(self) -> Popularity:
        """The popularity store, built on first use: Redis in production, SQL when embedded."""
        if self._popularity is None:
            self._popularity = store_from_settings(self.settings)
        return self._popularity

    @property
    def limiter(self) -> Limiter:
        """MAILER_RATE_LIMIT's shared bucket (Redis, or a file when embedded), built on first
        use. It keeps no connection and no open file between reservations (Redis is reached
        through the process's own client), so a forked process may use its parent's."""
        if self._limiter is None:
            self._limiter = limiter_from_settings(self.settings)
        return self._limiter

    @property
    def dkim(self) -> DkimSigner | None:
        """The DKIM signer for MAILER_DKIM_*, or None; keys are read once per process."""
        if not hasattr(self, "_dkim"):
            self._dkim = signer_from_settings(self.settings)
        return self._dkim

    @property
    def composer(self) -> Composer:
        """Builds and signs every message this process sends (with the keys of `dkim`)."""
        if self._composer is None:
            self._composer = Composer(self.settings, self.links, self.tokens, self.dkim)
        return self._composer

    @property
    def notices(self) -> Notices:
        """Confirmation, welcome and change-of-address mails, built by the composer; one per
        process, which keeps the confirmations it encoded."""
        if self._notices is None:
            self._notices = Notices(self.composer)
        return self._notices

    def email_hash(self, email: str) -> str:
        return self.tokens.keyed_hash(SUPPRESSION, email)

    def compile(
        self, variant, sender: Sender | None = None, newsletter_id: int | None = None
    ) -> CompiledVariant:
        """A stored issue variant (issue_id, id, subject, html, text) compiled for sending
        from this process: its settings, links, tokens and DKIM signer, the From, Reply-To
        and List-Id of the issue's newsletter (`sender`; None: MAILER_FROM's), and that
        newsletter's id for the readers' unsubscribe and preferences links."""
        return self.composer.compile(
            issue_id=variant.issue_id,
            variant_id=variant.id,
            subject=variant.subject,
            html=variant.html,
            text=variant.text,
            sender=sender,
            newsletter_id=newsletter_id,
        )


def runtime() -> Runtime:
    from flask import current_app

    return current_app.extensions["mailer"]
