"""DKIM keys generated for a test, and verification with dkimpy (an independent implementation)."""

from __future__ import annotations

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailer.mail.dkim import load_key

DOMAIN = "daily.example"
SELECTORS = {"rsa": "mlr2048", "ed": "mlred"}


def write_keys(tmp_path) -> dict:
    """An RSA-2048 and an Ed25519 private key, as PEM files in tmp_path."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    paths = {}
    for name, key in (("rsa", rsa_key), ("ed", ed_key)):
        paths[name] = tmp_path / f"{name}.pem"
        paths[name].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return paths


def dkim_settings(keys: dict) -> dict:
    """The MAILER_DKIM_* settings that sign with both keys."""
    return {
        "MAILER_DKIM_KEY_FILE": str(keys["rsa"]),
        "MAILER_DKIM_SELECTOR": SELECTORS["rsa"],
        "MAILER_DKIM_DOMAIN": DOMAIN,
        "MAILER_DKIM_ED25519_KEY_FILE": str(keys["ed"]),
        "MAILER_DKIM_ED25519_SELECTOR": SELECTORS["ed"],
    }


def dns_records(keys: dict) -> dict[bytes, str]:
    """The TXT records a receiver would look up, by name."""
    return {
        f"{SELECTORS[kind]}._domainkey.{DOMAIN}.".encode(): load_key(
            path, DOMAIN, SELECTORS[kind]
        ).dns_txt()
        for kind, path in keys.items()
    }


def verified_signatures(raw: bytes, dns: dict[bytes, str]) -> int:
    """How many DKIM-Signature headers of `raw` dkimpy verifies against `dns`."""
    d = dkim.DKIM(raw)
    count = raw.count(b"\nDKIM-Signature:") + raw.startswith(b"DKIM-Signature:")
    ok = 0
    for idx in range(count):
        if d.verify(idx=idx, dnsfunc=lambda name, timeout=5: dns[name].encode()):
            ok += 1
    return ok
