"""Amazon SES notifications, delivered by Amazon SNS: signature, certificate, topic, events.

An SNS message is signed (SignatureVersion 1: SHA1withRSA, 2: SHA256withRSA) over a
canonical string of its fields, with the key of the X.509 certificate at SigningCertURL.
That URL is only trusted over https and from hosts matching MAILER_SNS_CERT_HOSTS, where
`{region}` stands for one AWS region name: a bare wildcard would also match hosts anyone
can serve from (an S3 bucket called "sns" is `sns.s3.amazonaws.com`). Certificates are
cached per process. The message's TopicArn must be one of MAILER_SES_TOPIC_ARNS, so a
validly signed message from someone else's topic is refused too.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from datetime import datetime
from urllib.parse import urlsplit

from mailer.bounces.providers import (
    DETAIL_MAX,
    Malformed,
    Refused,
    Unavailable,
    check_fresh,
    enhanced_status,
    event_key,
    parse_time,
)
from mailer.bounces.report import Kind, Report, Source

REGION = r"[a-z]{2}(?:-[a-z]+)+-\d{1,2}"  # us-east-1, eu-central-2, us-gov-west-1, ...
DEFAULT_HOSTS = ("sns.{region}.amazonaws.com", "sns.{region}.amazonaws.com.cn")
CERT_TIMEOUT = 10.0
CERT_MAX_BYTES = 64 * 1024
_CACHE_MAX = 32

_SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
    ),
    "UnsubscribeConfirmation": (
        "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
    ),
}


def host_pattern(patterns: tuple[str, ...]) -> re.Pattern:
    """One regular expression for the allowed certificate hosts (`{region}`: a region)."""
    parts = [re.escape(p).replace(re.escape("{region}"), REGION) for p in patterns]
    return re.compile("|".join(f"(?:{p})" for p in parts) or "(?!)", re.IGNORECASE)


class Certificates:
    """Fetches signing certificates from allowed https hosts, and keeps their keys."""

    def __init__(self, hosts: tuple[str, ...] = DEFAULT_HOSTS, ca_file: str | None = None):
        self.hosts = host_pattern(hosts)
        self.ca_file = ca_file
        self._tls = None
        self._keys: dict[str, object] = {}
        self._lock = threading.Lock()

    def allowed(self, url: str) -> bool:
        """https, no credentials, a host of the allow-list (the port is not part of it)."""
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            return False
        return (
            parts.scheme == "https"
            and not parts.username
            and not parts.password
            and bool(self.hosts.fullmatch(host))
        )

    def key(self, url: str, now: datetime):
        """The public key of the certificate at `url` (cached), or Refused."""
        if not self.allowed(url):
            raise Refused("SigningCertURL is not an https address of Amazon SNS", 403)
        with self._lock:
            cached = self._keys.get(url)
        if cached is None:
            cached = self._fetch(url)
            with self._lock:
                if len(self._keys) >= _CACHE_MAX:
                    self._keys.clear()
                self._keys[url] = cached
        cert = cached
        if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
            raise Refused("the signing certificate is not valid now")
        return cert.public_key()

    def _verify(self):
        """TLS verification: the CA file when one is set, else the default trust store."""
        import ssl

        if self.ca_file is None:
            return True
        if self._tls is None:
            self._tls = ssl.create_default_context(cafile=self.ca_file)
        return self._tls

    def _fetch(self, url: str):
        import httpx
        from cryptography import x509

        try:
            with httpx.stream(
                "GET", url, timeout=CERT_TIMEOUT, follow_redirects=False,
                verify=self._verify(),
            ) as resp:
                if resp.status_code >= 500 or resp.status_code == 429:
                    raise Unavailable(f"the signing certificate answered {resp.status_code}")
                if resp.status_code != 200:
                    raise Refused(f"the signing certificate answered {resp.status_code}")
                data = b""
                for chunk in resp.iter_bytes():
                    data += chunk
                    if len(data) > CERT_MAX_BYTES:
                        raise Refused("the signing certificate is too large")
        except httpx.HTTPError as e:
            # Our network, or the host: not the sender's fault. A 503 makes SNS retry.
            raise Unavailable(f"the signing certificate could not be fetched: {e}") from None
        try:
            return x509.load_pem_x509_certificate(data)
        except ValueError:
            raise Refused("SigningCertURL does not serve a PEM certificate") from None

    def get_url(self, url: str) -> None:
        """Confirm a subscription: GET its SubscribeURL (an allowed https host only)."""
        import httpx

        if not self.allowed(url):
            raise Refused("SubscribeURL is not an https address of Amazon SNS", 403)
        try:
            resp = httpx.get(url, timeout=CERT_TIMEOUT, verify=self._verify())
        except httpx.HTTPError as e:
            raise Unavailable(f"the subscription could not be confirmed: {e}") from None
        if resp.status_code != 200:
            raise Unavailable(f"the subscription could not be confirmed: {resp.status_code}")


def parse_message(body: bytes) -> dict:
    """The SNS message: a JSON object with string fields."""
    try:
        message = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Malformed("the body is not JSON") from None
    kind = message.get("Type") if isinstance(message, dict) else None
    if not isinstance(kind, str) or kind not in _SIGNED_FIELDS:
        raise Malformed("not an Amazon SNS message")
    return message


def string_to_sign(message: dict) -> bytes:
    """The canonical form SNS signs: each present field's name and value, one per line."""
    lines = []
    for name in _SIGNED_FIELDS[message["Type"]]:
        value = message.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise Malformed(f"the SNS field {name} is not a string")
        lines.append(f"{name}\n{value}\n")
    return "".join(lines).encode("utf-8")


def verify(message: dict, certs: Certificates, topics: tuple[str, ...], now: datetime) -> None:
    """Refused unless the topic is ours, the time is fresh and the signature verifies."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    if message.get("TopicArn") not in topics:
        raise Refused("the notification comes from a topic not in MAILER_SES_TOPIC_ARNS", 403)
    version = message.get("SignatureVersion")
    algorithm = {"1": hashes.SHA1(), "2": hashes.SHA256()}.get(version)
    if algorithm is None or not message.get("Signature"):
        raise Refused("the notification is not signed (SignatureVersion 1 or 2)")
    when = parse_time(message.get("Timestamp"))
    check_fresh(when.timestamp() if when else None, now.timestamp())
    key = certs.key(str(message.get("SigningCertURL") or ""), now)
    if not isinstance(key, rsa.RSAPublicKey):
        raise Refused("the signing certificate does not hold an RSA key")
    try:
        signature = base64.b64decode(message["Signature"], validate=True)
        key.verify(signature, string_to_sign(message), padding.PKCS1v15(), algorithm)
    except (binascii.Error, ValueError, TypeError, InvalidSignature):
        raise Refused("the signature does not verify") from None


def _header(mail: dict, name: str) -> str | None:
    common = mail.get("commonHeaders")
    if isinstance(common, dict) and name == "message-id" and common.get("messageId"):
        return str(common["messageId"])
    for header in mail.get("headers") or ():
        if isinstance(header, dict) and str(header.get("name", "")).lower() == name:
            return str(header.get("value"))
    return None


def ses_reports(message: dict) -> list[Report]:
    """The SES notification in a Notification's Message: Bounce, Complaint (others ignored).

    Identity notifications say `notificationType`, configuration-set events `eventType`.
    """
    try:
        note = json.loads(message.get("Message") or "")
    except (ValueError, TypeError):
        raise Malformed("the SNS Message is not an SES notification") from None
    if not isinstance(note, dict):
        raise Malformed("the SNS Message is not an SES notification")
    what = note.get("notificationType") or note.get("eventType")
    mail = note.get("mail") if isinstance(note.get("mail"), dict) else {}
    message_id = _header(mail, "message-id")
    sns_id = message.get("MessageId")
    if what == "Bounce":
        bounce = note.get("bounce") if isinstance(note.get("bounce"), dict) else {}
        bounce_type = bounce.get("bounceType")
        # Permanent: hard. Transient: soft. Undetermined: SES could not tell; soft is the
        # cautious reading (it takes several to set a reader bounced).
        kind = Kind.HARD if bounce_type == "Permanent" else Kind.SOFT
        recipients = bounce.get("bouncedRecipients") or []
        event_id = bounce.get("feedbackId") or sns_id
        at = parse_time(bounce.get("timestamp"))
    elif what == "Complaint":
        complaint = note.get("complaint") if isinstance(note.get("complaint"), dict) else {}
        kind = Kind.COMPLAINT
        recipients = complaint.get("complainedRecipients") or []
        event_id = complaint.get("feedbackId") or sns_id
        at = parse_time(complaint.get("timestamp"))
        bounce = {}
    else:
        return [
            Report(
                source=Source.SES,
                kind=Kind.IGNORED,
                key=event_key(sns_id),
                reason=f"SES notification {what}",
            )
        ]
    out = []
    for r in recipients if isinstance(recipients, list) else []:
        if not isinstance(r, dict) or not r.get("emailAddress"):
            continue
        address = str(r["emailAddress"])
        diagnostic = r.get("diagnosticCode") or (
            f"{bounce.get('bounceType')}/{bounce.get('bounceSubType')}" if bounce else None
        )
        out.append(
            Report(
                source=Source.SES,
                kind=kind,
                key=event_key(event_id, address.lower()),
                addresses=(address,),
                status=enhanced_status(r.get("status")),
                diagnostic=str(diagnostic)[:DETAIL_MAX] if diagnostic else None,
                at=at,
                message_id=message_id,
            )
        )
    if not out:
        raise Malformed(f"an SES {what} notification that names no recipient")
    return out
