"""Amazon SES through SNS: signatures (versions 1 and 2) verified with the certificate at
SigningCertURL, fetched over https from an allowed host (a local server with a CA made
here), cached; topics outside the allow-list refused; SES bounces and complaints parsed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from mailer.bounces import Kind, Source, sns
from mailer.bounces.providers import Malformed, Refused, Unavailable
from tests.helpers.providers import (
    TOPIC,
    CertHost,
    SnsSigner,
    ses_notification,
    subscription_confirmation,
)


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    server = CertHost(tmp_path_factory.mktemp("sns"))
    yield server
    server.close()


@pytest.fixture
def certs(host):
    return sns.Certificates(("127.0.0.1",), str(host.ca_file))


def _now():
    return datetime.now(UTC)


def test_default_hosts_are_amazon_regions_only():
    allowed = sns.Certificates()
    for url in ("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
                "https://sns.eu-central-2.amazonaws.com/x.pem",
                "https://sns.us-gov-west-1.amazonaws.com/x.pem",
                "https://sns.cn-north-1.amazonaws.com.cn/x.pem"):
        assert allowed.allowed(url), url
    for url in ("http://sns.us-east-1.amazonaws.com/x.pem",  # not https
                "https://sns.s3.amazonaws.com/x.pem",  # an S3 bucket called "sns"
                "https://sns.s3-us-west-2.amazonaws.com/x.pem",
                "https://sns.us-east-1.amazonaws.com.evil.example/x.pem",
                "https://evil.example/sns.us-east-1.amazonaws.com/x.pem",
                "https://user:pw@sns.us-east-1.amazonaws.com/x.pem",
                "https://sns.us-east-1.amazonaws.com:bad/x.pem",
                "https://127.0.0.1/x.pem", "file:///etc/passwd", ""):
        assert not allowed.allowed(url), url


@pytest.mark.parametrize("version", ["1", "2"])
def test_signed_notifications_verify_and_forgeries_do_not(host, certs, version):
    signer = SnsSigner(host, f"/cert-v{version}.pem")
    message = signer.sign(ses_notification("Bounce", ["ada@example.com"]), version)
    sns.verify(message, certs, (TOPIC,), _now())
    forged = {**message, "Message": message["Message"].replace("ada@", "eve@")}
    other_topic = {**message, "TopicArn": TOPIC + "-other"}
    stale = signer.sign(ses_notification("Bounce", ["ada@example.com"],
                                         at=_now().timestamp() - 400), version)
    unsigned = {k: v for k, v in message.items() if k != "Signature"}
    wrong_version = {**message, "SignatureVersion": "3"}
    impostor = SnsSigner(host, "/impostor.pem")  # a valid certificate, but not the signer's
    swapped = {**message, "SigningCertURL": impostor.cert_url}
    for bad, status in ((forged, 401), (other_topic, 403), (stale, 401), (unsigned, 401),
                        (wrong_version, 401), (swapped, 401)):
        with pytest.raises(Refused) as e:
            sns.verify(bad, certs, (TOPIC,), _now())
        assert e.value.status == status, bad


def test_certificates_are_fetched_once_and_only_from_allowed_hosts(host, certs):
    signer = SnsSigner(host, "/cached.pem")
    before = host.requests.count("/cached.pem")
    for n in range(3):
        message = signer.sign(ses_notification("Complaint", [f"r{n}@example.com"]), "2")
        sns.verify(message, certs, (TOPIC,), _now())
    assert host.requests.count("/cached.pem") == before + 1
    # Served by an allowed host but over http, or from a host not allowed: never fetched.
    plain = signer.sign(ses_notification("Bounce", ["x@example.com"]), "2",
                        cert_url=signer.cert_url.replace("https://", "http://"))
    elsewhere = signer.sign(ses_notification("Bounce", ["x@example.com"]), "2",
                            cert_url=signer.cert_url.replace("127.0.0.1", "localhost"))
    asked = len(host.requests)
    for message in (plain, elsewhere):
        with pytest.raises(Refused) as e:
            sns.verify(message, certs, (TOPIC,), _now())
        assert e.value.status == 403
    assert len(host.requests) == asked
    # A certificate the CA file does not vouch for (the system's CAs only): refused.
    untrusting = sns.Certificates(("127.0.0.1",))
    with pytest.raises(Unavailable, match="could not be fetched"):
        sns.verify(signer.sign(ses_notification("Bounce", ["y@example.com"]), "2"),
                   untrusting, (TOPIC,), _now())
    missing = signer.sign(ses_notification("Bounce", ["z@example.com"]), "2",
                          cert_url=host.base + "/missing.pem")
    with pytest.raises(Refused, match="404"):
        sns.verify(missing, certs, (TOPIC,), _now())
    later = _now() + timedelta(days=60)  # the certificate has expired by then
    expired = signer.sign(ses_notification("Bounce", ["z@example.com"], at=later.timestamp()),
                          "2")
    with pytest.raises(Refused, match="not valid now"):
        sns.verify(expired, certs, (TOPIC,), later)


def test_subscription_confirmation_is_signed_and_confirmed(host, certs):
    signer = SnsSigner(host, "/sub.pem")
    message = signer.sign(subscription_confirmation(host), "1")
    sns.verify(message, certs, (TOPIC,), _now())
    certs.get_url(message["SubscribeURL"])
    assert any(r.startswith("/confirm?Action=ConfirmSubscription") for r in host.requests)
    with pytest.raises(Refused):
        certs.get_url("https://evil.example/confirm")


def test_ses_bounces_and_complaints_become_reports():
    ours = "<12.abcdef0123@daily.example>"
    bounce = ses_notification("Bounce", ["a@example.com", "b@example.com"], message_id=ours,
                              feedback_id="fb-1")
    reports = sns.ses_reports(bounce)
    assert [(r.source, r.kind, r.addresses) for r in reports] == [
        (Source.SES, Kind.HARD, ("a@example.com",)), (Source.SES, Kind.HARD, ("b@example.com",))]
    assert [r.key for r in reports] == ["fb-1:a@example.com", "fb-1:b@example.com"]
    assert reports[0].message_id == ours and reports[0].status == "5.1.1"
    assert "User unknown" in reports[0].diagnostic
    soft = sns.ses_reports(ses_notification("Bounce", ["c@example.com"], bounce_type="Transient"))
    assert soft[0].kind == Kind.SOFT
    (complaint,) = sns.ses_reports(ses_notification("Complaint", ["d@example.com"]))
    assert complaint.kind == Kind.COMPLAINT and complaint.message_id is None
    delivery = ses_notification("Bounce", ["e@example.com"])
    delivery["Message"] = json.dumps({"notificationType": "Delivery", "mail": {}})
    assert sns.ses_reports(delivery)[0].kind == Kind.IGNORED
    for bad in ("", "[]", "not json", json.dumps({"notificationType": "Bounce", "bounce": {}})):
        with pytest.raises(Malformed):
            sns.ses_reports({**delivery, "Message": bad})
    for body in (b"", b"[]", b'{"Type": ["x"]}', b'{"Type": "Other"}', b"\xff"):
        with pytest.raises(Malformed):
            sns.parse_message(body)
