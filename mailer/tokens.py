"""Signed tokens for readers' links: compact, tamper-proof, some of them expiring."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta

from itsdangerous import BadData, SignatureExpired, URLSafeTimedSerializer


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
BOUNCE = "bounce"  # a delivery's id in its VERP envelope sender and our bounce header
SUPPRESSION = "suppression"  # keyed_hash of an address on the suppression list
MESSAGE_ID = "message-id"  # the keyed tag in our Message-IDs
# The header of each issue's message carrying its BOUNCE token (DKIM-signed): feedback
# loops that return only the headers, and bounces without VERP, still name the delivery.
BOUNCE_HEADER = "X-Delivery-Token"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


class Tokens:
    def __init__(self, secret_key: str):
        self._secret = secret_key
        self._pads: dict[str, tuple] = {}
        self._timed: dict[str, URLSafeTimedSerializer] = {}

    def _hmac(self, purpose: str, value: str) -> bytes:
        """HMAC-SHA256 (RFC 2104) of `value` with the purpose's key (SHA-256 of the purpose
        and the secret), from the key's inner and outer hash states computed once: a link's
        token costs two hash copies instead of setting up the key again (several tokens in
        every message of a send)."""
        pads = self._pads.get(purpose)
        if pads is None:
            key = hashlib.sha256(f"{purpose}:{self._secret}".encode()).digest()
            block = key.ljust(64, b"\0")  # 32 bytes: within SHA-256's block
            pads = self._pads[purpose] = (
                hashlib.sha256(block.translate(_IPAD)),
                hashlib.sha256(block.translate(_OPAD)),
            )
        inner, outer = pads[0].copy(), pads[1].copy()
        inner.update(value.encode())
        outer.update(inner.digest())
        return outer.digest()

    def _t(self, purpose: str) -> URLSafeTimedSerializer:
        if purpose not in self._timed:
            self._timed[purpose] = URLSafeTimedSerializer(self._secret, salt=purpose)
        return self._timed[purpose]

    def sign(self, purpose: str, value: str) -> str:
        """`value.signature`, never expiring: for links in every message (about 2 µs each).

        The value must not contain a dot (uids are URL-safe base64, ids are digits). The
        signature is HMAC-SHA256 truncated to 96 bits, keyed per purpose.
        """
        sig = self._hmac(purpose, value)[:12]
        return f"{value}.{base64.urlsafe_b64encode(sig).decode()}"

    def unsign(self, purpose: str, token: str) -> str:
        value, dot, sig = token.rpartition(".")
        if not dot or not value or len(sig) != 16:
            raise BadToken()
        try:
            given = base64.urlsafe_b64decode(sig)
        except (ValueError, TypeError):
            raise BadToken() from None
        expected = self._hmac(purpose, value)[:12]
        if not hmac.compare_digest(given, expected):
            raise BadToken()
        return value

    def sign_issued(self, purpose: str, value: str, issued: datetime) -> str:
        """A signed `value` with the time it was issued, and nothing readable besides.

        Links that must work once (a confirmation) carry the time of the request they
        answer; the database says whether that request is still the reader's latest.
        """
        micros = (issued - _EPOCH) // timedelta(microseconds=1)
        return self.sign(purpose, f"{value}~{micros}")

    def unsign_issued(self, purpose: str, token: str, max_age: float) -> tuple[str, datetime]:
        """(value, issued) from `sign_issued`; BadToken(expired) once older than max_age."""
        value, tilde, micros = self.unsign(purpose, token).rpartition("~")
        if not tilde or not micros.isdigit():
            raise BadToken()
        issued = _EPOCH + timedelta(microseconds=int(micros))
        if (datetime.now(UTC) - issued).total_seconds() > max_age:
            raise BadToken(expired=True)
        return value, issued

    def load_timed_with_time(self, purpose: str, token: str, max_age: float):
        """(payload, made) of a timed token: for links mailed by earlier versions."""
        try:
            return self._t(purpose).loads(token, max_age=max_age, return_timestamp=True)
        except SignatureExpired:
            raise BadToken(expired=True) from None
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
        return self._hmac(purpose, value).hex()
