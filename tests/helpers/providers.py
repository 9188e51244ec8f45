"""The sending providers as the webhooks meet them: real payload shapes (from each provider's
documentation), signed the provider's way with keys and certificates generated here, and a
local HTTPS server that plays SNS's certificate host.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import secrets
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from tests.helpers.servers import free_port

TOPIC = "arn:aws:sns:eu-west-1:123456789012:mailer-ses-feedback"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, issuer, public_key, signing_key, *, ca=False, san=None, days=30):
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class CertHost:
    """An HTTPS server on 127.0.0.1 with a certificate from a CA made here (the CA file is
    what MAILER_SNS_CA_FILE points at). It serves the SNS signing certificates and answers
    SubscribeURL requests, and counts what it was asked."""

    def __init__(self, folder: Path):
        ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ca = _cert("Test CA", "Test CA", ca_key.public_key(), ca_key, ca=True)
        tls_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        tls = _cert("127.0.0.1", "Test CA", tls_key.public_key(), ca_key,
                    san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        self.ca_file = folder / "ca.pem"
        self.ca_file.write_bytes(_pem(ca))
        chain, key_file = folder / "tls.pem", folder / "tls.key"
        chain.write_bytes(_pem(tls))
        key_file.write_bytes(tls_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                host.requests.append(self.path)
                body = host.files.get(self.path.split("?")[0])
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain, key_file)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.base = f"https://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class SnsSigner:
    """Signs SNS messages as Amazon does, with a certificate the CertHost serves."""

    def __init__(self, host: CertHost, path: str = "/SimpleNotificationService-test.pem"):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = _cert("sns.amazonaws.com", "Test CA", self.key.public_key(), self.key)
        host.files[path] = _pem(cert)
        self.cert_url = host.base + path

    def sign(self, message: dict, version: str = "1", cert_url: str | None = None) -> dict:
        from mailer.bounces.sns import string_to_sign

        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()  # noqa: S303
        message = {**message, "SignatureVersion": version,
                   "SigningCertURL": cert_url or self.cert_url}
        signature = self.key.sign(string_to_sign(message), padding.PKCS1v15(), algorithm)
        return {**message, "Signature": base64.b64encode(signature).decode()}


def sns_timestamp(at: float | None = None) -> str:
    when = dt.datetime.fromtimestamp(at if at is not None else time.time(), dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def ses_notification(
    kind: str,
    addresses: list[str],
    *,
    message_id: str | None = None,
    bounce_type: str = "Permanent",
    feedback_id: str | None = None,
    topic: str = TOPIC,
    at: float | None = None,
) -> dict:
    """An SNS Notification carrying an SES Bounce or Complaint (the shapes of SES's docs)."""
    feedback_id = feedback_id or f"0100{secrets.token_hex(8)}-{secrets.token_hex(4)}-000000"
    mail = {
        "timestamp": "2027-01-27T14:59:38.237Z",
        "source": "news@daily.example",
        "sourceArn": "arn:aws:ses:eu-west-1:123456789012:identity/daily.example",
        "sourceIp": "127.0.3.0",
        "sendingAccountId": "123456789012",
        "messageId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000",
        "destination": addresses,
    }
    if message_id:
        mail.update(
            headersTruncated=False,
            headers=[{"name": "From", "value": "news@daily.example"},
                     {"name": "Message-ID", "value": message_id}],
            commonHeaders={"from": ["news@daily.example"], "to": addresses,
                           "messageId": message_id, "subject": "The Daily"},
        )
    if kind == "Bounce":
        body = {
            "notificationType": "Bounce",
            "bounce": {
                "bounceType": bounce_type,
                "bounceSubType": "General",
                "reportingMTA": "dns; email.example.com",
                "bouncedRecipients": [
                    {"emailAddress": a, "status": "5.1.1", "action": "failed",
                     "diagnosticCode": f"smtp; 550 5.1.1 <{a}>... User unknown"}
                    for a in addresses
                ],
                "timestamp": "2027-01-27T14:59:38.237Z",
                "feedbackId": feedback_id,
                "remoteMtaIp": "127.0.2.0",
            },
            "mail": mail,
        }
    else:
        body = {
            "notificationType": "Complaint",
            "complaint": {
                "userAgent": "AnyCompany Feedback Loop (V0.01)",
                "complainedRecipients": [{"emailAddress": a} for a in addresses],
                "complaintFeedbackType": "abuse",
                "arrivalDate": "2027-01-27T14:59:38.237Z",
                "timestamp": "2027-01-27T14:59:38.237Z",
                "feedbackId": feedback_id,
            },
            "mail": mail,
        }
    return {
        "Type": "Notification",
        "MessageId": str(secrets.token_hex(16)),
        "TopicArn": topic,
        "Message": json.dumps(body),
        "Timestamp": sns_timestamp(at),
        "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe",
    }


def subscription_confirmation(host: CertHost, topic: str = TOPIC) -> dict:
    token = secrets.token_hex(32)
    host.files["/confirm"] = b"<ConfirmSubscriptionResponse/>"
    return {
        "Type": "SubscriptionConfirmation",
        "MessageId": str(secrets.token_hex(16)),
        "Token": token,
        "TopicArn": topic,
        "Message": f"You have chosen to subscribe to the topic {topic}.",
        "SubscribeURL": f"{host.base}/confirm?Action=ConfirmSubscription&Token={token}",
        "Timestamp": sns_timestamp(),
    }


# --- Postmark -----------------------------------------------------------------------------


def postmark_bounce(address: str, type_: str = "HardBounce", event_id: int | None = None):
    return {
        "RecordType": "Bounce",
        "ID": event_id or secrets.randbelow(2**53),
        "Type": type_,
        "TypeCode": {"HardBounce": 1, "Transient": 2, "SoftBounce": 4096}.get(type_, 2048),
        "Name": "Hard bounce",
        "Tag": "digest",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Metadata": {},
        "ServerID": 23,
        "MessageStream": "broadcast",
        "Description": "The server was unable to deliver your message (ex: unknown user).",
        "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        "Email": address,
        "From": "news@daily.example",
        "BouncedAt": "2027-08-01T13:28:10.2735393-04:00",
        "DumpAvailable": True,
        "Inactive": True,
        "CanActivate": True,
        "Subject": "The Daily",
        "Content": "",
    }


def postmark_complaint(address: str, event_id: int | None = None):
    return {
        "RecordType": "SpamComplaint",
        "MessageStream": "broadcast",
        "ID": event_id or secrets.randbelow(2**53),
        "Type": "SpamComplaint",
        "TypeCode": 512,
        "Name": "Spam complaint",
        "Tag": "digest",
        "MessageID": "00000000-0000-0000-0000-000000000000",
        "Metadata": {},
        "ServerID": 23,
        "Description": "The subscriber explicitly marked this message as spam.",
        "Details": "Test spam complaint details",
        "Email": address,
        "From": "news@daily.example",
        "BouncedAt": "2027-02-01T00:00:00.0000000-05:00",
        "DumpAvailable": True,
        "Inactive": True,
        "CanActivate": False,
        "Subject": "The Daily",
        "Content": "<Abuse report dump>",
    }


def basic_auth(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


# --- SendGrid -----------------------------------------------------------------------------


class SendGridKeys:
    """An ECDSA P-256 key pair; `public` is what SendGrid's console shows (base64 DER)."""

    def __init__(self):
        self.key = ec.generate_private_key(ec.SECP256R1())
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public = base64.b64encode(der).decode()

    def headers(self, body: bytes, at: float | None = None) -> dict[str, str]:
        timestamp = str(int(at if at is not None else time.time()))
        signature = self.key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
            "Content-Type": "application/json",
        }


def sendgrid_event(event: str, address: str, *, smtp_id: str | None = None, **extra) -> dict:
    out = {
        "email": address,
        "timestamp": int(time.time()),
        "smtp-id": smtp_id or "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": event,
        "category": ["digest"],
        "sg_event_id": base64.b64encode(secrets.token_bytes(16)).decode(),
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
    }
    if event == "bounce":
        out.update(reason="500 unknown recipient", status="5.0.0", type="bounce",
                   bounce_classification="Invalid Address")
    elif event == "dropped":
        out.update(reason="Bounced Address", status="5.0.0")
    out.update(extra)
    return out


# --- Mailgun ------------------------------------------------------------------------------


def mailgun_signature(signing_key: str, at: float | None = None, token: str | None = None):
    timestamp = str(int(at if at is not None else time.time()))
    token = token or secrets.token_hex(25)
    digest = hmac.new(signing_key.encode(), (timestamp + token).encode(), hashlib.sha256)
    return {"timestamp": timestamp, "token": token, "signature": digest.hexdigest()}


def mailgun_event(
    address: str, event: str = "failed", severity: str = "permanent", message_id: str = ""
):
    data = {
        "id": secrets.token_urlsafe(16),
        "timestamp": time.time(),
        "log-level": "error" if event == "failed" else "warn",
        "event": event,
        "recipient": address,
        "recipient-domain": address.rsplit("@", 1)[-1],
        "tags": ["digest"],
        "envelope": {"sender": "bounces@daily.example", "transport": "smtp",
                     "targets": address},
        "message": {"headers": {"to": address, "message-id": message_id or
                                "20270503182626.18666.16540@daily.example",
                                "from": "news@daily.example", "subject": "The Daily"},
                    "attachments": [], "size": 111},
        "flags": {"is-routed": False, "is-authenticated": True, "is-system-test": False,
                  "is-test-mode": False},
    }
    if event == "failed":
        data.update(
            severity=severity,
            reason="bounce" if severity == "permanent" else "generic",
            **{"delivery-status": {
                "attempt-no": 1,
                "message": "" if severity == "permanent" else "4.2.2 Mailbox full",
                "code": 550 if severity == "permanent" else 452,
                "enhanced-code": "5.1.1" if severity == "permanent" else "4.2.2",
                "description": "Not delivered to this recipient: no such mailbox"
                if severity == "permanent" else "Mailbox full",
                "session-seconds": 0.1,
            }},
        )
    return data
