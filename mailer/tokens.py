"""Signed tokens for readers' links: compact, tamper-proof, some of them expiring."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

from itsdangerous import BadData, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer


class BadToken(Exception):
    """The token is forged, tampered with, of another purpose, or expired (`expired`)."""

    def __init__(self, expired: bool = False):
        super().__init__("expired" if expired else "invalid")
        self.expired = expired


# Purposes double as itsdangerous salts: a token made for one purpose never opens another.
CONFIRM = "confirm"
UNSUBSCRIBE = "unsubscribe"
PREFERENCES = "preferences"
CHANGE_EMAIL = "change-email"
CLICK = "click"
FORM = "form"
BOUNCE = "bounce"


class Tokens:
    def __init__(self, secret_key: str):
        self._secret = secret_key
        self._plain: dict[str, URLSafeSerializer] = {}
        self._timed: dict[str, URLSafeTimedSerializer] = {}

    def _s(self, purpose: str) -> URLSafeSerializer:
        if purpose not in self._plain:
            self._plain[purpose] = URLSafeSerializer(self._secret, salt=purpose)
        return self._plain[purpose]

    def _t(self, purpose: str) -> URLSafeTimedSerializer:
        if purpose not in self._timed:
            self._timed[purpose] = URLSafeTimedSerializer(self._secret, salt=purpose)
        return self._timed[purpose]

    def make(self, purpose: str, payload) -> str:
        """A token that never expires (unsubscribe and preference links in old mail keep working)."""
        return self._s(purpose).dumps(payload)

    def load(self, purpose: str, token: str):
        try:
            return self._s(purpose).loads(token)
        except BadData:
            raise BadToken() from None

    def make_timed(self, purpose: str, payload) -> str:
        return self._t(purpose).dumps(payload)

    def load_timed(self, purpose: str, token: str, max_age: float):
        try:
            return self._t(purpose).loads(token, max_age=max_age)
        except SignatureExpired:
            raise BadToken(expired=True) from None
        except BadData:
            raise BadToken() from None

    def age(self, purpose: str, token: str, max_age: float) -> float:
        """Seconds since a timed token was made (for the signup form's too-fast check)."""
        try:
            _, made = self._t(purpose).loads(token, max_age=max_age, return_timestamp=True)
        except SignatureExpired:
            raise BadToken(expired=True) from None
        except BadData:
            raise BadToken() from None
        return (datetime.now(UTC) - made).total_seconds()

    def keyed_hash(self, purpose: str, value: str) -> str:
        """HMAC-SHA256 of a value: for suppression lists and visitor ids, never reversible."""
        key = hashlib.sha256(f"{purpose}:{self._secret}".encode()).digest()
        return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()
