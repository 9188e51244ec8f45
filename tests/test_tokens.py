"""Tokens keep their format: links and Message-IDs already in readers' mailboxes still open."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from mailer import tokens as t
from mailer.tokens import BadToken, Tokens

SECRET = "a-secret-key-of-thirty-two-bytes!"


def _reference_sign(purpose: str, value: str) -> str:
    key = hashlib.sha256(f"{purpose}:{SECRET}".encode()).digest()
    sig = hmac.digest(key, value.encode(), "sha256")[:12]
    return f"{value}.{base64.urlsafe_b64encode(sig).decode()}"


@pytest.mark.parametrize("purpose", [t.UNSUBSCRIBE, t.PREFERENCES, t.CLICK, t.BOUNCE, t.CONFIRM])
@pytest.mark.parametrize("value", ["1", "123456789", "uid-zoë~1700000000000000", "x" * 200])
def test_signed_tokens_are_hmac_sha256_keyed_per_purpose(purpose, value):
    tokens = Tokens(SECRET)
    for _ in range(2):  # the second time from the key's hash states kept by the first
        token = tokens.sign(purpose, value)
        assert token == _reference_sign(purpose, value)
        assert tokens.unsign(purpose, token) == value


def test_a_token_opens_only_its_purpose_and_its_value():
    tokens = Tokens(SECRET)
    token = tokens.sign(t.UNSUBSCRIBE, "uid-1")
    with pytest.raises(BadToken):
        tokens.unsign(t.PREFERENCES, token)
    with pytest.raises(BadToken):
        tokens.unsign(t.UNSUBSCRIBE, token.replace("uid-1", "uid-2"))
    with pytest.raises(BadToken):
        Tokens(SECRET + "x").unsign(t.UNSUBSCRIBE, token)


@pytest.mark.parametrize("purpose", [t.MESSAGE_ID, t.SUPPRESSION, "visitor"])
def test_keyed_hashes_are_hmac_sha256_hex(purpose):
    tokens = Tokens(SECRET)
    key = hashlib.sha256(f"{purpose}:{SECRET}".encode()).digest()
    for value in ("42", "reader@example.com", "2026-12-07\n203.0.113.0\nMozilla"):
        expected = hmac.new(key, value.encode(), hashlib.sha256).hexdigest()
        assert tokens.keyed_hash(purpose, value) == expected
        assert tokens.keyed_hash(purpose, value) == expected
