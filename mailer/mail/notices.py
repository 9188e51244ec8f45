"""Transactional mail to one reader: confirmation, welcome, change of address."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from mailer.config import Settings
from mailer.mail.look import Look
from mailer.mail.templates import render_pair

if TYPE_CHECKING:
    from mailer.mail.composer import Composer


@dataclass(frozen=True)
class Outgoing:
    envelope_from: str
    recipient: str
    data: bytes


class Notices:
    """Renders the messages, which the composer builds and signs; subjects are fixed text,
    never anything a reader typed."""

    def __init__(self, composer: Composer):
        self.composer = composer
        self.settings = composer.settings
        self.links = composer.links

    def _common(self) -> dict:
        s = self.settings
        return {
            "list_name": s.list_name,
            "postal_address": s.postal_address,
            "base_url": s.base_url,
        }

    def _build(self, template: str, to: str, subject: str, headers=None, look=None,
               **context) -> Outgoing:
        # The look of the newsletter the message is about (the caller's choice); without
        # one, a plain look named after the list.
        look = look or Look(title=self.settings.list_name)
        text, html = render_pair(template, **self._common(), look=look, **context)
        return self.composer.message(to=to, subject=subject, text=text, html=html, headers=headers)

    def confirmation(
        self, email: str, uid: str, requested: datetime, look: Look | None = None,
        newsletters: Sequence[tuple[str, str | None]] = (),
    ) -> Outgoing:
        """The request to confirm; `newsletters` are the (name, description) of what the
        reader asked for, which the message lists (none: it speaks of the list's name)."""
        hours = self.settings.confirm_ttl_hours
        return self._build(
            "confirm",
            email,
            f"Please confirm your subscription to {self.settings.list_name}",
            look=look,
            confirm_url=self.links.confirm(uid, requested),
            valid_days=max(1, hours // 24),
            newsletters=[{"name": name, "description": description}
                         for name, description in newsletters],
        )

    def already_subscribed(self, email: str, uid: str, look: Look | None = None) -> Outgoing:
        """The answer to a signup for an address that is already active (the page said the
        same as for anyone, so the mail is where the owner learns it)."""
        return self._build(
            "already_subscribed",
            email,
            f"You are already subscribed to {self.settings.list_name}",
            look=look,
            headers=self._list_headers(uid),
            unsubscribe_url=self.links.unsubscribe(uid),
            preferences_url=self.links.preferences(uid),
        )

    def welcome(self, email: str, uid: str, look: Look | None = None) -> Outgoing:
        return self._build(
            "welcome",
            email,
            f"Welcome to {self.settings.list_name}",
            look=look,
            headers=self._list_headers(uid),
            unsubscribe_url=self.links.unsubscribe(uid),
            preferences_url=self.links.preferences(uid),
            archive_url=self.links.archive(),
        )

    def email_change(self, new_email: str, uid: str, look: Look | None = None) -> Outgoing:
        return self._build(
            "change_email",
            new_email,
            f"Confirm your new address for {self.settings.list_name}",
            look=look,
            confirm_url=self.links.change_email(uid, new_email),
        )

    def _list_headers(self, uid: str) -> dict[str, str]:
        headers = {"List-Id": list_id(self.settings)}
        headers.update(self.links.list_unsubscribe_headers(uid))
        return headers


def list_id(settings: Settings) -> str:
    """RFC 2919 List-Id: a phrase and a dotted identifier at our domain."""
    ident = settings.list_id or f"newsletter.{settings.sender_domain}"
    name = settings.list_name.replace('"', "")
    return f'"{name}" <{ident}>'
