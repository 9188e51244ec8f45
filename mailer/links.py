"""Absolute URLs for readers' links, built without a request (workers make them too)."""

from __future__ import annotations

from datetime import datetime

from mailer import tokens as t
from mailer.clock import utcnow
from mailer.config import Settings
from mailer.tokens import Tokens


def archive_url(settings: Settings, issue_id: int | None = None) -> str:
    """The public archive, or one issue in it (no token: the archive is public)."""
    return f"{settings.base_url}/archive" + (f"/{issue_id}" if issue_id is not None else "")


def newsletter_archive_url(settings: Settings, slug: str) -> str:
    """One newsletter's page of the public archive."""
    return f"{settings.base_url}/archive/{slug}"


def feed_url(settings: Settings, slug: str | None = None) -> str:
    """The RSS feed of one newsletter's archive, or of every public newsletter's."""
    return f"{settings.base_url}/archive" + (f"/{slug}" if slug else "") + "/feed.xml"


def email_change_key(tokens: Tokens, new_email: str) -> str:
    """What an address-change link says about the new address: a short keyed hash."""
    return tokens.keyed_hash(t.CHANGE_EMAIL, new_email)[:16]


def reader_value(uid: str, newsletter_id: int | None) -> str:
    """What an unsubscribe or preferences link signs: the reader's uid, and the newsletter
    it is about after a `~` (uids are URL-safe base64: never a `~`)."""
    return uid if newsletter_id is None else f"{uid}~{newsletter_id}"


def parse_reader_value(value: str) -> tuple[str, int | None]:
    """(uid, newsletter id) of a signed reader link; None for links made before there were
    several newsletters (they mean the first one). ValueError when malformed."""
    uid, tilde, newsletter = value.partition("~")
    if not tilde:
        return uid, None
    if not newsletter.isdigit() or not uid:
        raise ValueError(value)
    return uid, int(newsletter)


class Links:
    def __init__(self, settings: Settings, tokens: Tokens):
        self.base = settings.base_url
        self.settings = settings
        self.tokens = tokens

    def confirm(self, uid: str, requested: datetime) -> str:
        """The link answering the reader's request made at `requested`: no address in it,
        and it opens nothing once a newer request, a confirmation or an unsubscribe came."""
        return f"{self.base}/confirm/{self.tokens.sign_issued(t.CONFIRM, uid, requested)}"

    def change_email(self, uid: str, new_email: str) -> str:
        """Names the new address by a keyed hash only (it is stored as the pending one)."""
        value = f"{uid}~{email_change_key(self.tokens, new_email)}"
        token = self.tokens.sign_issued(t.CHANGE_EMAIL, value, utcnow())
        return f"{self.base}/preferences/email/{token}"

    def unsubscribe(self, uid: str, newsletter_id: int | None = None) -> str:
        """Ends the subscription to one newsletter (the person's first one when None)."""
        token = self.tokens.sign(t.UNSUBSCRIBE, reader_value(uid, newsletter_id))
        return f"{self.base}/unsubscribe/{token}"

    def preferences(self, uid: str, newsletter_id: int | None = None) -> str:
        """The reader's preferences, opened at one newsletter (the first one when None)."""
        token = self.tokens.sign(t.PREFERENCES, reader_value(uid, newsletter_id))
        return f"{self.base}/preferences/{token}"

    def click_base(self, delivery_id: int) -> str:
        """Tracked links of one delivery are click_base + "/" + item id."""
        return f"{self.base}/t/{self.tokens.sign(t.CLICK, str(delivery_id))}"

    def sample_click_base(self, issue_id: int) -> str:
        """Tracked links of a test send: they name the issue, not a delivery, so a click
        is redirected like a reader's and counted against nobody."""
        return f"{self.base}/t/{self.tokens.sign(t.CLICK, f'sample-{issue_id}')}"

    def subscribe(self) -> str:
        return f"{self.base}/subscribe"

    def archive(self, issue_id: int | None = None) -> str:
        return archive_url(self.settings, issue_id)

    def list_unsubscribe_headers(
        self, uid: str, newsletter_id: int | None = None
    ) -> dict[str, str]:
        """RFC 2369 / RFC 8058 headers: the HTTPS link first, a mailto when configured."""
        value = f"<{self.unsubscribe(uid, newsletter_id)}>"
        if self.settings.unsubscribe_mailto:
            value += f", <mailto:{self.settings.unsubscribe_mailto}?subject=unsubscribe>"
        return {
            "List-Unsubscribe": value,
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }
