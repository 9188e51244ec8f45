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

    def unsubscribe(self, uid: str) -> str:
        return f"{self.base}/unsubscribe/{self.tokens.sign(t.UNSUBSCRIBE, uid)}"

    def preferences(self, uid: str) -> str:
        return f"{self.base}/preferences/{self.tokens.sign(t.PREFERENCES, uid)}"

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

    def list_unsubscribe_headers(self, uid: str) -> dict[str, str]:
        """RFC 2369 / RFC 8058 headers: the HTTPS link first, a mailto when configured."""
        value = f"<{self.unsubscribe(uid)}>"
        if self.settings.unsubscribe_mailto:
            value += f", <mailto:{self.settings.unsubscribe_mailto}?subject=unsubscribe>"
        return {
            "List-Unsubscribe": value,
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }
