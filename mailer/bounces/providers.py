"""Provider webhooks: each provider's authentication, and its events turned into Reports.

Postmark (HTTP basic auth), SendGrid (the Signed Event Webhook: ECDSA P-256 over timestamp +
body) and Mailgun (HMAC-SHA256 of timestamp + token) are here; Amazon SES, whose
notifications come signed through SNS, is in bounces.sns. Nothing here touches a database:
a Mailgun token's replay check is the caller's (web.webhooks keeps the tokens it has seen).

Each event is keyed by the provider's own event id (Report.key), so a provider's retry of
an event it already delivered is recorded once. A provider's event about several
recipients becomes one Report per recipient.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
from datetime import UTC, datetime

from mailer.bounces.report import Kind, Report, Source

# A signed request whose timestamp is further than this from our clock is refused: a
# captured request cannot be replayed later, and a clock this far off is a fault to fix.
MAX_SKEW = 300
KEY_MAX = 200
DETAIL_MAX = 1000


class Refused(Exception):
    """The request is not from the provider (401) or not for us (403). Nothing is changed."""

    def __init__(self, message: str, status: int = 401):
        super().__init__(message)
        self.status = status


class Unavailable(Exception):
    """Something the check needs cannot be reached now (503: the provider retries)."""


class Malformed(ValueError):
    """The body is not what the provider sends (400)."""


def event_key(*parts: object) -> str:
    """Report.key from a provider's event id (services.bounces prefixes the source)."""
    key = ":".join(str(p) for p in parts)
    if len(key) > KEY_MAX:  # still unique: the end is replaced by a digest of the whole
        key = key[: KEY_MAX - 41] + ":" + hashlib.sha1(key.encode()).hexdigest()
    return key


def detail(value) -> str | None:
    if value is None or value == "":
        return None
    return str(value)[:DETAIL_MAX]


_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


def enhanced_status(value) -> str | None:
    """An RFC 3463 status code (5.1.1) as given, or None for anything else (550, junk)."""
    text = str(value).strip() if value is not None else ""
    return text if _STATUS.fullmatch(text) else None


def check_fresh(timestamp: str | float | int | None, now: float) -> None:
    """Refuse a timestamp (Unix seconds) more than MAX_SKEW from now, or none at all."""
    try:
        ts = float(timestamp)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise Refused("the request carries no valid timestamp") from None
    if not math.isfinite(ts) or abs(now - ts) > MAX_SKEW:
        raise Refused("the request's timestamp is more than 5 minutes from our clock")


def parse_time(value) -> datetime | None:
    """An ISO 8601 or Unix timestamp, as an aware datetime (None when absent or odd)."""
    try:
        if isinstance(value, int | float):
            return datetime.fromtimestamp(float(value), UTC)
        if isinstance(value, str) and value:
            text = value.replace("Z", "+00:00")
            # Some providers write 7 fractional digits; Python reads at most 6.
            if "." in text:
                head, _, tail = text.partition(".")
                digits = "".join(c for c in tail if c.isdigit())
                text = f"{head}.{digits[:6]}{tail[len(digits):]}"
            when = datetime.fromisoformat(text)
            return when if when.tzinfo else when.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _events(payload, what: str) -> list[dict]:
    events = payload if isinstance(payload, list) else [payload]
    if not events or not all(isinstance(e, dict) for e in events):
        raise Malformed(f"expected {what}")
    return events


# --- Postmark -----------------------------------------------------------------------------

# Postmark's bounce `Type`s (its documentation's list): what each means for the reader.
POSTMARK_HARD = {"HardBounce", "BadEmailAddress", "ManuallyDeactivated"}
POSTMARK_SOFT = {"Transient", "SoftBounce", "DnsError", "Blocked", "Undeliverable", "Unknown"}
POSTMARK_COMPLAINT = {"SpamComplaint", "SpamNotification"}


def check_basic_auth(header: str | None, expected: str) -> None:
    """HTTP basic auth against `user:password`, compared in constant time."""
    given = b""
    if header and header[:6].lower() == "basic ":
        try:
            given = base64.b64decode(header[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            given = b""
    if not hmac.compare_digest(given, expected.encode("utf-8")):
        raise Refused("wrong or missing credentials")


def postmark_reports(payload) -> list[Report]:
    """Postmark's Bounce and SpamComplaint webhooks (one event per request)."""
    out = []
    for event in _events(payload, "a Postmark webhook object"):
        kind_name, event_id, address = event.get("Type"), event.get("ID"), event.get("Email")
        # Older webhooks (and Postmark's own examples) carry no RecordType.
        record_type = event.get("RecordType") or (
            "SpamComplaint" if kind_name == "SpamComplaint" else "Bounce" if kind_name else None
        )
        if record_type not in ("Bounce", "SpamComplaint") or event_id is None:
            raise Malformed("not a Postmark Bounce or SpamComplaint webhook")
        if record_type == "SpamComplaint" or kind_name in POSTMARK_COMPLAINT:
            kind = Kind.COMPLAINT
        elif kind_name in POSTMARK_HARD:
            kind = Kind.HARD
        elif kind_name in POSTMARK_SOFT:
            kind = Kind.SOFT
        else:
            kind = Kind.IGNORED
        out.append(
            Report(
                source=Source.POSTMARK,
                kind=kind,
                key=event_key(event_id),
                addresses=(str(address),) if address else (),
                diagnostic=detail(event.get("Details") or event.get("Description")),
                at=parse_time(event.get("BouncedAt")),
                reason=f"Postmark {kind_name}" if kind == Kind.IGNORED else None,
            )
        )
    return out


# --- SendGrid -----------------------------------------------------------------------------

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"


def load_sendgrid_key(text: str):
    """The verification key as SendGrid's console shows it (base64 of the DER public key)."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    try:
        key = load_der_public_key(base64.b64decode("".join(text.split()), validate=True))
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"not a base64 DER public key: {e}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("not an ECDSA P-256 public key")
    return key


def verify_sendgrid(key, signature: str | None, timestamp: str | None, body: bytes, now: float):
    """The Signed Event Webhook: ECDSA (P-256, SHA-256) over the timestamp then the body."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    if not signature or not timestamp:
        raise Refused("the request is not signed")
    check_fresh(timestamp, now)
    try:
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, timestamp.encode("utf-8") + body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature):
        raise Refused("the signature does not verify") from None


def sendgrid_reports(payload) -> list[Report]:
    """Events `bounce` (type bounce: hard, blocked: soft), `dropped` and `spamreport`;
    SendGrid's other events (delivered, open, click, ...) are ignored."""
    out = []
    for event in _events(payload, "a JSON array of SendGrid events"):
        name, address = event.get("event"), event.get("email")
        if not isinstance(name, str) or not name:
            raise Malformed("a SendGrid event without `event`")
        # Some events (an address SendGrid finds invalid, dropped) come without an event id:
        # the event itself, canonically serialized, is its identity then.
        event_id = event.get("sg_event_id") or "sha1-" + hashlib.sha1(
            json.dumps(event, sort_keys=True).encode()
        ).hexdigest()
        reason = detail(event.get("reason"))
        ignored = None
        if name == "spamreport":
            kind = Kind.COMPLAINT
        elif name == "bounce":
            kind = Kind.SOFT if event.get("type") == "blocked" else Kind.HARD
        elif name == "dropped":
            # SendGrid did not even try: its own suppression lists say why.
            lowered = (reason or "").lower()
            if "spam" in lowered:
                kind = Kind.COMPLAINT
            elif "bounce" in lowered or "invalid" in lowered:
                kind = Kind.HARD
            else:
                kind, ignored = Kind.IGNORED, f"SendGrid dropped: {reason}"
        else:
            kind, ignored = Kind.IGNORED, f"SendGrid event {name}"
        out.append(
            Report(
                source=Source.SENDGRID,
                kind=kind,
                key=event_key(event_id),
                addresses=(str(address),) if address else (),
                status=enhanced_status(event.get("status")),
                diagnostic=reason,
                at=parse_time(event.get("timestamp")),
                reason=ignored,
                message_id=detail(event.get("smtp-id")),
            )
        )
    return out


# --- Mailgun ------------------------------------------------------------------------------


def verify_mailgun(signing_key: str, signature, now: float) -> str:
    """Mailgun's `signature` object: HMAC-SHA256 of timestamp + token. Returns the token,
    which the caller must refuse if it has seen it before."""
    if not isinstance(signature, dict):
        raise Refused("the request is not signed")
    timestamp, token, given = (signature.get(k) for k in ("timestamp", "token", "signature"))
    if not all(isinstance(v, str) and v for v in (timestamp, token, given)):
        raise Refused("the request is not signed")
    check_fresh(timestamp, now)
    expected = hmac.new(
        signing_key.encode(), (timestamp + token).encode(), hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace")):
        raise Refused("the signature does not verify")
    return token


def mailgun_reports(payload: dict) -> list[Report]:
    """Events `failed` (severity permanent: hard, temporary: soft) and `complained`."""
    event = payload.get("event-data")
    if not isinstance(event, dict) or not event.get("event") or not event.get("id"):
        raise Malformed("expected Mailgun's `event-data` with `event` and `id`")
    name, address = event["event"], event.get("recipient")
    status = event.get("delivery-status") if isinstance(event.get("delivery-status"), dict) else {}
    ignored = None
    if name == "complained":
        kind = Kind.COMPLAINT
    elif name == "failed":
        kind = Kind.HARD if event.get("severity") == "permanent" else Kind.SOFT
    else:
        kind, ignored = Kind.IGNORED, f"Mailgun event {name}"
    message = event.get("message") if isinstance(event.get("message"), dict) else {}
    headers = message.get("headers") if isinstance(message.get("headers"), dict) else {}
    message_id = headers.get("message-id")
    if isinstance(message_id, str) and message_id and not message_id.startswith("<"):
        message_id = f"<{message_id}>"  # Mailgun drops the angle brackets
    code = status.get("enhanced-code") or status.get("code")
    return [
        Report(
            source=Source.MAILGUN,
            kind=kind,
            key=event_key(event["id"]),
            addresses=(str(address),) if address else (),
            status=enhanced_status(code),
            diagnostic=detail(status.get("description") or status.get("message")),
            at=parse_time(event.get("timestamp")),
            reason=ignored,
            message_id=detail(message_id),
        )
    ]
