"""Transactional mail to one reader: confirmation, welcome, change of address."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from mailer.config import Settings
from mailer.mail import placeholders as ph
from mailer.mail.look import Look
from mailer.mail.templates import render_pair

if TYPE_CHECKING:
    from mailer.mail.composer import Composer, SingleMessage

_CONFIRM_URL = re.compile(re.escape(ph.CONFIRM_URL))
# Confirmations encoded once, per (look, newsletters asked for): a process sees few.
_ENCODED_MAX = 64


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
        # (look, newsletters) -> the confirmation encoded once, or None when its text holds
        # the placeholders' prefix (then it is rendered for each reader, as other mails).
        self._confirmations: dict[tuple, SingleMessage | None] = {}

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
        reader asked for, which the message lists (none: it speaks of the list's name).

        Only the link differs between two readers of the same look who asked for the same
        newsletters: the message is rendered and encoded once for them, and each reader's
        link filled in (SingleMessage)."""
        key = (look, tuple(newsletters))
        try:
            encoded = self._confirmations[key]
        except KeyError:
            encoded = self._encode_confirmation(look, key[1])
            if len(self._confirmations) >= _ENCODED_MAX:
                self._confirmations.clear()
            self._confirmations[key] = encoded
        url = self.links.confirm(uid, requested)
        if encoded is None:
            return self._build("confirm", email, self._confirm_subject(), look=look,
                               **self._confirm_context(url, newsletters))
        return encoded.build(email, {ph.CONFIRM_URL: url})

    def _encode_confirmation(self, look: Look | None, newsletters) -> SingleMessage | None:
        look = look or Look(title=self.settings.list_name)
        # Newsletter names, descriptions and looks are editors' text: one that holds the
        # placeholders' prefix would be taken for a placeholder.
        text, html = render_pair("confirm", **self._common(), look=look,
                                 **self._confirm_context("", newsletters))
        if ph.PREFIX in text or ph.PREFIX in html:
            return None
        text, html = render_pair("confirm", **self._common(), look=look,
                                 **self._confirm_context(ph.CONFIRM_URL, newsletters))
        return self.composer.single(subject=self._confirm_subject(), text=text, html=html,
                                    markers=_CONFIRM_URL)

    def _confirm_subject(self) -> str:
        return f"Please confirm your subscription to {self.settings.list_name}"

    def _confirm_context(self, confirm_url: str, newsletters) -> dict:
        return {
            "confirm_url": confirm_url,
            "valid_days": max(1, self.settings.confirm_ttl_hours // 24),
            "newsletters": [{"name": name, "description": description}
                            for name, description in newsletters],
        }

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
