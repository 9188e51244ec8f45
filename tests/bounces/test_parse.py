"""mailer.bounces.parse on real reports from many mail systems and on messages built here."""

from __future__ import annotations

import collections
import os
from pathlib import Path

import pytest

from mailer.bounces import Kind
from mailer.bounces.parse import MAX_REPORTS, parse_message
from mailer.tokens import BOUNCE, MESSAGE_ID, Tokens
from tests.helpers.bounces import arf, dsn, vacation

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "bounces"


def expected() -> list[tuple[str, str, str]]:
    rows = []
    for line in (FIXTURES / "expected.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            name, kind, reader, *_ = line.split("\t")
            rows.append((name, kind, reader))
    return rows


def classify(raw: bytes) -> tuple[str, str]:
    """(kind, reader) as expected.tsv writes them: the first report that counts."""
    counted = [r for r in parse_message(raw) if r.kind != Kind.IGNORED]
    if not counted:
        return "ignored", "-"
    first = counted[0]
    return str(first.kind), (first.addresses[0].lower() if first.addresses else "-")


def test_every_real_report_is_classified_and_names_its_reader():
    rows = expected()
    listed = {name for name, _, _ in rows}
    on_disk = {f"sisimai/{n}" for n in os.listdir(FIXTURES / "sisimai") if n.endswith(".eml")}
    assert listed == on_disk, "expected.tsv and the files disagree"
    wrong = [
        (name, (kind, reader), got)
        for name, kind, reader in rows
        if (got := classify((FIXTURES / name).read_bytes())) != (kind, reader)
    ]
    assert wrong == []
    kinds = collections.Counter(kind for _, kind, _ in rows)
    assert len(rows) >= 70 and set(kinds) == {"hard", "soft", "complaint", "ignored"}


def original(delivery_id: int, tokens: Tokens, to: str = "ada@example.com") -> bytes:
    """The head of a message of ours, as an issue's messages carry it."""
    tag = tokens.keyed_hash(MESSAGE_ID, str(delivery_id))[:10]
    return (
        f"From: The Daily <news@daily.example>\r\nTo: Ada <{to}>\r\nSubject: Today\r\n"
        f"Message-ID: <{delivery_id}.{tag}@daily.example>\r\n"
        f"X-Delivery-Token: {tokens.sign(BOUNCE, str(delivery_id))}\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nHello Ada\r\n"
    ).encode()


def test_a_dsn_names_the_delivery_by_verp_header_and_message_id():
    tokens = Tokens("k" * 32)
    sent = original(42, tokens)
    verp = f"bounces+{tokens.sign(BOUNCE, '42')}@bounces.daily.example"
    (report,) = parse_message(dsn(sent, "ada@example.com", to=verp),
                              bounce_domain="bounces.daily.example")
    assert (report.kind, report.status, report.addresses) == (Kind.HARD, "5.1.1", ("ada@example.com",))
    assert report.token == tokens.sign(BOUNCE, "42")
    assert report.message_id.startswith("<42.")
    assert "Recipient address rejected" in report.diagnostic
    # The envelope recipient the MTA passes wins; a VERP address of another domain is not ours.
    other = f"bounces+{tokens.sign(BOUNCE, '7')}@elsewhere.example"
    (report,) = parse_message(dsn(sent, "ada@example.com", to=other), recipient=verp,
                              bounce_domain="bounces.daily.example")
    assert report.token == tokens.sign(BOUNCE, "42")
    # Yahoo returns only the headers: our header and Message-ID are still there.
    (report,) = parse_message(dsn(sent, "ada@example.com", status="4.2.2", headers_only=True))
    assert (report.kind, report.token) == (Kind.SOFT, tokens.sign(BOUNCE, "42"))


def test_what_is_not_a_failure_is_ignored_with_a_reason():
    sent = original(5, Tokens("k" * 32))
    for action in ("delayed", "relayed", "delivered", "expanded"):
        (report,) = parse_message(dsn(sent, "ada@example.com", status="4.4.7", action=action))
        assert (report.kind, report.reason) == (Kind.IGNORED, f"a DSN saying {action}")
    (report,) = parse_message(vacation("news@daily.example", "ada@example.com"))
    assert (report.kind, report.reason) == (Kind.IGNORED, "an auto-reply, not a delivery report")
    # Real DSNs carry Auto-Submitted: auto-replied too (RFC 3834): still a bounce.
    raw = (FIXTURES / "sisimai" / "lhost-postfix-04.eml").read_bytes()
    assert b"Auto-Submitted: auto-replied" in raw
    assert classify(raw) == ("hard", "kijitora@example.co.jp")
    challenge = (b"From: guard@example.org\nTo: news@daily.example\n"
                 b"Subject: Please confirm your message\n\nClick to be whitelisted.\n")
    (report,) = parse_message(challenge)
    assert report.reason == "a challenge-response message"
    (report,) = parse_message(arf(sent, None, feedback_type="auth-failure"))
    assert report.reason == "a feedback report of type auth-failure"


def test_a_complaint_with_the_recipient_redacted_still_names_the_delivery():
    tokens = Tokens("k" * 32)
    (report,) = parse_message(arf(original(9, tokens), None))
    assert report.kind == Kind.COMPLAINT and report.token == tokens.sign(BOUNCE, "9")
    assert report.addresses == ("ada@example.com",)  # the returned To: header


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "an empty message"),
        (b"\r\n \r\n", "an empty message"),
        (bytes(range(256)) * 40, "not a delivery report"),
        (b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\n\n--x\n"
         b"Content-Type: message/delivery-status\n\nReporting-MTA: dns; x\n", "not a delivery report"),
        (b"Subject: =?utf-8?q?broken\nContent-Type: multipart/mixed\n\n--\n--\n",
         "not a delivery report"),
    ],
)
def test_bad_input_is_ignored_with_a_reason(raw, reason):
    reports = parse_message(raw)
    assert [(r.kind, r.reason) for r in reports] == [(Kind.IGNORED, reason)]


def test_a_report_naming_a_thousand_addresses_is_read_up_to_a_limit():
    sent = original(1, Tokens("k" * 32))
    raw = dsn(sent, [f"r{k}@example.com" for k in range(1000)])
    reports = parse_message(raw)
    assert len(reports) == MAX_REPORTS + 1
    assert all(r.kind == Kind.HARD and r.token is None for r in reports[:MAX_REPORTS])
    assert reports[-1].reason == f"{1000 - MAX_REPORTS} more recipients not read"
    assert len({r.key for r in reports}) == len(reports)
