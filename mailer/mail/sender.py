"""Who a digest comes from: its newsletter's From, Reply-To and List-Id.

Each newsletter may have its own sender; what it leaves unset comes from the settings
(MAILER_FROM's address, MAILER_LIST_ID's identifier for the newsletter that had it). The
envelope sender (bounces), the Message-ID domain and the DKIM signing domain stay the
installation's, whatever the From says: see docs/operators.md on DKIM and a From of another
domain.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailer.config import Settings
from mailer.mail.encoding import format_address


@dataclass(frozen=True)
class Sender:
    name: str  # the list's name: From's display name unless from_name says otherwise
    from_name: str
    from_address: str
    reply_to: str | None
    list_ident: str  # the dotted List-Id identifier, without angle brackets

    @property
    def from_header(self) -> str:
        return format_address(self.from_name or None, self.from_address)

    @property
    def list_id(self) -> str:
        """RFC 2919 List-Id: a phrase and a dotted identifier."""
        return f'"{self.name.replace(chr(34), "")}" <{self.list_ident}>'


def settings_sender(settings: Settings) -> Sender:
    """The sender before there were newsletters: MAILER_FROM and MAILER_LIST_ID."""
    address = settings.from_address
    return Sender(
        name=settings.list_name,
        from_name=address.display_name or "",
        from_address=address.addr_spec,
        reply_to=None,
        list_ident=settings.list_id or f"newsletter.{settings.sender_domain}",
    )


def newsletter_sender(settings: Settings, newsletter) -> Sender:
    """The sender of a newsletter (any object with the Newsletter model's fields). From: its
    own name and address; a newsletter with neither sends as MAILER_FROM (name and address),
    one with only an address of its own shows its name, one with only a name uses
    MAILER_FROM's address. Reply-To: its own, if set. List-Id: its own, else
    `<slug>.<sender domain>`, named after the newsletter."""
    if newsletter is None:
        return settings_sender(settings)
    address = settings.from_address
    if newsletter.from_name:
        from_name = newsletter.from_name
    elif newsletter.from_address:
        from_name = newsletter.name
    else:
        from_name = address.display_name or ""
    return Sender(
        name=newsletter.name,
        from_name=from_name,
        from_address=newsletter.from_address or address.addr_spec,
        reply_to=newsletter.reply_to or None,
        list_ident=newsletter.list_id or f"{newsletter.slug}.{settings.sender_domain}",
    )
